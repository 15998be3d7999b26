"""The ``srdeploy evaluate`` command and its report files.

Writes into OUTDIR: results.md (the table with the protocol and degradation stated),
results.csv (one row per model), per_image.csv (one row per image and model) and
comparison.png (LR | bicubic | each model | HR, each panel with its PSNR-Y and HF ratio).
Imports neither torch nor matplotlib at module level: ``srdeploy --help`` must stay
instant.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from srdeploy.io.files import atomic_write_bytes, make_folder
from srdeploy.io.folders import output_inside_images
from srdeploy.quality.metrics import BORDER, protocol
from srdeploy.quality.degrade import DOWNSAMPLE_METHODS
from srdeploy.runtime import engines, zoo
from srdeploy.evaluation.evaluate import METRICS, Evaluation

COLUMNS = {"psnr_y": ("PSNR-Y (dB)", 2), "ssim_y": ("SSIM-Y", 4), "psnr_rgb": ("PSNR-RGB (dB)", 2), "hf_ratio": ("HF ratio", 3)}


def _fmt(value: float, digits: int, signed: bool = False) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def results_markdown(result: Evaluation, data: str, sources: dict[str, str]) -> str:
    table = result.table()
    header = ["model"] + [COLUMNS[m][0] for m in METRICS] + [f"Δ {COLUMNS[m][0]}" for m in METRICS]
    lines = [
        f"# srdeploy evaluate: {data}",
        "",
        f"{result.image_count} image{'s' if result.image_count != 1 else ''} from `{data}`; {result.degradation}"
        + (f"; {result.cropped} HR images cropped to a multiple of 4" if result.cropped else "")
        + (f"; {len(result.left_out)} left out (listed below)" if result.left_out else "")
        + ".",
        f"Protocol: {protocol(result.border)}. Higher is better for PSNR and SSIM; "
        "the HF ratio is the luma's Laplacian energy in SR over HR's on the same crop (HR's fine detail = 1; "
        "above 1 is more than HR has). Δ = change from the bicubic row.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in table:
        values = [_fmt(row[m], COLUMNS[m][1]) for m in METRICS]
        if row["model"] == table[0]["model"]:
            gains = ["—"] * len(METRICS)
        else:
            gains = [_fmt(row[f"gain_{m}"], COLUMNS[m][1], signed=True) for m in METRICS]
        lines.append("| " + " | ".join([row["model"], *values, *gains]) + " |")
    if result.left_out:
        lines += ["", "Left out:", "", *(f"- {reason}" for reason in result.left_out)]
    lines += ["", "Models (time per image includes pre/post-processing):", ""]
    for row in table:
        source = sources.get(row["model"], "PIL bicubic x4 upscale of the LR input")
        lines.append(f"- {row['model']}: {source}; {row['seconds_per_image'] * 1000:.1f} ms/image")
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def results_csv(result: Evaluation) -> str:
    fields = ["model", *METRICS, *(f"gain_{m}" for m in METRICS), "seconds_per_image"]
    rows = [{**r, "images": result.image_count} for r in result.table()]
    return _csv_text(rows, fields + ["images"])


def per_image_csv(result: Evaluation) -> str:
    return _csv_text(result.per_image, ["image", "model", *METRICS, "seconds"])


def write_report(result: Evaluation, out_dir: Path, data: str, sources: dict[str, str]) -> dict[str, Path]:
    """results.md, the CSVs and the figure in ``out_dir``; an OSError names the folder."""
    try:
        return _write_report(result, out_dir, data, sources)
    except OSError as e:  # not a temp file's name
        raise OSError(f"cannot write the results into {out_dir} ({e.strerror or e})") from None


def _write_report(result: Evaluation, out_dir: Path, data: str, sources: dict[str, str]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every text made before any is written. An image name that is not UTF-8 keeps its own
    # bytes (surrogateescape), so per_image.csv names the file as it is on disk.
    texts = {
        "results.md": results_markdown(result, data, sources),
        "results.csv": results_csv(result),
        "per_image.csv": per_image_csv(result),
    }
    written = {name: atomic_write_bytes(out_dir / name, text.encode("utf-8", "surrogateescape")) for name, text in texts.items()}
    if result.figure_rows:
        from srdeploy.training.figures import save_image_grid

        title = f"x4 super-resolution; PSNR-Y and HF ratio, {result.border}-px border; {result.degradation}"
        written["comparison.png"] = save_image_grid(result.figure_rows, out_dir / "comparison.png", suptitle=title)
    else:  # an earlier run's figure would sit beside results it does not show
        (out_dir / "comparison.png").unlink(missing_ok=True)
    return written


def _refuse_engine_options_no_model_uses(models: tuple[str, ...]) -> None:
    """A usage error for --provider or --precision given with no ONNX model or shipped name
    to run (a .pt runs in PyTorch: bf16 asked of it would be fp32 quietly), and for
    --device given with no .pt."""
    from srdeploy.evaluation.evaluate import is_runtime_model

    ctx = click.get_current_context()
    runtime = [m for m in models if is_runtime_model(m)]
    for option in ("provider", "precision"):
        if ctx.get_parameter_source(option) is ParameterSource.COMMANDLINE and not runtime:
            ran = "no --model is given" if not models else ".pt checkpoints run in PyTorch, on --device"
            raise click.UsageError(f"--{option} is for ONNX models and shipped names, and {ran}")
    if ctx.get_parameter_source("device") is ParameterSource.COMMANDLINE and len(runtime) == len(models):
        raise click.UsageError("--device is for .pt checkpoints (PyTorch); ONNX models and shipped names run on --provider")


@click.command("evaluate")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of HR images (recursive), e.g. ../shared/data/celeba_hq_256/test.")
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate only the images named here (one per line, extension optional).")
@click.option("--lr-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Precomputed LR images with the HR names (e.g. Set5/LR_bicubic_x4) instead of downscaling.")
@click.option("--model", "models", multiple=True,
              help=f"A .pt checkpoint/state_dict, an .onnx file, or {'|'.join(zoo.NAMES)}. Repeatable.")
@click.option("--name", "names", multiple=True, help="Row name for each --model, in order (default: file stem).")
@click.option("--downsample", type=click.Choice(list(DOWNSAMPLE_METHODS)), default=None,
              help="How LR is made from HR (default bicubic, antialiased; bilinear = the seed's recipe).")
@click.option("--border", type=click.IntRange(min=0), default=BORDER, show_default=True,
              help="Pixels removed on each side before measuring.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--figure-count", type=click.IntRange(min=0), default=4, show_default=True,
              help="Images in comparison.png (0: no figure).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for results.md, results.csv, per_image.csv and comparison.png.")
@click.option("--provider", type=click.Choice(engines.PROVIDERS), default="auto", show_default=True,
              help="Engine for ONNX models and shipped names, as `srdeploy upscale --provider`.")
@click.option("--precision", type=click.Choice(engines.PRECISIONS), default="auto", show_default=True,
              help="As `srdeploy upscale --precision` (checks e.g. bf16 against fp32 on the same images).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where .pt checkpoints run (PyTorch).")
def evaluate(data_dir, list_file, lr_dir, models, names, downsample, border, limit, figure_count, out_dir, provider, precision, device):
    """PSNR-Y / SSIM-Y / RGB PSNR and HF ratio of bicubic and each model on a folder of HR images."""
    import skimage.metrics  # noqa: F401 (SSIM, in the eval extra: a missing one is said before any work)

    from srdeploy.evaluation.evaluate import check_model_names, default_model_names, find_test_images, load_model
    from srdeploy.evaluation.evaluate import evaluate as run_evaluation

    if names and len(names) != len(models):
        raise click.UsageError(f"got {len(names)} --name for {len(models)} --model; give one per model or none")
    if lr_dir is not None and downsample is not None:
        raise click.UsageError("--downsample has no effect with --lr-dir (the LR images are given); drop one")
    _refuse_engine_options_no_model_uses(models)
    inside = output_inside_images(out_dir, {"--data": data_dir})
    if inside:
        raise click.UsageError(f"-o {inside}")
    try:  # now, not after minutes of scoring: a typo in -o must not cost the results
        made = make_folder(out_dir)
    except OSError as e:
        raise click.UsageError(f"-o {out_dir}: cannot create this folder ({e.strerror or e})") from None
    try:
        try:  # the images and the models: what is refused here ran nothing (exit 2)
            images = find_test_images(data_dir, list_file, lr_dir, limit)
            names = names or default_model_names(models)
            check_model_names(names)  # before minutes of loading models
            loaded = [load_model(spec, name, device, provider, precision) for spec, name in zip(models, names)]
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        try:
            result = run_evaluation(images, loaded, downsample or "bicubic", border, figure_count, progress=True)
            written = write_report(result, out_dir, str(data_dir), {m.name: m.source for m in loaded})
        except (OSError, ValueError, RuntimeError) as e:
            raise click.ClickException(str(e)) from None
    finally:
        if made and not any(out_dir.iterdir()):
            out_dir.rmdir()  # made for this run, which wrote nothing
    click.echo(written["results.md"].read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(str(p) for p in written.values()))
