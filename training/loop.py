"""The training loop shared by both stages: a flat function, in the nanoGPT manner.

Run folder layout (``cfg.out``): config.json (resolved config), data.json (image counts,
skipped files), metrics.jsonl (one JSON object per log line, split=train|val), last.pt
(resumable), best.pt (best validation PSNR-Y), loss_curves.png, samples/epoch_NNN.png
(bicubic | SR | HR), end.json (how the run ended: step, minutes, the budget that stopped
it, and each rank's step, learning rate and weight sum, which must agree).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from srdeploy.io.files import atomic_write_bytes
from srdeploy.training import distributed as dist
from srdeploy.training.budget import Budget, ctrl_c_ends_the_step, ignore_ctrl_c, lr_factor
from srdeploy.training.checkpoint import save_checkpoint
from srdeploy.training.config import TrainConfig
from srdeploy.training.data import EpochSampler, PreloadedLoader, PreloadedPairs, SRDataset
from srdeploy.training.state import Position, build_models, restore
from srdeploy.training.steps import StepContext, srgan_step, srresnet_step
from srdeploy.training.validate import Validator


def train(cfg: TrainConfig, resume: bool = False, started: Callable[[], None] = lambda: None) -> Path:
    """Train until the budget (--steps, --epochs, --max-minutes) is spent; returns the run
    folder. ``resume`` continues from ``cfg.out``/last.pt, wherever that folder now is.
    ``started`` is called on rank 0 once the models, data and budget are ready, before
    anything is written; what fails before that raises RunRefused. After Ctrl-C or SIGTERM
    it raises RunInterrupted, once the step in progress and last.pt are done."""
    with dist.process_group() as env, ctrl_c_ends_the_step(env.is_main) as interrupted:
        out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        try:  # a missing file, a bad checkpoint or data list, no VGG weights or GPU: nothing has run yet
            device = pick_device(cfg.device, env.local_rank)
            m = build_models(cfg, device, use_init=not resume)
            at = restore(out / "last.pt", m) if resume else Position()
            if at.processes not in (None, env.world_size):  # steps count batches per process: they would not carry over
                raise ValueError(f"--resume: {out} was trained by {at.processes} process(es) and this run has {env.world_size}; "
                                 f"its epoch position and step budget count each process's batches, so resume with "
                                 f"{at.processes} (torchrun --nproc-per-node {at.processes}, or no torchrun for 1)")
            dataset, sampler, loader = make_loader(cfg, env, device)
            steps_per_epoch = len(dataset) // env.world_size // cfg.batch_size
            if steps_per_epoch == 0:
                most = len(dataset) // env.world_size
                remedy = f"give --batch-size {most} or less" if most >= 2 else "give more images (a batch needs two, for BatchNorm)"
                raise ValueError(f"{len(dataset)} images cannot fill one batch of {cfg.batch_size} per process; {remedy}")
            budget = Budget(cfg, steps_per_epoch, at.minutes, env, interrupted=interrupted)
            if resume and budget.planned is not None and budget.planned <= at.step:
                raise ValueError(f"--resume: {out} is at step {at.step}, and a budget of {budget.planned} steps "
                                 f"(`steps` or `epochs`) leaves none to run; give a larger one")
            validator = Validator(cfg, device) if (env.is_main and cfg.val_data) else None
        except (OSError, ValueError, RuntimeError) as e:
            raise RunRefused(" ".join(str(e).split()) or type(e).__name__) from e
        if env.is_main:
            started()
        if at.epoch_step >= steps_per_epoch:  # older versions could checkpoint an epoch's last step before moving on
            at.epoch, at.epoch_step = at.epoch + 1, 0
        ctx = StepContext(cfg, dist.wrap(m.generator, env), m.g_opt,
                          dist.wrap(m.discriminator, env) if m.discriminator else None, m.d_opt, m.vgg, m.scaler, m.amp)
        step_fn = srgan_step if cfg.stage == "srgan" else srresnet_step
        logger = RunLogger(out, cfg, enabled=env.is_main)
        # What was logged after the checkpoint is redone (a fresh run: after step 0, by a run
        # that stopped before its first checkpoint): keep one record per step.
        logger.drop_after(at.step)
        logger.write_json("data.json", {
            "train_images": len(dataset), "train_skipped": [f"{p}: {why}" for p, why in dataset.skipped],
            "val_images": len(validator.pairs) if validator else 0,
            "val_skipped": [f"{p}: {why}" for p, why in validator.skipped] if validator else [],
            "steps_per_epoch": steps_per_epoch, "planned_steps": budget.planned, "world_size": env.world_size})

        def save(tag: str = "last") -> None:
            if env.is_main:
                save_checkpoint(m.state(cfg, at, budget.minutes(), env.world_size), out / f"{tag}.pt")

        def validate_and_save() -> None:
            if validator is not None:
                result = validator.run(m.ema.model if m.ema else m.generator, out / "samples" / f"epoch_{at.epoch:03d}.png")
                logger.log({"split": "val", "step": at.step, "epoch": at.epoch, **result})
                if result["psnr_y"] > at.best:
                    at.best = result["psnr_y"]
                    save("best")
            save()
            at.validated = at.step

        def train_record(lr: float, window: Throughput) -> dict[str, Any]:
            return {"split": "train", "step": at.step, "epoch": at.epoch, "lr": lr, **window.summary(), "minutes": budget.minutes()}

        bar = logger.progress(budget.planned, at.step)
        window, batches, lr, losses = Throughput(), None, cfg.lr, {}
        while True:
            total = budget.total_steps(at.step)  # rank 0 decides, every rank gets the same figure
            if at.step >= total:  # the one place the run stops
                break
            if batches is None:  # a new epoch, or the rest of the one a resume starts inside
                sampler.set_epoch(at.epoch, start=at.epoch_step * cfg.batch_size)
                batches = iter(loader)
            lr_img, hr_img = next(batches)  # (N, 3, P/4, P/4) in [0, 1], (N, 3, P, P) in [-1, 1]
            window.data_ready()
            lr_img = lr_img.to(device, non_blocking=True, memory_format=m.memory_format)
            hr_img = hr_img.to(device, non_blocking=True, memory_format=m.memory_format)
            lr = cfg.lr * lr_factor(cfg, at.step, total)
            for opt in (m.g_opt, m.d_opt):
                for group in (opt.param_groups if opt else []):
                    group["lr"] = lr
            losses = step_fn(ctx, lr_img, hr_img)
            if m.ema is not None:
                m.ema.update(m.generator, at.step)
            at.step, at.epoch_step = at.step + 1, at.epoch_step + 1
            window.step_done(lr_img.shape[0] * env.world_size, losses)
            bar.update(losses, window, total)
            epoch_done = at.epoch_step == steps_per_epoch
            if epoch_done:  # before logging: a record's epoch counts the epochs its step completed
                at.epoch, at.epoch_step, batches = at.epoch + 1, 0, None
            if at.step % cfg.log_every == 0:
                logger.log(train_record(lr, window))
                window = Throughput()
            if epoch_done and at.epoch % cfg.val_every == 0:
                validate_and_save()
                logger.plot()
                window.restart_clock()  # validation is not step time
                continue
            if at.step % cfg.ckpt_every == 0:
                save()

        # The budget is spent: log the last, partial interval and end with a validated
        # checkpoint; after Ctrl-C, with a checkpoint only (validation can take minutes).
        if window.steps:
            logger.log(train_record(lr, window))
        if budget.stopped_by == "interrupt":
            save()
        elif at.validated != at.step:
            validate_and_save()
        logger.plot()
        bar.close()
        ranks = dist.gather_rows([at.step, lr, m.weight_sum()], env)
        logger.write_json("end.json", {
            "step": at.step, "epoch": at.epoch, "minutes": budget.minutes(), "stopped_by": budget.stopped_by,
            "ranks": [{"rank": i, "step": int(r[0]), "lr": r[1], "weight_sum": r[2]} for i, r in enumerate(ranks)]})
        if any(r[:2] != ranks[0][:2] or not math.isclose(r[2], ranks[0][2], rel_tol=1e-9) for r in ranks):
            raise RuntimeError(f"DDP ranks disagree at the end of the run (step, lr, weight sum): {ranks}")
    if budget.stopped_by == "interrupt":
        raise RunInterrupted(at.step, out / "last.pt", interrupted() or "a signal")
    return out


class RunRefused(Exception):
    """The run could not start; nothing was trained, and nothing written in its folder."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``by``) ended the run after a whole step, with ``last.pt``
    written at ``step``."""

    def __init__(self, step: int, checkpoint: Path, by: str = "Ctrl-C"):
        super().__init__(step, checkpoint, by)
        self.step, self.checkpoint, self.by = step, checkpoint, by


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


def make_loader(cfg: TrainConfig, env: dist.DistEnv, device: torch.device):
    """(dataset, sampler, loader): this rank's shard of (epoch, index) pairs, batched."""
    dataset = SRDataset(cfg.data, cfg.data_list, cfg.patch, cfg.scale, cfg.downsample, cfg.flip, cfg.seed)
    sides = dataset.item_sides()
    if len(sides) > 1:  # said now, not when the first mixed batch is drawn
        some = ", ".join(f"{side}px ({path})" for side, path in sorted(sides.items())[:3])
        raise ValueError(f"without `patch` every image of a batch must have one size; {cfg.data} gives {len(sides)} "
                         f"square crops, e.g. {some}; give `patch` (a multiple of {cfg.scale}, at most {min(sides)})")
    sampler = EpochSampler(len(dataset), cfg.seed, env.rank, env.world_size)
    if cfg.preload:
        return dataset, sampler, PreloadedLoader(PreloadedPairs(dataset, device), sampler, cfg.batch_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=False, worker_init_fn=ignore_ctrl_c,
                        prefetch_factor=4 if cfg.workers else None)
    return dataset, sampler, loader


class Throughput:
    """Since the last log line: samples/s, the share of step time spent waiting for data,
    and each loss's mean over the steps (one batch's GAN losses are too noisy to plot)."""

    def __init__(self):
        self.steps, self.samples, self.waiting, self.busy = 0, 0, 0.0, 0.0
        self.loss_sums: dict[str, float] = {}
        self.restart_clock()

    def restart_clock(self) -> None:
        """The next step's time starts now (after a validation, which is not step time)."""
        self.t_prev = self.t_data = time.monotonic()

    def data_ready(self) -> None:
        self.t_data = time.monotonic()

    def step_done(self, samples: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        self.steps, self.samples = self.steps + 1, self.samples + samples
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value
        self.waiting, self.busy = self.waiting + self.t_data - self.t_prev, self.busy + now - self.t_prev
        self.t_prev = now

    def summary(self) -> dict[str, float]:
        busy = max(self.busy, 1e-9)
        means = {name: total / self.steps for name, total in self.loss_sums.items()}
        return {**means, "samples_per_s": self.samples / busy, "data_wait": self.waiting / busy}


class RunLogger:
    """config.json, metrics.jsonl and the loss-curve figure; silent on non-zero ranks."""

    def __init__(self, out: Path, cfg: TrainConfig, enabled: bool):
        self.out, self.enabled = out, enabled
        if enabled:
            out.mkdir(parents=True, exist_ok=True)
            self.write_json("config.json", cfg.to_dict())

    def write_json(self, name: str, obj: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_bytes(self.out / name, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def drop_after(self, step: int) -> None:
        """Remove the records past ``step``: a resume from a checkpoint at ``step`` redoes
        the steps after it, and logs them again."""
        path = self.out / "metrics.jsonl"
        if not (self.enabled and path.is_file()):
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(path, "".join(kept).encode("utf-8"))

    def plot(self) -> None:
        if self.enabled and (self.out / "metrics.jsonl").is_file():
            from srdeploy.training.figures import save_loss_curves

            save_loss_curves(self.out / "metrics.jsonl", self.out / "loss_curves.png")

    def progress(self, total: int | None, initial: int) -> _Progress:
        return _Progress(total, initial, self.enabled and os.environ.get("SRDEPLOY_NO_PROGRESS") != "1")


def _step_of(line: str) -> float:
    """A metrics line's step; infinity for a line torn by a crash mid-write (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


class _Progress:
    def __init__(self, total: int | None, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=2.0)

    def update(self, losses: dict[str, float], window: Throughput, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total  # under --max-minutes: the projected total
            shown = {k: f"{v:.4g}" for k, v in losses.items() if k in ("loss_g", "loss_d")}
            self.bar.set_postfix(**shown, samples_s=f"{window.summary()['samples_per_s']:.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
