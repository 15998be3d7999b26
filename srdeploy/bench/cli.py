"""``srdeploy bench``: PyTorch eager, every CPU engine x precision on offer (ONNX Runtime,
OpenVINO; fp32, bf16, int8) and the whole upscale pipeline, on the same inputs in one run,
each row's achieved rate against a ceiling measured for its own precision.

What each row measures and how it is timed: srdeploy.bench.measure; the figures and the table:
srdeploy.bench.report. Heavy imports happen inside the command (torch only when the
PyTorch row runs), so ``srdeploy --help`` stays light.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import click

from srdeploy.io.image_guard import DEFAULT_MAX_PIXELS
from srdeploy.runtime import zoo


@click.command("bench")
@click.option("--model", default="default", show_default=True, help=f"{' | '.join(zoo.NAMES)} | PATH.onnx; the PyTorch row needs generator.pt beside it.")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), required=True, help="Folder of HR images, each downscaled x4 (bicubic) to an LR input: your own photos, or the CelebA-HQ test split (docs/data.md).")
@click.option("--images", "limit", type=click.IntRange(min=1), default=None, help="Use only the first N images of --data [default: all].")
@click.option("--large", type=click.IntRange(min=0), default=3, show_default=True, help="How many large inputs to add (the first HR images resized to --large-side).")
@click.option("--large-side", type=click.IntRange(min=1, max=math.isqrt(DEFAULT_MAX_PIXELS)), default=512, show_default=True, help="Side of the large inputs in LR pixels (at most the side of `srdeploy upscale`'s pixel cap).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed passes over each set; the median is reported.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads of every engine [default: the CPUs this process may use].")
@click.option("--tile", type=click.IntRange(min=0), default=None, help="LR tile side for every row, as `srdeploy upscale --tile` [default: the CLI's]; 0 = untiled.")
@click.option("--int8", "int8_paths", type=click.Path(path_type=Path, dir_okay=False), multiple=True, help="int8 model (srdeploy export --int8) for the int8 rows, on both CPU engines; repeatable (e.g. the files for each --int8-engine) [default: model.int8.onnx beside the model, if any].")
@click.option("--peak", "peak_gflops", type=click.FloatRange(min=0, min_open=True), default=None, help="The CPU's peak GFLOP/s [default: estimated from /proc/cpuinfo].")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default=None, help="Also write the results as JSON to this file; '-' = stdout (the table then goes to stderr).")
def bench(model, data, limit, large, large_side, repeats, threads, tile, int8_paths, peak_gflops, json_out):
    """Time the generator in PyTorch eager, on every engine and precision this CPU runs
    (ONNX Runtime, OpenVINO; fp32, bf16, int8) and through the full `srdeploy upscale`
    pipeline, on the same inputs; print images/s, output Mpx/s, GFLOP/s, the share of the
    measured ceiling of each row's precision, and ratios (medians; warm-up excluded)."""
    import onnx

    from srdeploy.bench import measure, report
    from srdeploy.io.files import atomic_write_bytes
    from srdeploy.runtime.contract import validate_onnx_model
    from srdeploy.runtime.cpus import available_cpus
    from srdeploy.runtime.upscaler import DEFAULT_TILE, ModelError, ProviderError
    from srdeploy.runtime.zoo import resolve_model

    to_stdout = str(json_out) == "-"
    problem = None if json_out is None or to_stdout else _unwritable(json_out)
    if problem:  # said before minutes of timing
        click.echo(f"Error: --json {json_out}: {problem}", err=True)
        sys.exit(2)
    echo = (lambda text: click.echo(text, err=True)) if to_stdout else click.echo
    threads = threads or available_cpus()
    tile = DEFAULT_TILE if tile is None else tile
    with tempfile.TemporaryDirectory(prefix="srdeploy-bench-") as tmp:
        workdir = Path(tmp)
        try:
            sets = measure.make_input_sets(data, workdir, limit, large, large_side)
        except (FileNotFoundError, ValueError, OSError) as e:
            click.echo(f"Error: {e}; --data takes a folder of HR images", err=True)
            sys.exit(2)
        try:
            ref = resolve_model(model)
            if ref.kind != "onnx" or (validate_onnx_model(ref.path)["precision"] or "fp32") != "fp32":
                raise ModelError(f"{ref.path}: bench times an fp32 ONNX model on the CPU (give an int8 one with --int8)")
            for int8 in int8_paths:  # asked for by name: a file that cannot give its rows is an error, not a note
                if validate_onnx_model(int8)["precision"] != "int8":
                    raise ModelError(f"{int8}: --int8 takes an int8 model (srdeploy export --int8), and this one is not")
            flops = report.FlopCounter(onnx.load(str(ref.path), load_external_data=False), ref.path)  # each row's share needs them: before timing
            rows, notes, upscaler = measure.build_rows(ref, threads, tile, int8_paths, workdir)
            notes += [f"left out of --data, unreadable: {reason}" for reason in sets[0].left_out]
            if limit is not None and len(sets[0].arrays) < limit:
                notes.append(f"--images {limit}: {data} has {len(sets[0].arrays)} readable image(s), and all of them are timed")
        except (ModelError, ProviderError, ValueError, FileNotFoundError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        machine = report.machine_info(peak_gflops, threads)
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
            try:
                atomic_write_bytes(json_out, text.encode("utf-8"))
            except OSError as e:  # changed since the check above: the table is printed, the file is not written
                click.echo(f"Error: --json {json_out}: cannot write ({e.strerror or e})", err=True)
                sys.exit(1)


def _unwritable(path: Path) -> str | None:
    """Why the JSON report could not be written to ``path``, or None."""
    if not path.parent.is_dir():
        return f"there is no folder {path.parent}"
    if path.exists() and not path.is_file():
        return "it exists and is not a regular file (a device, a pipe, a folder); it is not replaced"
    if not os.access(path.parent, os.W_OK):
        return f"the folder {path.parent} is not writable"
    return None
