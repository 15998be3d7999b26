"""One optimisation step of each stage. Images: lr in [0, 1], hr and sr in [-1, 1].

The GAN step follows the usual recipe: the discriminator learns on hr vs sr.detach()
(so its loss does not reach the generator), then is frozen while the generator learns
content + adversarial terms. Adversarial losses are BCE on logits (numerically stable,
unlike log(sigmoid)).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srdeploy.training.config import TrainConfig


@dataclass
class StepContext:
    cfg: TrainConfig
    generator: nn.Module
    g_optimizer: torch.optim.Optimizer
    discriminator: nn.Module | None = None
    d_optimizer: torch.optim.Optimizer | None = None
    vgg: nn.Module | None = None
    scaler: torch.amp.GradScaler | None = None
    autocast_dtype: torch.dtype | None = None

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Backward and step; with fp16, the caller updates ``scaler`` once per iteration, after
    every optimiser has stepped (a second update would halve or grow the scale twice)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
    else:
        loss.backward()
        optimizer.step()


def content_loss(sr: torch.Tensor, hr: torch.Tensor, cfg: TrainConfig, vgg: nn.Module | None) -> dict[str, torch.Tensor]:
    """Pixel MSE and/or VGG phi_5,4 feature MSE, weighted as the config says."""
    terms: dict[str, torch.Tensor] = {}
    total = sr.new_zeros((), dtype=torch.float32)
    if cfg.stage == "srresnet" or "mse" in cfg.content:
        terms["mse"] = F.mse_loss(sr.float(), hr.float())
        total = total + (cfg.mse_weight if cfg.stage == "srgan" else 1.0) * terms["mse"]
    if cfg.stage == "srgan" and "vgg" in cfg.content:
        assert vgg is not None, "VGG content loss requested without a VGG network"
        # In fp32 even under autocast: phi_5,4 features are large, and their difference,
        # small near convergence, cancels out in bf16's 8-bit mantissa.
        with torch.autocast(sr.device.type, enabled=False):
            f_sr = vgg(sr.float()) * cfg.vgg_scale
            with torch.no_grad():
                f_hr = vgg(hr.float()) * cfg.vgg_scale
        terms["vgg"] = F.mse_loss(f_sr, f_hr)
        total = total + cfg.vgg_weight * terms["vgg"]
    terms["content"] = total
    return terms


def srresnet_step(ctx: StepContext, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    with ctx.autocast(lr.device):
        sr = ctx.generator(lr)  # (N, 3, 4h, 4w) in [-1, 1]
    loss = content_loss(sr, hr, ctx.cfg, None)["content"]
    _backward_step(loss, ctx.g_optimizer, ctx.scaler)
    if ctx.scaler is not None:
        ctx.scaler.update()
    return {"loss_g": loss.item()}


def srgan_step(ctx: StepContext, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    D, cfg = ctx.discriminator, ctx.cfg
    # Under DDP the frozen-D forward of the generator step goes around the wrapper: D gets
    # no gradients there, so there is nothing to all-reduce.
    d_plain = getattr(D, "module", D)
    with ctx.autocast(lr.device):
        sr = ctx.generator(lr)

    # Discriminator: real -> 1, fake -> 0. sr is detached so G gets no gradient here.
    D.requires_grad_(True)
    with ctx.autocast(lr.device):
        real_logits, fake_logits = D(hr).float(), D(sr.detach()).float()
    loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    _backward_step(loss_d, ctx.d_optimizer, ctx.scaler)

    # Generator: content + adversarial (fool the frozen D).
    D.requires_grad_(False)
    with ctx.autocast(lr.device):
        adv_logits = d_plain(sr).float()
        terms = content_loss(sr, hr, cfg, ctx.vgg)
    adversarial = F.binary_cross_entropy_with_logits(adv_logits, torch.ones_like(adv_logits))
    loss_g = terms["content"] + cfg.adv_weight * adversarial
    _backward_step(loss_g, ctx.g_optimizer, ctx.scaler)
    D.requires_grad_(True)
    if ctx.scaler is not None:  # one update for both optimisers: both losses used this scale
        ctx.scaler.update()

    out = {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "adversarial": adversarial.item(),
           "d_real": torch.sigmoid(real_logits).mean().item(), "d_fake": torch.sigmoid(fake_logits).mean().item()}
    out.update({k: v.item() for k, v in terms.items() if k != "content"})
    return out
