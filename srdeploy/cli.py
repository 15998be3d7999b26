"""The ``srdeploy`` command line.

Subcommands live beside the code they drive and are imported only when invoked, so
``srdeploy --help`` and the torch-free runtime commands never import torch. The console
script runs :func:`run`, which turns what a command did not catch into one line: a missing
optional package names the extra that installs it; anything else is reported with its
type and message (``SRDEPLOY_TRACEBACK=1`` shows the traceback instead).
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import warnings

import click

from srdeploy import EXIT_INTERRUPTED, __version__
from srdeploy.io.streams import PipeSafe, file_being_read

# name -> (module, attribute, one-line help shown by `srdeploy --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("srdeploy.training.cli", "train", "Train SRResNet (MSE) or fine-tune an SRGAN."),
    "evaluate": ("srdeploy.evaluation.cli", "evaluate", "PSNR/SSIM table and figure against bicubic."),
    "upscale": ("srdeploy.batch.cli", "upscale", "Upscale images, folders and buckets 4x on the fastest engine here (OpenVINO, ONNX Runtime, CUDA, TensorRT); --ray for a cluster."),
    "export": ("srdeploy.export.cli", "export", "Checkpoint -> ONNX (fp32/fp16/int8) and TensorRT, manifest, parity checks on every engine."),
    "package": ("srdeploy.handlers.cli", "package", "Build a TorchServe archive (NAME.mar) and a safe config.properties."),
    "demo": ("srdeploy.demo.cli", "demo", "A local web page to try a model on one image: before/after against bicubic, download."),
    "bench": ("srdeploy.bench.cli", "bench", "Time every engine x precision this CPU runs and the upscale pipeline on the same inputs (share of measured ceilings)."),
}


# Optional packages a command may need -> (distribution, the extra in pyproject.toml that
# installs it). tests/test_cli.py checks each against pyproject.toml.
EXTRAS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "cpu"),
    "onnx": ("onnx", "cpu"),
    "openvino": ("openvino", "cpu"),
    "skimage": ("scikit-image", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "torch": ("torch", "train"),
    "torchvision": ("torchvision", "train"),
    "onnxscript": ("onnxscript", "export"),
    "onnxconverter_common": ("onnxconverter-common", "export"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "ts": ("torchserve", "serve"),
    "model_archiver": ("torch-model-archiver", "serve"),
    "yaml": ("pyyaml", "serve"),
    "gradio": ("gradio", "demo"),
    "ray": ("ray", "ray"),
    "fsspec": ("fsspec", "ray"),
    "s3fs": ("s3fs", "ray"),
}


# The extra each command is installed with: a package it misses is named with this extra
# when the extra brings it (`export` without torch: srdeploy[export], not [train]).
COMMAND_EXTRAS: dict[str, str] = {
    "train": "train", "evaluate": "eval", "upscale": "cpu", "export": "export", "package": "serve", "demo": "demo", "bench": "cpu",
}


def missing_package_message(error: ModuleNotFoundError, command: str | None = None) -> str:
    """One line for a missing module: which package, and the extra that brings it (the
    running ``command``'s own extra when it does)."""
    top = (error.name or "").split(".")[0]
    if top in EXTRAS:
        distribution, extra = EXTRAS[top]
        own = COMMAND_EXTRAS.get(command or "")
        if own and distribution in extra_distributions(own):
            extra = own
        return f"this needs the {distribution} package, which is not installed: pip install 'srdeploy[{extra}]'"
    return f"a module this needs is missing ({error}); reinstall srdeploy"


def extra_distributions(extra: str) -> set[str]:
    """The distributions srdeploy's ``extra`` installs, from the installed package's
    metadata (pyproject.toml's optional-dependencies), following ``srdeploy[...]``."""
    import importlib.metadata
    import re

    try:
        requirements = importlib.metadata.requires("srdeploy") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return set()
    found: set[str] = set()
    wanted, seen = [extra], set()
    while wanted:
        current = wanted.pop()
        seen.add(current)
        for requirement in requirements:
            marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
            if not marker or marker.group(1) != current:
                continue
            name = re.match(r"([A-Za-z0-9_.\-]+)(\[([^\]]*)\])?", requirement)
            if name.group(1) == "srdeploy":
                wanted += [inner.strip() for inner in (name.group(3) or "").split(",") if inner.strip() not in seen]
            else:
                found.add(name.group(1).lower())
    return found


def _command(args: list[str] | None) -> str | None:
    """The subcommand being run: the first argument that is not an option."""
    return next((a for a in (sys.argv[1:] if args is None else args) if not a.startswith("-")), None)


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


def _interrupted(error: BaseException) -> bool:
    """Whether Ctrl-C is behind ``error``: a library that catches what went wrong and raises
    its own error hides the KeyboardInterrupt in the chain (torch.onnx.export, interrupted
    while it imports torch._dynamo, reports a failed export and advice to change the model)."""
    seen = 0
    while error is not None and seen < 32:  # a chain can loop through __context__
        if isinstance(error, KeyboardInterrupt):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _exit_interrupted() -> None:
    click.echo("interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


def run(args: list[str] | None = None) -> None:
    """The console script: :func:`main`, with no traceback reaching the user."""
    if os.environ.get("SRDEPLOY_TRACEBACK") != "1":
        warnings.showwarning = _show_warning
    for stream in (sys.stdout, sys.stderr):  # a file name the console's encoding lacks (cp1252, latin-1) is shown escaped
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)  # `| head` ends neither a command nor its output
    try:
        code = main.main(args=args, standalone_mode=False)  # so that Ctrl-C reaches us, not click's "Aborted!" and status 1
    except click.exceptions.Abort:  # Ctrl-C where the command does not say more (upscale and train do)
        _exit_interrupted()
    except click.ClickException as e:
        if _interrupted(e):
            _exit_interrupted()
        e.show()
        sys.exit(e.exit_code)
    except ImportError as e:  # ours say what to install; Python's own name a module
        if os.environ.get("SRDEPLOY_TRACEBACK") == "1":
            raise
        click.echo(f"Error: {missing_package_message(e, _command(args)) if isinstance(e, ModuleNotFoundError) and e.name else e}", err=True)
        sys.exit(2)
    except Exception as e:  # a command's own errors are one line already; this is the last guard
        if _interrupted(e):
            _exit_interrupted()
        if os.environ.get("SRDEPLOY_TRACEBACK") == "1":
            raise
        click.echo(f"Error: {type(e).__name__}: {e} (unexpected; SRDEPLOY_TRACEBACK=1 shows where it came from)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)  # --help and --version give theirs


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line for a user (``skipping data/x.jpg: ...``), not Python's
    two, which name the source line that warned; naming the file it is about when a
    thread raised it while reading one (Pillow's "Corrupt EXIF data" in a batch)."""
    about = file_being_read()
    text = " ".join(str(message).split())  # Pillow's have double spaces and a trailing one
    click.echo(f"warning: {f'{about}: ' if about else ''}{text}", err=True)


if __name__ == "__main__":
    run()
