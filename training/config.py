"""Training configuration: one dataclass, two presets, every field overridable by a flag.

The resolved config (preset + flags) is written next to every run (config.json) and
stored in every checkpoint, so a run can always be reproduced from its outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STAGES = ("srresnet", "srgan")
CONTENT_LOSSES = ("mse", "mse+vgg", "vgg")
SCHEDULES = ("constant", "step", "cosine")


@dataclass
class TrainConfig:
    stage: str = "srresnet"
    """srresnet: MSE pre-training; srgan: adversarial fine-tuning from --init."""
    data: str = ""
    """Folder of HR images (searched recursively: JPEG, PNG, WebP)."""
    data_list: str | None = None
    """Optional file of image names (one per line, e.g. train.txt) selecting from `data`."""
    val_data: str | None = None
    """Folder of HR validation images; validation PSNR/SSIM-Y is logged each epoch."""
    val_list: str | None = None
    """Optional list file for `val_data`."""
    val_limit: int = 100
    """Validate on at most this many images (CPU time per epoch stays bounded)."""
    out: str = "runs/srresnet"
    """Run folder: config.json, metrics.jsonl, checkpoints, figures."""

    num_blocks: int = 8
    """Residual blocks B in the generator (seed: 8, paper: 16)."""
    channels: int = 64
    """Generator filters."""
    scale: int = 4
    """Upscaling factor (power of two)."""

    patch: int | None = None
    """HR crop size in pixels (multiple of `scale`); None = the whole image, as in the seed."""
    downsample: str = "bicubic"
    """LR degradation: bicubic (antialiased, the benchmark standard) or bilinear (the seed)."""
    flip: bool = True
    """Random horizontal flips."""
    workers: int = 2
    """DataLoader worker processes."""
    preload: bool = False
    """Decode the training set once and keep it on the training device (all images one
    size); crops and flips happen there. For GPUs, where decoding is the bottleneck."""

    batch_size: int = 64
    epochs: int | None = 30
    steps: int | None = None
    """Stop after this many optimiser steps (overrides epochs when both are given)."""
    max_minutes: float | None = None
    """Stop after this much wall time for the whole run, resumes included (how a CPU run is
    budgeted); checkpoints first. The cosine schedule anneals over it when it binds first."""
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    """constant; step (x0.1 at `lr_step`, the paper); cosine (to 1% over the step or time budget).
    A time-budgeted cosine run depends on wall time, so only step budgets resume bit-exactly."""
    lr_step: int | None = None
    """Step at which the `step` schedule divides the learning rate by 10."""
    ema: float = 0.0
    """Exponential moving average of the generator weights (e.g. 0.999); 0 disables it.
    When on, validation, figures and export use the averaged weights."""

    init: str | None = None
    """Generator checkpoint to start from (a run's last.pt/best.pt, or a shipped model name:
    `default`); srgan needs one, srresnet may continue from one."""
    content: str = "mse"
    """srgan content loss: mse, mse+vgg (seed combined), vgg (paper)."""
    mse_weight: float = 1.0
    vgg_weight: float = 5e-4
    vgg_scale: float = 1.0
    """Feature maps are multiplied by this before the VGG MSE (paper: 1/12.75)."""
    adv_weight: float = 1e-3
    vgg_weights: str | None = None
    """Local VGG19 state_dict file; default: torchvision's ImageNet weights (TORCH_HOME cache)."""

    device: str = "auto"
    amp: str = "bf16"
    """Autocast dtype on CUDA: bf16, fp16 or none (always off on the CPU)."""
    seed: int = 0
    log_every: int = 20
    val_every: int = 1
    """Validate, checkpoint and plot every N epochs (and at the end). A preloaded GPU epoch
    of 5,000 faces takes seconds, so validating each one would dominate."""
    ckpt_every: int = 500
    """Also checkpoint every N steps (and at every epoch end)."""
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.content not in CONTENT_LOSSES:
            raise ValueError(f"content must be one of {CONTENT_LOSSES}, got {self.content!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "step" and not self.lr_step:
            raise ValueError("schedule 'step' needs lr_step")
        if self.downsample not in ("bicubic", "bilinear"):
            raise ValueError(f"downsample must be bicubic or bilinear, got {self.downsample!r}")
        if self.patch is not None and (self.patch <= 0 or self.patch % self.scale):
            raise ValueError(f"patch {self.patch} must be a positive multiple of scale {self.scale}")
        if self.epochs is None and self.steps is None and self.max_minutes is None:
            raise ValueError("give at least one of epochs, steps, max_minutes")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.amp not in ("bf16", "fp16", "none"):
            raise ValueError(f"amp must be bf16, fp16 or none, got {self.amp!r}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (BatchNorm)")
        self.betas = tuple(self.betas)  # JSON round trips give lists

    @property
    def uses_vgg(self) -> bool:
        return self.stage == "srgan" and "vgg" in self.content

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Values a preset sets; anything not named keeps the dataclass default, and any flag the
# user gives wins over both.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The 2021 seminar reproduction: B=8, bilinear LR, Adam 2e-4, whole 64->256 images.
    "seed": {
        "srresnet": {"num_blocks": 8, "downsample": "bilinear", "lr": 2e-4, "batch_size": 64, "epochs": 30},
        "srgan": {"num_blocks": 8, "downsample": "bilinear", "lr": 2e-4, "batch_size": 32,
                  "mse_weight": 1.0, "vgg_weight": 5e-4, "vgg_scale": 1.0, "adv_weight": 1e-3},
    },
    # Ledig et al. 2017: B=16, bicubic, lr 1e-4, 96x96 HR crops, batch 16; SRGAN = VGG54/12.75
    # + 1e-3 adversarial, 1e5 steps at 1e-4 then 1e5 at 1e-5.
    "paper": {
        "srresnet": {"num_blocks": 16, "downsample": "bicubic", "lr": 1e-4, "batch_size": 16, "patch": 96,
                     "epochs": None, "steps": 1_000_000},
        "srgan": {"num_blocks": 16, "downsample": "bicubic", "lr": 1e-4, "batch_size": 16, "patch": 96,
                  "content": "vgg", "mse_weight": 0.0, "vgg_weight": 1.0, "vgg_scale": 1 / 12.75,
                  "adv_weight": 1e-3, "epochs": None, "steps": 200_000, "schedule": "step", "lr_step": 100_000},
    },
}

# Seed epochs for the two SRGAN configurations.
SRGAN_EPOCHS = {"mse": 8, "mse+vgg": 6, "vgg": 6}


def resolve_config(stage: str, preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Dataclass defaults <- preset values <- explicit overrides (None means 'not given')."""
    values: dict[str, Any] = {"stage": stage}
    if stage == "srgan":
        values.update(batch_size=32, out="runs/srgan")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
        values.update(PRESETS[preset][stage])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    if stage == "srgan" and overrides.get("epochs") is None and preset != "paper":
        values["epochs"] = SRGAN_EPOCHS[values.get("content", "mse")]
    return TrainConfig(**values)
