"""What a run is made of and what its checkpoint holds: the networks, their optimisers,
the EMA weights, the mixed-precision settings and where the run is; built for a fresh run,
or restored from last.pt for a resume."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srdeploy.runtime import zoo
from srdeploy.training.checkpoint import load_checkpoint, load_generator
from srdeploy.training.config import TrainConfig
from srdeploy.training.models import Discriminator, Generator


@dataclass
class Position:
    """Where a run is: what a checkpoint stores besides the weights and what a resume restores."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0  # steps done inside ``epoch``
    best: float = -math.inf  # best validation PSNR-Y
    minutes: float = 0.0  # wall time of earlier sessions
    validated: int | None = None  # step whose weights were last validated and checkpointed
    processes: int | None = None  # the DDP world size the steps were counted in (None: a checkpoint from before it was kept)


class EMA:
    """Exponential moving average of a generator's weights (and BN statistics).

    The decay warms up as (1 + t) / (10 + t) until it reaches ``decay``: a fixed 0.999
    would keep ~37% of the random initialisation after 1,000 steps, which is most of a
    CPU run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for e, m in zip(self.model.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(m, 1.0 - decay)
            else:
                e.copy_(m)


@dataclass
class Models:
    """The networks, their optimisers and the mixed-precision settings of one run."""

    generator: Generator
    g_opt: torch.optim.Optimizer
    discriminator: Discriminator | None
    d_opt: torch.optim.Optimizer | None
    ema: EMA | None
    vgg: torch.nn.Module | None
    amp: torch.dtype | None  # autocast dtype; None: full precision
    scaler: torch.amp.GradScaler | None  # fp16 only
    memory_format: torch.memory_format

    def state(self, cfg: TrainConfig, at: Position, minutes: float, processes: int) -> dict[str, Any]:
        """A resumable checkpoint (the layout in srdeploy.training.checkpoint)."""
        return {"generator": self.generator.state_dict(), "arch": self.generator.arch(),
                "generator_ema": self.ema.model.state_dict() if self.ema else None,
                "discriminator": self.discriminator.state_dict() if self.discriminator else None,
                "g_optimizer": self.g_opt.state_dict(), "d_optimizer": self.d_opt.state_dict() if self.d_opt else None,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "step": at.step, "epoch": at.epoch, "epoch_step": at.epoch_step, "best": at.best, "minutes": minutes, "processes": processes,
                "rng": _rng_state(), "config": cfg.to_dict()}

    def weight_sum(self) -> float:
        """Sum of every trained parameter in float64: equal on all DDP ranks unless they drifted."""
        nets = [self.generator] + ([self.discriminator] if self.discriminator else [])
        return float(sum(p.detach().double().sum() for net in nets for p in net.parameters()))


def build_models(cfg: TrainConfig, device: torch.device, use_init: bool) -> Models:
    generator = Generator(cfg.num_blocks, cfg.channels, cfg.scale)
    discriminator = Discriminator() if cfg.stage == "srgan" else None
    if cfg.init and use_init:
        _init_generator(cfg, generator)
    vgg = None
    if cfg.uses_vgg:
        from srdeploy.training.vgg import load_vgg_features

        vgg = load_vgg_features(cfg.vgg_weights).to(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size per run: autotune the convolutions once
    generator.to(device, memory_format=memory_format)
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
    d_opt = None
    if discriminator is not None:
        discriminator.to(device, memory_format=memory_format)
        d_opt = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)
    amp = None if device.type != "cuda" or cfg.amp == "none" else {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    ema = EMA(generator, cfg.ema) if cfg.ema else None
    return Models(generator, g_opt, discriminator, d_opt, ema, vgg, amp, scaler, memory_format)


def _init_generator(cfg: TrainConfig, g: Generator) -> None:
    """Start from a pre-trained generator (a run's checkpoint, or a shipped model name)."""
    path = cfg.init
    if path in zoo.NAMES:
        # Shipped models carry their state_dict beside model.onnx, checked by the manifest.
        path = str(zoo.resolve_model(path).path.parent / zoo.GENERATOR_FILE)
    src, _ = load_generator(path)
    if src.arch() != g.arch():
        raise ValueError(f"--init {cfg.init}: generator {src.arch()} does not match the configured {g.arch()}")
    g.load_state_dict(src.state_dict())


def restore(path: Path, m: Models) -> Position:
    """Load last.pt into ``m`` (weights, optimisers, EMA, scaler, RNG states); where the run was."""
    # Loaded on the CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest.
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt.get("g_optimizer"), dict) or "rng" not in ckpt:
        raise ValueError(f"{path}: not a resumable checkpoint (no optimiser or RNG state; a slim copy?)")
    m.generator.load_state_dict(ckpt["generator"])
    m.g_opt.load_state_dict(ckpt["g_optimizer"])
    if m.discriminator is not None:
        m.discriminator.load_state_dict(ckpt["discriminator"])
        m.d_opt.load_state_dict(ckpt["d_optimizer"])
    if m.ema is not None and ckpt.get("generator_ema") is not None:
        m.ema.model.load_state_dict(ckpt["generator_ema"])
    if m.scaler is not None and ckpt.get("scaler"):
        m.scaler.load_state_dict(ckpt["scaler"])
    _restore_rng(ckpt["rng"])
    # validated=step: a resume whose budget is already spent has nothing new to validate or save.
    return Position(ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt.get("best", -math.inf), ckpt.get("minutes", 0.0),
                    validated=ckpt["step"], processes=ckpt.get("processes"))


def _rng_state() -> dict[str, Any]:
    """Every generator's whole state, as plain data (a weights-only checkpoint holds it)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    _, words, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached},
             "python": list(words), "python_gauss_next": gauss_next}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        np.random.set_state(("MT19937", np.array(numpy["keys"], dtype=np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    else:  # checkpoints before 2026-12-07 kept the key only: the stream restarts at its position 624
        np.random.set_state(("MT19937", np.array(numpy, dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), state.get("python_gauss_next")))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
