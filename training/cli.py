"""``srdeploy train srresnet|srgan``: flags map 1:1 onto TrainConfig fields.

Every option defaults to None, meaning "not given": the value then comes from --preset,
else from TrainConfig's defaults. Torch is imported only when a command runs.
"""

from __future__ import annotations

import json
import sys

import click

from srdeploy.training.config import resolve_config

_COMMON = [
    click.option("--data", type=click.Path(exists=True, file_okay=False), help="Folder of HR images (recursive). Required unless --resume."),
    click.option("--data-list", type=click.Path(exists=True, dir_okay=False), help="File of image names to use from --data."),
    click.option("--val-data", type=click.Path(exists=True, file_okay=False), help="Folder of HR validation images."),
    click.option("--val-list", type=click.Path(exists=True, dir_okay=False)),
    click.option("--val-limit", type=int, help="Validate on at most N images [100]."),
    click.option("-o", "--out", type=click.Path(file_okay=False), help="Run folder [runs/<stage>]."),
    click.option("--preset", type=click.Choice(["seed", "paper"]), help="seed: 2021 reproduction; paper: Ledig et al. 2017."),
    click.option("--blocks", "num_blocks", type=int, help="Residual blocks B [8]."),
    click.option("--channels", type=int, help="Generator filters [64]."),
    click.option("--patch", type=int, help="HR crop size (multiple of 4) [whole image]."),
    click.option("--downsample", type=click.Choice(["bicubic", "bilinear"]), help="LR degradation [bicubic]."),
    click.option("--batch-size", type=int),
    click.option("--epochs", type=int),
    click.option("--steps", type=int, help="Stop after N optimiser steps."),
    click.option("--max-minutes", type=float, help="Stop (and checkpoint) after this much wall time."),
    click.option("--lr", type=float, help="Adam learning rate [2e-4]."),
    click.option("--schedule", type=click.Choice(["constant", "step", "cosine"])),
    click.option("--lr-step", type=int, help="Step where the 'step' schedule divides lr by 10."),
    click.option("--ema", type=float, help="Generator weight EMA decay, e.g. 0.999 [off]."),
    click.option("--workers", type=int, help="DataLoader workers [2]."),
    click.option("--preload/--no-preload", default=None, help="Decode the data once and keep it on the device (GPU runs)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
    click.option("--amp", type=click.Choice(["bf16", "fp16", "none"]), help="Autocast on CUDA [bf16]."),
    click.option("--seed", type=int),
    click.option("--ckpt-every", type=int, help="Checkpoint every N steps [500]."),
    click.option("--log-every", type=int, help="Log losses and samples/s every N steps [20]."),
    click.option("--val-every", type=int, help="Validate, checkpoint and plot every N epochs [1]."),
    click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt."),
]


def common_options(fn):
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


def _run(stage: str, preset: str | None, resume: bool, overrides: dict) -> None:
    from srdeploy.training.loop import train as run_training

    out = overrides.get("out")
    if resume:
        if not out:
            raise click.UsageError("--resume needs --out (the run folder to continue)")
        from pathlib import Path

        saved = Path(out) / "config.json"
        if not (Path(out) / "last.pt").is_file():
            raise click.UsageError(f"--resume: no last.pt in {out}")
        # The saved config wins, except for the stopping criteria, which a resume extends.
        stored = json.loads(saved.read_text())
        stored.update({k: overrides[k] for k in ("epochs", "steps", "max_minutes", "workers", "preload", "val_every") if overrides.get(k) is not None})
        from srdeploy.training.config import TrainConfig

        cfg = TrainConfig(**stored)
    else:
        if not overrides.get("data"):
            raise click.UsageError("--data is required (a folder of HR images)")
        try:
            cfg = resolve_config(stage, preset, overrides)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    click.echo(f"srdeploy train {stage}: {json.dumps({k: v for k, v in cfg.to_dict().items() if v is not None})}", err=True)
    try:
        out_dir = run_training(cfg, resume=resume)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"run folder: {out_dir}", err=True)


@click.group()
def train() -> None:
    """Train SRResNet (MSE) or fine-tune an SRGAN."""


@train.command()
@common_options
@click.option("--init", help="Start from a generator: a run's last.pt/best.pt, or 'default' (the shipped SRResNet).")
def srresnet(preset, resume, **overrides):
    """MSE pre-training of the SRResNet generator (seed: Adam 2e-4, batch 64, 30 epochs)."""
    _run("srresnet", preset, resume, overrides)


@train.command()
@common_options
@click.option("--init", help="Generator to start from: a srresnet run's last.pt/best.pt, or 'default'.")
@click.option("--content", type=click.Choice(["mse", "mse+vgg", "vgg"]), help="Content loss [mse].")
@click.option("--mse-weight", type=float)
@click.option("--vgg-weight", type=float, help="[5e-4]")
@click.option("--vgg-scale", type=float, help="Feature scale before the VGG MSE (paper: 1/12.75).")
@click.option("--adv-weight", type=float, help="[1e-3]")
@click.option("--vgg-weights", type=click.Path(dir_okay=False), help="Local torchvision VGG19 state_dict (offline machines).")
def srgan(preset, resume, **overrides):
    """Adversarial fine-tuning (seed: batch 32; 8 epochs mse, 6 epochs mse+vgg)."""
    if not resume and not overrides.get("init"):
        raise click.UsageError("srgan needs --init (a pre-trained generator checkpoint, or 'default')")
    _run("srgan", preset, resume, overrides)
