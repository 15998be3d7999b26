"""VGG19 phi_5,4 features for the perceptual content loss (Ledig et al. 2017, Sec. 2.2.1).

phi_5,4 is the feature map after the 4th convolution (and its ReLU) before the 5th
max-pooling: torchvision's ``vgg19().features[:36]``. Inputs are generator-range images in
[-1, 1], mapped to [0, 1] and normalised with the ImageNet mean/std the weights expect.

Pretrained weights are required: a randomly initialised VGG gives a meaningless loss, so
a missing download is an error, never a fallback. Tests build random weights only through
``VGGFeatures.random_for_tests()``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from srdeploy.training.checkpoint import load_checkpoint, state_dict_mismatch

PHI_54_END = 36  # features[:36] ends with relu5_4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsMissing(RuntimeError):
    pass


class VGGFeatures(nn.Module):
    """Frozen, eval-mode VGG19 trunk up to relu5_4. (N, 3, H, W) in [-1, 1] -> (N, 512, H/16, W/16)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features[:PHI_54_END]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always eval: it is a fixed loss network

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = ((img + 1.0) / 2.0 - self.mean) / self.std
        return self.features(x)

    @classmethod
    def random_for_tests(cls) -> "VGGFeatures":
        """Random weights: for tests of the mechanics only, never for training. Builds the
        conv trunk alone (the 120M-parameter classifier is never used)."""
        from torchvision.models.vgg import cfgs, make_layers

        return cls(make_layers(cfgs["E"], batch_norm=False))


def _help_text() -> str:
    cache = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return (
        "The VGG content loss needs ImageNet-pretrained VGG19 weights. Either let torchvision "
        f"download them once (needs internet; cached in {cache}), copy vgg19-dcbb9e9d.pth into "
        "that folder, or pass --vgg-weights FILE with a torchvision vgg19 state_dict."
    )


def load_vgg_features(weights_file: str | os.PathLike | None = None) -> VGGFeatures:
    """ImageNet VGG19 from a local state_dict file, or through torchvision's weights API."""
    from torchvision.models import VGG19_Weights, vgg19

    model = vgg19(weights=None)
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise VGGWeightsMissing(f"--vgg-weights {path}: file not found. {_help_text()}")
        try:  # weights-only, and the same one-line reasons as every other weights file
            state = load_checkpoint(path)
        except ValueError as e:
            raise VGGWeightsMissing(f"--vgg-weights {e}") from None
        mismatch = state_dict_mismatch(model, state)
        if mismatch:
            raise VGGWeightsMissing(f"--vgg-weights {path}: not a torchvision vgg19 state_dict ({mismatch})")
        model.load_state_dict(state)
        return VGGFeatures(model.features)
    try:
        model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
    except Exception as e:  # URLError, socket errors, hash mismatch...
        raise VGGWeightsMissing(f"could not load ImageNet VGG19 weights ({type(e).__name__}: {e}). {_help_text()}") from None
    return VGGFeatures(model.features)
