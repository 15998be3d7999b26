"""Training configuration: one dataclass, two presets, every user-facing field a flag.

Each field's docstring (the string on the line after it) is its documentation and the
help text of its ``srdeploy train`` flag; its annotation is the flag's type (a
``Literal`` gives the choices). In docstrings and error messages a field name in
backticks, e.g. `scale`, is printed as its flag (``--scale``) on the command line.

The resolved config (preset + flags) is written next to every run (config.json) and
stored in every checkpoint, so a run can always be reproduced from its outputs.
"""

from __future__ import annotations

import ast
import math
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Literal

Stage = Literal["srresnet", "srgan"]
Preset = Literal["seed", "paper"]
Downsample = Literal["bicubic", "bilinear"]
Schedule = Literal["constant", "step", "cosine"]
Content = Literal["mse", "mse+vgg", "vgg"]
Device = Literal["auto", "cpu", "cuda"]
Amp = Literal["bf16", "fp16", "none"]


class ConfigError(ValueError):
    """A value TrainConfig refuses; the message names the field in backticks."""


@dataclass
class TrainConfig:
    stage: Stage = "srresnet"
    """srresnet: MSE pre-training; srgan: adversarial fine-tuning from `init`."""
    data: str = ""
    """Folder of HR images (searched recursively: PNG, JPEG, WebP, BMP, TIFF, GIF). Required."""
    data_list: str | None = None
    """Optional file of image names (one per line, e.g. train.txt) selecting from `data`."""
    val_data: str | None = None
    """Folder of HR validation images; validation PSNR/SSIM-Y is logged each `val_every` epochs."""
    val_list: str | None = None
    """Optional file of image names selecting from `val_data`."""
    val_limit: int = 100
    """Validate on at most this many images (CPU time per epoch stays bounded)."""
    out: str = "runs/srresnet"
    """Run folder: config.json, metrics.jsonl, checkpoints, figures."""
    preset: Preset | None = None
    """A recipe: seed (the 2021 reproduction, bilinear LR) or paper (Ledig et al. 2017).
    Flags given beside it win."""

    num_blocks: int = 8
    """Residual blocks B in the generator (seed: 8, paper: 16)."""
    channels: int = 64
    """Generator filters."""
    scale: int = 4
    """Upscaling factor (power of two)."""

    patch: int | None = None
    """HR crop size in pixels (a multiple of the upscaling factor `scale`); not given: the whole image, as in the seed."""
    downsample: Downsample = "bicubic"
    """LR degradation: bicubic (antialiased, the benchmark standard) or bilinear (the seed)."""
    flip: bool = True
    """Random horizontal flips."""
    workers: int = 2
    """DataLoader worker processes (0: load in the training process)."""
    preload: bool = False
    """Decode the training set once and keep it on the training device (all images one
    size); crops and flips happen there. For GPUs, where decoding is the bottleneck."""

    batch_size: int = 64
    """Images per optimiser step and process (>= 2, for BatchNorm)."""
    epochs: int | None = 30
    """Passes over the training data (srgan: 8 with content mse, 6 with mse+vgg or vgg)."""
    steps: int | None = None
    """Stop after this many optimiser steps (wins over `epochs` when both are given)."""
    max_minutes: float | None = None
    """Stop after this much wall time for the whole run, resumes included (how a CPU run is
    budgeted); checkpoints first. The cosine schedule anneals over it when it binds first."""
    lr: float = 2e-4
    """Adam learning rate of the generator (and the discriminator)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    schedule: Schedule = "constant"
    """Learning rate schedule: constant; step (x0.1 at `lr_step`, the paper); cosine (to 1%
    over the step or time budget). A time-budgeted run depends on wall time, so only step
    budgets resume bit-exactly."""
    lr_step: int | None = None
    """Step at which the step schedule divides the learning rate by 10."""
    ema: float = 0.0
    """Exponential moving average of the generator weights (e.g. 0.999); 0 disables it.
    When on, validation, figures and export use the averaged weights."""

    init: str | None = None
    """Generator to start from: a run's last.pt/best.pt, or a shipped model name (default,
    srresnet, srgan). srgan needs one, srresnet may continue from one."""
    content: Content = "mse"
    """Content loss: mse, mse+vgg (the seed's combined loss), vgg (VGG alone, as in the
    paper; its weights, `vgg_weight` 1 and `vgg_scale` 1/12.75, come with --preset paper)."""
    mse_weight: float = 1.0
    """Weight of the pixel MSE in the content loss."""
    vgg_weight: float = 5e-4
    """Weight of the VGG19 phi_5,4 feature MSE in the content loss."""
    vgg_scale: float = 1.0
    """Feature maps are multiplied by this before the VGG MSE (paper: 1/12.75)."""
    adv_weight: float = 1e-3
    """Weight of the adversarial loss."""
    vgg_weights: str | None = None
    """Local VGG19 state_dict file (offline machines); not given: torchvision's ImageNet
    weights from the TORCH_HOME cache."""

    device: Device = "auto"
    """Training device; auto takes CUDA when torch sees it."""
    amp: Amp = "bf16"
    """Autocast dtype on CUDA: bf16, fp16 or none (always off on the CPU)."""
    seed: int = 0
    """Seed of the initialisation, the data order, crops and flips."""
    log_every: int = 20
    """Log losses and samples/s every N steps (and at the end of the run)."""
    val_every: int = 1
    """Validate, checkpoint and plot every N epochs (and at the end). A preloaded GPU epoch
    is short, so validating each one would dominate."""
    ckpt_every: int = 500
    """Also checkpoint every N steps (and at every validation and the end)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON round trips give lists
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            choices = literal_choices(hints[f.name])
            value = getattr(self, f.name)
            if choices and value not in choices and value is not None:
                raise ConfigError(f"`{f.name}` must be one of {', '.join(choices)}; got {value!r}")
            if not choices and not _is_a(value, hints[f.name]):  # a hand-edited config.json
                raise ConfigError(f"`{f.name}` must be {_kind(hints[f.name])}; got {value!r}")
        if not self.data:
            raise ConfigError("`data` is required (a folder of HR images)")
        if self.epochs is None and self.steps is None and self.max_minutes is None:
            raise ConfigError("give a budget: at least one of `epochs`, `steps`, `max_minutes`")
        for name in ("val_limit", "num_blocks", "channels", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1; got {getattr(self, name)}")
        for name in ("epochs", "steps", "lr_step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1; got {getattr(self, name)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"`max_minutes` must be > 0; got {self.max_minutes}")
        if self.scale < 2 or self.scale & (self.scale - 1):
            raise ConfigError(f"`scale` must be a power of two >= 2; got {self.scale}")
        if self.patch is not None and (self.patch <= 0 or self.patch % self.scale):
            raise ConfigError(f"`patch` must be a positive multiple of `scale` ({self.scale}); got {self.patch}")
        if self.batch_size < 2:
            raise ConfigError(f"`batch_size` must be >= 2 (BatchNorm needs two images); got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"`workers` must be >= 0; got {self.workers}")
        if not self.lr > 0:
            raise ConfigError(f"`lr` must be > 0; got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"`betas` must be two numbers in [0, 1); got {self.betas}")
        if self.schedule == "step" and self.lr_step is None:
            raise ConfigError("the step `schedule` needs `lr_step`")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"`ema` must be in [0, 1); got {self.ema}")
        for name in ("mse_weight", "vgg_weight", "adv_weight"):
            if not getattr(self, name) >= 0 or not math.isfinite(getattr(self, name)):  # NaN fails >= too
                raise ConfigError(f"`{name}` must be a finite number >= 0; got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr < 1e3):  # inf trains NaN weights; 1e300 overflows the optimiser
            raise ConfigError(f"`lr` must be a finite learning rate below 1000; got {self.lr}")
        if self.max_minutes is not None and not math.isfinite(self.max_minutes):
            raise ConfigError(f"`max_minutes` must be a finite number; got {self.max_minutes} (leave it out for no time limit)")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"`seed` must be from 0 to 2**32 - 1; got {self.seed}")
        if not self.vgg_scale > 0:
            raise ConfigError(f"`vgg_scale` must be > 0; got {self.vgg_scale}")
        if self.stage == "srgan":  # a term the content names but weighs 0 (--preset paper weighs its MSE 0) would do nothing
            for term in self.content.split("+"):
                if getattr(self, f"{term}_weight") == 0:
                    raise ConfigError(f"`content` {self.content} with `{term}_weight` 0: its {term.upper()} term would do nothing; "
                                      f"give --{term}-weight")
        # Settings that would be ignored without the one they serve.
        if self.val_list and not self.val_data:
            raise ConfigError("`val_list` is used only with `val_data` (the folder it lists)")
        if self.vgg_weights and not self.uses_vgg:
            raise ConfigError(f"`vgg_weights` is used only by a content loss with vgg (mse+vgg or vgg); this run's is {self.content}")

    @property
    def uses_vgg(self) -> bool:
        return self.stage == "srgan" and "vgg" in self.content

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A stored config (config.json, a checkpoint's ``config``) -> TrainConfig. Keys of
        removed fields are dropped, so older run folders still resume; any other unknown key
        is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - REMOVED_FIELDS)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if k in known})


# `extra` (an always-empty dict) was dropped; config.json files written before still hold it.
REMOVED_FIELDS = {"extra"}

# Fields only the srgan stage reads (the srresnet command has no flags for them).
SRGAN_FIELDS = ("content", "mse_weight", "vgg_weight", "vgg_scale", "adv_weight", "vgg_weights")


def _is_a(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a field annotation (int, float, str, bool, a tuple of floats,
    each possibly ``| None``); an int is a float too, a bool is not a number."""
    args = typing.get_args(hint)
    if type(None) in args:
        return value is None or _is_a(value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(_is_a(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _kind(hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args:
        return f"{_kind(next(a for a in args if a is not type(None)))} or null"
    if typing.get_origin(hint) is tuple:
        return "a list of numbers"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def literal_choices(hint: Any) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation; () for others."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Field name -> its docstring, whitespace normalised to one paragraph.

    Python keeps no attribute docstrings at run time, so they are read from the class's
    source with ``ast`` (an installed package ships its .py files; ``python -OO`` strips
    docstrings from bytecode, not from the source). Without a source ({}), flags still work,
    with no help text.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


# Values a preset sets; anything not named keeps the stage default, and any flag the user
# gives wins over both.
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

# Where the srgan stage's defaults differ from the dataclass's (which are srresnet's).
SRGAN_DEFAULTS = {"batch_size": 32, "out": "runs/srgan"}
# Seed epochs for the two SRGAN configurations.
SRGAN_EPOCHS = {"mse": 8, "mse+vgg": 6, "vgg": 6}


def stage_defaults(stage: str) -> dict[str, Any]:
    """What each field is for ``stage`` when neither a preset nor a flag sets it."""
    values = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    values["stage"] = stage
    if stage == "srgan":
        values.update(SRGAN_DEFAULTS, epochs=SRGAN_EPOCHS[values["content"]])
    return values


def resolve_config(stage: str, preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Stage defaults <- preset values <- explicit overrides (None means 'not given')."""
    values: dict[str, Any] = {"stage": stage}
    if stage == "srgan":
        values.update(SRGAN_DEFAULTS)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown `preset` {preset!r}; use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset][stage])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    if stage == "srgan" and overrides.get("epochs") is None and preset != "paper":
        values["epochs"] = SRGAN_EPOCHS.get(values.get("content", "mse"), SRGAN_EPOCHS["mse"])
    return TrainConfig(**values)
