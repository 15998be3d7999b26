"""The ``srdeploy`` command line.

Subcommands live beside the code they drive and are imported only when invoked, so
``srdeploy --help`` and the torch-free runtime commands never import torch.
"""

from __future__ import annotations

import importlib

import click

from srdeploy import __version__

# name -> (module, attribute, one-line help shown by `srdeploy --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("srdeploy.training.cli", "train", "Train SRResNet (MSE) or fine-tune an SRGAN."),
    "evaluate": ("srdeploy.training.evaluate_cli", "evaluate", "PSNR/SSIM table and figure against bicubic."),
    "upscale": ("srdeploy.batch.cli", "upscale", "Upscale images and folders 4x with ONNX Runtime (cpu/cuda/tensorrt)."),
    "export": ("srdeploy.export.cli", "export", "Checkpoint -> ONNX (fp32/fp16) and TensorRT, manifest, parity checks."),
    "package": ("srdeploy.handlers.cli", "package", "Build a TorchServe archive (NAME.mar) and a safe config.properties."),
    "bench": ("srdeploy.bench.cli", "bench", "Time PyTorch eager, ORT fp32/INT8 and the upscale pipeline on the same inputs (GFLOP/s vs peak)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import the subcommand modules (and with them torch).
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="srdeploy")
def main() -> None:
    """4x super-resolution with an SRGAN: train, export, upscale, serve."""


if __name__ == "__main__":
    main()
