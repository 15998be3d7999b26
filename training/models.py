"""SRResNet generator and SRGAN discriminator (Ledig et al. 2017), as the seed describes them.

Generator: RGB in [0, 1] -> tanh output in [-1, 1], ``scale`` times larger.
Discriminator: image in [-1, 1] -> one logit per image (sigmoid gives P(real)); losses are
computed on logits (BCE-with-logits) for numerical stability.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from srdeploy.runtime.tiling import srresnet_receptive_radius


class ResidualBlock(nn.Module):
    """conv3x3 -> BN -> PReLU -> conv3x3 -> BN, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SubPixelUpsample(nn.Module):
    """x2 sub-pixel convolution (Shi et al. 2016): conv to 4C channels, PixelShuffle, PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))  # (N, C, 2H, 2W)


class Generator(nn.Module):
    """SRResNet: 9x9 head, B residual blocks, conv+BN with a global skip, log2(scale) x2
    sub-pixel upsamplers, 9x9 tail, tanh.

    The receptive field is about 4 + 2B + 3.5 LR pixels each side (24 for B=8), which
    is what the runtime's tile overlap must cover.
    """

    def __init__(self, num_blocks: int = 8, channels: int = 64, scale: int = 4):
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {scale}")
        if num_blocks < 1 or channels < 1:
            raise ValueError(f"num_blocks and channels must be positive, got {num_blocks}, {channels}")
        self.num_blocks, self.channels, self.scale = num_blocks, channels, scale
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU(channels))
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.upsample = nn.Sequential(*[SubPixelUpsample(channels) for _ in range(int(math.log2(scale)))])
        self.tail = nn.Conv2d(channels, 3, 9, padding=4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr)  # (N, C, H, W)
        h = h + self.body_tail(self.blocks(h))  # global skip, (N, C, H, W)
        h = self.upsample(h)  # (N, C, sH, sW)
        return torch.tanh(self.tail(h))  # (N, 3, sH, sW) in [-1, 1]

    @property
    def receptive_radius(self) -> int:
        """LR pixels each side that influence one output pixel (rounded up)."""
        return math.ceil(srresnet_receptive_radius(self.num_blocks, self.scale))

    def arch(self) -> dict[str, int]:
        return {"num_blocks": self.num_blocks, "channels": self.channels, "scale": self.scale}


def _disc_block(cin: int, cout: int, stride: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


class Discriminator(nn.Module):
    """8 conv3x3 blocks (64-64-128-128-256-256-512-512 filters, stride 2 on every second
    block, BN on all but the first, LeakyReLU 0.2), then Dense(1024) -> LeakyReLU -> Dense(1).

    The paper trains on 96x96 crops, where the last conv map is 6x6. An adaptive average
    pool to 6x6 keeps that geometry for any input size: at 96x96 it is the identity, at
    256x256 it averages 16x16 -> 6x6 instead of feeding a 131k x 1024 dense layer (134M
    parameters) as a flatten would.
    """

    def __init__(self, channels: int = 64, pool: int = 6, hidden: int = 1024):
        super().__init__()
        widths = [channels, channels, 2 * channels, 2 * channels, 4 * channels, 4 * channels, 8 * channels, 8 * channels]
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(widths):
            layers += _disc_block(cin, cout, stride=2 if i % 2 else 1, bn=i > 0)
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * pool * pool, hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = self.features(img)  # (N, 8C, H/16, W/16)
        return self.classifier(self.pool(h)).squeeze(1)  # (N,) logits


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
