"""The training loop shared by both stages: a flat function, in the nanoGPT manner.

Run folder layout (``cfg.out``): config.json (resolved config), data.json (image counts,
skipped files), metrics.jsonl (one JSON object per log line, split=train|val), last.pt (resumable), best.pt (best validation
PSNR-Y), loss_curves.png, samples/epoch_NNN.png (bicubic | SR | HR).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from srdeploy.training import distributed as dist
from srdeploy.training.checkpoint import load_checkpoint, load_generator, save_checkpoint
from srdeploy.training.config import TrainConfig
from srdeploy.training.data import EpochSampler, PreloadedLoader, PreloadedPairs, SRDataset
from srdeploy.training.models import Discriminator, Generator
from srdeploy.training.steps import StepContext, srgan_step, srresnet_step
from srdeploy.training.validate import Validator


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Multiplier of cfg.lr; ``progress`` in [0, 1] is the share of the run's budget spent
    (steps, or wall time when --max-minutes binds first)."""
    if cfg.schedule == "step":
        return 0.1 if step >= cfg.lr_step else 1.0
    if cfg.schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


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


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()[1]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _init_generator(cfg: TrainConfig, g: Generator) -> None:
    """srgan: start from a pre-trained generator (a run's checkpoint, or a shipped model name)."""
    path = cfg.init
    if path in ("default", "srresnet", "srgan"):
        from srdeploy.runtime.zoo import resolve_model

        # Shipped models carry their state_dict beside model.onnx, checked by the manifest.
        path = str(resolve_model(path).path.parent / "generator.pt")
    src, _ = load_generator(path)
    if src.arch() != g.arch():
        raise ValueError(f"--init {cfg.init}: generator {src.arch()} does not match the configured {g.arch()}")
    g.load_state_dict(src.state_dict())


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train until epochs/steps/max_minutes; returns the run folder."""
    env = dist.setup()
    device = pick_device(cfg.device, env.local_rank)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)

    generator = Generator(cfg.num_blocks, cfg.channels, cfg.scale)
    discriminator = Discriminator() if cfg.stage == "srgan" else None
    if cfg.init and not resume:
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
    ema = EMA(generator, cfg.ema) if cfg.ema else None
    amp = None if device.type != "cuda" or cfg.amp == "none" else {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    step, epoch, epoch_start, best, minutes_before = 0, 0, 0, -math.inf, 0.0
    if resume:
        # Loaded on the CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest.
        ckpt = load_checkpoint(out / "last.pt", map_location="cpu")
        generator.load_state_dict(ckpt["generator"])
        g_opt.load_state_dict(ckpt["g_optimizer"])
        if discriminator is not None:
            discriminator.load_state_dict(ckpt["discriminator"])
            d_opt.load_state_dict(ckpt["d_optimizer"])
        if ema is not None and ckpt.get("generator_ema") is not None:
            ema.model.load_state_dict(ckpt["generator_ema"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch, epoch_start, best = ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt.get("best", -math.inf)
        minutes_before = ckpt.get("minutes", 0.0)
        _restore_rng(ckpt["rng"])

    dataset = SRDataset(cfg.data, cfg.data_list, cfg.patch, cfg.scale, cfg.downsample, cfg.flip, cfg.seed)
    sampler = EpochSampler(len(dataset), cfg.seed, env.rank, env.world_size)
    if cfg.preload:
        loader = PreloadedLoader(PreloadedPairs(dataset, device), sampler, cfg.batch_size)
    else:
        loader_kw = dict(batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                         pin_memory=device.type == "cuda", persistent_workers=False)
        if cfg.workers:
            loader_kw["prefetch_factor"] = 4
        loader = DataLoader(dataset, **loader_kw)
    steps_per_epoch = len(dataset) // env.world_size // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images cannot fill one batch of {cfg.batch_size} per process")
    total_steps = cfg.steps if cfg.steps is not None else (cfg.epochs * steps_per_epoch if cfg.epochs else None)
    if cfg.schedule == "cosine" and total_steps is None and cfg.max_minutes is None:
        raise ValueError("the cosine schedule needs a budget: --steps, --epochs or --max-minutes")

    g_train, d_train = dist.wrap(generator, env), (dist.wrap(discriminator, env) if discriminator is not None else None)
    ctx = StepContext(cfg, g_train, g_opt, d_train, d_opt, vgg, scaler, amp)
    step_fn = srgan_step if cfg.stage == "srgan" else srresnet_step
    validator = Validator(cfg, device) if (env.is_main and cfg.val_data) else None
    logger = RunLogger(out, cfg, enabled=env.is_main)
    logger.write_json("data.json", {
        "train_images": len(dataset), "train_skipped": [f"{p}: {why}" for p, why in dataset.skipped],
        "val_images": len(validator.pairs) if validator else 0,
        "val_skipped": [f"{p}: {why}" for p, why in validator.skipped] if validator else [],
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "world_size": env.world_size})

    def save(tag: str = "last") -> None:
        if not env.is_main:
            return
        state = {"generator": generator.state_dict(), "arch": generator.arch(),
                 "generator_ema": ema.model.state_dict() if ema else None,
                 "discriminator": discriminator.state_dict() if discriminator is not None else None,
                 "g_optimizer": g_opt.state_dict(), "d_optimizer": d_opt.state_dict() if d_opt else None,
                 "scaler": scaler.state_dict() if scaler else None,
                 "step": step, "epoch": epoch, "epoch_step": epoch_start, "best": best, "minutes": minutes(),
                 "rng": _rng_state(), "config": cfg.to_dict()}
        save_checkpoint(state, out / f"{tag}.pt")

    # --max-minutes budgets the whole run: a resume continues the same budget.
    t_start = time.monotonic()
    minutes = lambda: minutes_before + (time.monotonic() - t_start) / 60  # noqa: E731

    def progress() -> float:
        by_steps = step / total_steps if total_steps else 0.0
        return max(by_steps, minutes() / cfg.max_minutes if cfg.max_minutes else 0.0)

    def done() -> bool:
        return progress() >= 1.0 if (total_steps or cfg.max_minutes) else False
    bar = logger.progress(total_steps, step)
    while not done() and (cfg.epochs is None or cfg.steps is not None or epoch < cfg.epochs):
        sampler.set_epoch(epoch, start=epoch_start * cfg.batch_size)
        t_prev, window = time.monotonic(), {"n": 0, "data": 0.0, "total": 0.0}
        for lr_img, hr_img in loader:
            t_data = time.monotonic()
            lr_img = lr_img.to(device, non_blocking=True, memory_format=memory_format)
            hr_img = hr_img.to(device, non_blocking=True, memory_format=memory_format)
            for opt in (g_opt, d_opt):
                for group in (opt.param_groups if opt else []):
                    group["lr"] = cfg.lr * lr_factor(cfg, step, progress())
            losses = step_fn(ctx, lr_img, hr_img)
            if ema is not None:
                ema.update(generator, step)
            step, epoch_start = step + 1, epoch_start + 1
            t_now = time.monotonic()
            window["n"] += lr_img.shape[0] * env.world_size
            window["data"] += t_data - t_prev
            window["total"] += t_now - t_prev
            t_prev = t_now
            bar.update(losses, window)
            if step % cfg.log_every == 0:
                logger.log({"split": "train", "step": step, "epoch": epoch, "lr": g_opt.param_groups[0]["lr"], **losses,
                            "samples_per_s": window["n"] / window["total"], "data_wait": window["data"] / window["total"],
                            "minutes": minutes()})
                window = {"n": 0, "data": 0.0, "total": 0.0}
            if step % cfg.ckpt_every == 0:
                save()
            if done():
                break
        if epoch_start >= steps_per_epoch:  # the epoch ran to its end (also when the budget ended with it)
            epoch, epoch_start = epoch + 1, 0
        finished = done() or (cfg.epochs is not None and cfg.steps is None and epoch >= cfg.epochs)
        if epoch % cfg.val_every and not finished:
            continue
        if validator is not None:
            result = validator.run(ema.model if ema else generator, out / "samples" / f"epoch_{epoch:03d}.png")
            logger.log({"split": "val", "step": step, "epoch": epoch, **result})
            if result["psnr_y"] > best:
                best = result["psnr_y"]
                save("best")
        save()
        logger.plot()
        dist.barrier(env)
    bar.close()
    dist.teardown(env)
    return out


class RunLogger:
    """config.json, metrics.jsonl and the loss-curve figure; silent on non-zero ranks."""

    def __init__(self, out: Path, cfg: TrainConfig, enabled: bool):
        self.out, self.enabled = out, enabled
        if enabled:
            out.mkdir(parents=True, exist_ok=True)
            self.write_json("config.json", cfg.to_dict())

    def write_json(self, name: str, obj: dict[str, Any]) -> None:
        if self.enabled:
            (self.out / name).write_text(json.dumps(obj, indent=2) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        if self.enabled and (self.out / "metrics.jsonl").is_file():
            from srdeploy.training.figures import save_loss_curves

            save_loss_curves(self.out / "metrics.jsonl", self.out / "loss_curves.png")

    def progress(self, total: int | None, initial: int) -> "_Progress":
        return _Progress(total, initial, self.enabled and os.environ.get("SRDEPLOY_NO_PROGRESS") != "1")


class _Progress:
    def __init__(self, total: int | None, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=2.0)

    def update(self, losses: dict[str, float], window: dict[str, float]) -> None:
        if self.bar is not None:
            shown = {k: f"{v:.4g}" for k, v in losses.items() if k in ("loss_g", "loss_d")}
            self.bar.set_postfix(**shown, samples_s=f"{window['n'] / max(window['total'], 1e-9):.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
