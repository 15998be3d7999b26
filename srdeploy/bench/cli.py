"""``srdeploy bench``: PyTorch eager vs ONNX Runtime fp32 (and INT8) vs the whole upscale
pipeline, on the same inputs, with achieved GFLOP/s against the CPU's peak.

What each row measures and how it is timed: srdeploy.bench.measure; the figures and the table:
srdeploy.bench.report. Heavy imports happen inside the command (torch only when the
PyTorch row runs), so ``srdeploy --help`` stays light.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from srdeploy.runtime import zoo


@click.command("bench")
@click.option("--model", default="default", show_default=True, help=f"{' | '.join(zoo.NAMES)} | PATH.onnx; the PyTorch row needs generator.pt beside it.")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), required=True, help="Folder of HR images, each downscaled x4 (bicubic) to an LR input: your own photos, or the CelebA-HQ test split (docs/data.md).")
@click.option("--images", "limit", type=click.IntRange(min=1), default=None, help="Use only the first N images of --data [default: all].")
@click.option("--large", type=click.IntRange(min=0), default=3, show_default=True, help="How many large inputs to add (the first HR images resized to --large-side).")
@click.option("--large-side", type=click.IntRange(min=1), default=512, show_default=True, help="Side of the large inputs in LR pixels.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed passes over each set; the median is reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for PyTorch and ONNX Runtime [default: the CPUs this process may use].")
@click.option("--tile", type=click.IntRange(min=0), default=None, help="LR tile side for every row, as `srdeploy upscale --tile` [default: the CLI's]; 0 = untiled.")
@click.option("--int8", "int8_path", type=click.Path(path_type=Path, dir_okay=False), default=None, help="INT8 model for the ORT INT8 row [default: model.int8.onnx beside the model, if any].")
@click.option("--peak", "peak_gflops", type=click.FloatRange(min=0, min_open=True), default=None, help="The CPU's peak GFLOP/s [default: estimated from /proc/cpuinfo].")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default=None, help="Also write the results as JSON to this file; '-' = stdout (the table then goes to stderr).")
def bench(model, data, limit, large, large_side, repeats, threads, tile, int8_path, peak_gflops, json_out):
    """Time the generator in PyTorch eager, ONNX Runtime fp32 / INT8 and the full
    `srdeploy upscale` pipeline on the same inputs; print images/s, output Mpx/s, GFLOP/s,
    share of the CPU's peak and the ratio to PyTorch (medians; warm-up excluded)."""
    import onnx

    from srdeploy.bench import measure, report
    from srdeploy.io.files import atomic_write_bytes
    from srdeploy.runtime.upscaler import DEFAULT_TILE, ModelError, ProviderError, Upscaler

    to_stdout = str(json_out) == "-"
    echo = (lambda text: click.echo(text, err=True)) if to_stdout else click.echo
    try:
        upscaler = Upscaler(model, provider="cpu", tile=DEFAULT_TILE if tile is None else tile, threads=threads)
        if upscaler.model.kind != "onnx":
            raise ModelError(f"{upscaler.model.path}: bench times ONNX models on the CPU, not TensorRT engines")
    except (ModelError, ProviderError, ValueError, ImportError) as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="srdeploy-bench-") as tmp:
        workdir = Path(tmp)
        try:
            sets = measure.make_input_sets(data, workdir, limit, large, large_side)
        except (FileNotFoundError, ValueError, OSError) as e:
            click.echo(f"Error: {e}; --data takes a folder of HR images", err=True)
            sys.exit(2)
        flops = report.FlopCounter(onnx.load(str(upscaler.model.path), load_external_data=False))
        machine = report.machine_info(peak_gflops)
        rows, notes = measure.build_rows(upscaler, int8_path, workdir)
        machine["load_average_before"] = report.load_average()
        measure.measure(rows, sets, repeats, progress=lambda text: click.echo(f"  {text}", err=True))
        machine["load_average_after"] = report.load_average()
    result = report.summarize(rows, sets, upscaler, flops, machine, repeats, notes)
    for line in report.format_table(result):
        echo(line)
    if json_out is not None:
        text = json.dumps(result, indent=2) + "\n"
        if to_stdout:
            click.echo(text, nl=False)
        else:
            atomic_write_bytes(json_out, text.encode("utf-8"))
