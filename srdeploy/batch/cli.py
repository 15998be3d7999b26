"""``srdeploy upscale``: 4x images from files and folders, on CPU or GPU.

Exit status: 0 when every input is ok or skipped, 1 when any failed, 2 when the run
could not start (model, provider or options). Heavy imports happen inside the command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from srdeploy.io.imaging import DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION
from srdeploy.runtime import engines, zoo
from srdeploy.runtime.upscaler import DEFAULT_TILE


@click.command("upscale")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False), help="Output folder; input folders are mirrored inside it.")
@click.option("--model", default="default", show_default=True, help=f"{' | '.join(zoo.NAMES)} | PATH.onnx | PATH.engine")
@click.option("--provider", type=click.Choice(engines.PROVIDERS), default="auto", show_default=True, help="Engine: cpu (ONNX Runtime), openvino, cuda, tensorrt; auto = cuda if usable, else the fastest CPU engine for this CPU (printed).")
@click.option("--precision", type=click.Choice(engines.PRECISIONS), default="auto", show_default=True, help="fp32, or bf16 (OpenVINO on CPUs with bf16 units); int8 models (export --int8) run in int8. auto = the fastest within 0.02 dB of fp32.")
@click.option("--tile", type=click.IntRange(min=0), default=DEFAULT_TILE, show_default=True, help="LR tile side in pixels (tiles overlap by the model's receptive radius, so the output equals untiled); 0 = whole image (CPU only).")
@click.option("--format", "fmt", type=click.Choice(["same", "png", "jpg", "webp"]), default="same", show_default=True, help="Output format; alpha and 16-bit inputs are written as PNG when the format cannot hold them.")
@click.option("--quality", type=click.IntRange(1, 100), default=None, help="JPEG/WebP quality [default: 95 JPEG, 90 WebP]; PNG/TIFF/BMP are lossless.")
@click.option("--png-compression", type=click.IntRange(0, 9), default=DEFAULT_PNG_COMPRESSION, show_default=True, help="zlib level of PNG outputs, 0-9: higher is smaller and slower (6 is Pillow's and libpng's default); the pixels are the same.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into subfolders.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs this tool did not make from the same input.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-file lines; failures still go to stderr.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, help="Refuse inputs with more pixels (checked before decoding).")
def upscale(inputs, out_dir, model, provider, precision, tile, fmt, quality, png_compression, recursive, overwrite, quiet, max_pixels):
    """Upscale INPUT images and folders 4x into OUTPUT.

    Every input ends ok, skipped or failed with a reason, also appended to
    OUTPUT/upscale-journal.jsonl. Running the same command again resumes: outputs already
    made from the same input, model and settings are skipped.
    """
    from PIL import Image
    from tqdm import tqdm

    from srdeploy.batch.jobs import Result, Settings
    from srdeploy.batch.run import run_batch
    from srdeploy.io.imaging import ImageError
    from srdeploy.runtime.upscaler import ProviderError, Upscaler
    from srdeploy.runtime.zoo import ModelError

    # Pillow's own bomb guard (89 Mpx) must not undercut a larger --max-pixels.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    try:
        upscaler = Upscaler(model, provider=provider, tile=tile, precision=precision)
    except (ModelError, ProviderError, ImageError, ValueError, ImportError) as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    if not quiet:
        d = upscaler.describe()
        tiling = f"tile {d['tile']} + {d['overlap']} px overlap" if d["tile"] else "untiled"
        picked = f" ({upscaler.note})" if upscaler.note else ""
        click.echo(f"model {d['model']} (sha256 {d['model_sha256'][:12]}), x{d['scale']}, provider {d['provider']} {d['precision']}{picked}, {tiling}", err=True)

    def report(result: Result) -> None:
        arrow = f" -> {result.output}" if result.status == "ok" else ""
        line = f"{result.status:<7} {result.input}{arrow}: {result.reason}"
        if result.status == "failed":
            tqdm.write(line, file=sys.stderr)
        elif not quiet:
            tqdm.write(line, file=sys.stdout)

    settings = Settings(format=fmt, quality=quality, png_compression=png_compression, recursive=recursive, overwrite=overwrite, max_pixels=max_pixels)
    try:
        summary = run_batch(upscaler, list(inputs), out_dir, settings, report=report, progress=not quiet)
    except (ValueError, RuntimeError, OSError) as e:  # OUT unusable (an input, locked, not writable)
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    if not quiet:
        if summary.unentered_dirs:
            click.echo(f"{summary.unentered_dirs} subfolder(s) not searched; add --recursive to include them", err=True)
        click.echo(summary.line(), err=True)
    sys.exit(1 if summary.failed else 0)
