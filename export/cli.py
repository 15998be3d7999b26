"""``srdeploy export CKPT -o DIR [--fp16] [--int8 --calibration DIR] [--tensorrt] [--opset N] [--check]``.

torch and onnx are imported inside the command, so ``srdeploy --help`` stays instant.
Exit status: 0 when everything asked for was written (and passed ``--check``), 1 with a
message naming the file and the reason otherwise.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from srdeploy.export import parity
from srdeploy.export.calibration import CHECK_IMAGES
from srdeploy.export.pipeline import InputsRefused, Int8Request
from srdeploy.io.files import make_folder
from srdeploy.runtime import contract, tensorrt, zoo
from srdeploy.runtime.upscaler import DEFAULT_TILE

HELP = f"""Export a training checkpoint (or bare generator state_dict) CHECKPOINT to ONNX
(and TensorRT), with manifest.json and optional parity checks.

Parity inputs: generated gradients, noise, edges, a checkerboard and black/white
frames at 37x53 LR in batches of 4 and 2. Bounds: ONNX Runtime fp32 vs torch max abs
error <= {parity.FP32_LIMITS.max_abs:g} on the [0,1] scale; fp16 artifacts vs ONNX Runtime fp32 PSNR >= {parity.FP16_LIMITS.min_psnr:g} dB;
no NaN/Inf and no output collapsed to flat black/white. The int8 model is always
checked against model.onnx on {CHECK_IMAGES} natural images from the calibration folder (held
out when it has more than --calibration-limit): PSNR-Y >= {parity.INT8_MIN_PSNR_Y:g} dB on each, or exit 1.
"""


@click.command("export", help=HELP)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for model.onnx, the other artifacts and manifest.json.")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx: fp16 weights and compute, float32 inputs/outputs.")
@click.option("--int8", is_flag=True, help="Also write model.int8.onnx: QDQ, per-channel int8 weights, calibrated on --calibration, for the engine --int8-engine names; float32 inputs/outputs.")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="With --int8: folder of HR images (e.g. CelebA-HQ val faces); its centre square is resized to 256x256 and degraded (bicubic x4) to a 64x64 LR input.")
@click.option("--int8-engine", type=click.Choice(contract.INT8_ENGINES), default=Int8Request.engine, show_default=True, help="With --int8: the engine the int8 model is made for, and that `srdeploy upscale` runs it on: cpu = ONNX Runtime (its static quantiser), openvino = OpenVINO (NNCF's post-training quantisation; the faster one on CPUs with VNNI/AMX).")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=Int8Request.limit, show_default=True, help=f"With --int8: calibration images used (the first, sorted by path); the next {CHECK_IMAGES} check the int8 quality.")
@click.option("--tensorrt", is_flag=True, help="Also build TensorRT engines (model.fp32.engine, model.fp16.engine with --fp16); needs tensorrt and a CUDA GPU.")
@click.option("--opset", type=click.IntRange(min=17), default=None, help=f"ONNX opset (default {contract.DEFAULT_OPSET}, the exporter's native one).")
@click.option("--check", is_flag=True, help="Compare every artifact with the PyTorch generator and print the parity table; exit 1 on a failed bound.")
@click.option("--weights", type=click.Choice(["auto", "ema", "raw"]), default="auto", show_default=True, help="Which generator weights of a training checkpoint: the EMA ones (auto: when present) or the raw trained ones.")
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None, help="Folder of images (e.g. examples/) added to the parity inputs: up to 4, centre square at 64x64 LR.")
@click.option("--tile", type=click.IntRange(min=8), default=tensorrt.PROFILE_TILE, show_default=True, help=f"TensorRT profile: the LR tile size the engine is built for (srdeploy upscale reads it back from the engine; the CPU default tile is {DEFAULT_TILE}).")
@click.option("--overlap", type=click.IntRange(min=0), default=None, help="TensorRT profile: LR halo on each tile side (default: the generator's receptive radius, which srdeploy upscale tiles with).")
@click.option("--max-batch", type=click.IntRange(min=1), default=tensorrt.PROFILE_MAX_BATCH, show_default=True, help="TensorRT profile: most tiles per engine call.")
@click.option("--force", is_flag=True, help="Replace an earlier export in -o (its artifacts are removed first, so a re-export stopped midway leaves none of them).")
def export(checkpoint: Path, out_dir: Path, fp16: bool, int8: bool, calibration: Path | None, int8_engine: str, calibration_limit: int, tensorrt: bool, opset: int | None, check: bool, weights: str, images: Path | None, tile: int, overlap: int | None, max_batch: int, force: bool) -> None:
    if int8 and calibration is None:
        raise click.UsageError("--int8 needs --calibration DIR: a folder of HR images to calibrate the activation ranges on")
    _refuse_unused_options({"int8": int8, "tensorrt": tensorrt, "check": check or int8})
    if int8 and int8_engine == "openvino":
        from srdeploy.export.int8 import NNCF_MISSING

        try:
            import nncf  # noqa: F401 (before anything is written; the quantiser imports it again)
        except ImportError:
            raise click.UsageError(NNCF_MISSING) from None
    from srdeploy.export.pipeline import export_artifacts, load_export_generator
    from srdeploy.runtime.manifest import MANIFEST_NAME, read_manifest

    if (out_dir / MANIFEST_NAME).exists() and not force:
        raise click.UsageError(f"-o {out_dir} holds an earlier export ({MANIFEST_NAME}); --force replaces it")
    from srdeploy.runtime.tensorrt import TensorRTUnavailable, TileProfile

    if opset is not None:
        import onnx

        if opset > onnx.defs.onnx_opset_version():  # the exporter would fall back to its own opset
            raise click.UsageError(f"--opset {opset}: the installed onnx {onnx.__version__} knows opsets up to {onnx.defs.onnx_opset_version()}")
    if not checkpoint.exists() and str(checkpoint) in zoo.NAMES:  # a shipped model: its generator.pt
        try:
            checkpoint = zoo.resolve_model(str(checkpoint)).path.parent / zoo.GENERATOR_FILE
        except zoo.ModelError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
    try:
        generator, meta = load_export_generator(checkpoint, weights)
    except (FileNotFoundError, ValueError) as e:  # refused before anything is written: exit 2, as a usage error
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    profile = TileProfile.for_tiles(tile=tile, overlap=generator.receptive_radius if overlap is None else overlap, max_batch=max_batch)
    try:  # now, not after the export's minutes: -o under a file, a link loop, a read-only parent
        made = make_folder(out_dir)
    except OSError as e:
        raise click.UsageError(f"-o {out_dir}: cannot create this folder ({e.strerror or e})") from None
    click.echo(f"{checkpoint}: {meta['weights']} weights, generator {generator.arch()} -> {out_dir}")
    try:
        result = export_artifacts(
            generator,
            out_dir,
            meta=meta,
            source=checkpoint,
            fp16=fp16,
            int8=Int8Request(calibration, calibration_limit, int8_engine) if int8 else None,
            tensorrt=tensorrt,
            opset=opset,
            check=check,
            profile=profile,
            images_dir=images,
        )
    except InputsRefused as e:  # nothing written yet: a refusal, as a bad option
        _remove_if_made(out_dir, made)
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except TensorRTUnavailable as e:
        written = ", ".join(sorted(read_manifest(out_dir)["files"]))
        raise click.ClickException(f"--tensorrt: {e}\nThe ONNX outputs are written ({written} in {out_dir}); no engines were built.") from None
    except (ValueError, RuntimeError) as e:  # a build or parity step refused; the message names the file
        _remove_if_made(out_dir, made)
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a full disk, a folder made read-only mid-export
        _remove_if_made(out_dir, made)
        raise click.ClickException(f"cannot write the export into {out_dir}: {e.filename or out_dir} ({e.strerror or e})") from None
    except BaseException:  # Ctrl-C: a folder this run made holds no half of an export
        _remove_if_made(out_dir, made)
        raise

    if result.removed:
        click.echo(f"  removed artifacts of an earlier export: {', '.join(result.removed)}")
    files = read_manifest(out_dir)["files"]
    for name, entry in files.items():
        click.echo(f"  {name:<26} {entry['bytes'] / 2**20:8.2f} MiB  sha256 {entry['sha256'][:16]}")
    click.echo("  time: " + ", ".join(f"{step} {sec:.1f}s" for step, sec in result.seconds.items()))
    if zoo.INT8_FILE in result.models:
        click.echo(_int8_summary(result.models[zoo.INT8_FILE]))
    if result.parity:
        from srdeploy.export.parity import format_table

        click.echo(f"\nParity on the [0,1] output scale; LR inputs (N x C x H x W): {', '.join(result.parity_inputs)}")
        click.echo(format_table(result.parity))
    if result.failures:
        raise click.ClickException("parity check failed:\n  " + "\n  ".join(result.failures))


def _int8_summary(entry: dict) -> str:
    cal, quality = entry["calibration"], entry["parity"]
    natural = quality["natural_images"]
    kept = ", ".join(f"{k['node']} ({k['op']})" for k in entry["quantization"]["fp32_nodes"])
    where = "held out from calibration" if natural["held_out"] else "in-sample: the folder has no images beyond the calibration ones"
    return (
        f"\nint8: calibrated on {cal['images']} images of {cal['folder']} ({cal['method']}); kept fp32: {kept}\n"
        f"  on {quality['engine']} vs model.onnx: PSNR-Y {natural['psnr_y_db_mean']:.2f} dB mean, {natural['psnr_y_db_min']:.2f} dB worst on "
        f"{len(natural['images'])} images ({where}; bound >= {natural['min_psnr_y_db']:g} dB); "
        f"PSNR {quality['parity_inputs']['psnr_db']:.2f} dB on the parity inputs ([0,1] output)"
    )


# Options that do something only beside another: given without it, they would be ignored.
_USED_WITH = {
    "calibration": "int8", "int8_engine": "int8", "calibration_limit": "int8",
    "tile": "tensorrt", "overlap": "tensorrt", "max_batch": "tensorrt",
    "images": "check",  # the parity inputs: --check and the int8 quality check read them
}


def _refuse_unused_options(given: dict[str, bool]) -> None:
    """A usage error for an option given on the command line without the one it serves."""
    ctx = click.get_current_context()
    for name, needs in _USED_WITH.items():
        if not given[needs] and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            also = " or --int8" if name == "images" else ""
            raise click.UsageError(f"--{name.replace('_', '-')} is used only with --{needs}{also}")


def _remove_if_made(out_dir: Path, made: bool) -> None:
    """Remove -o when this run created it: what it holds is an export that did not finish."""
    if made:
        shutil.rmtree(out_dir, ignore_errors=True)
