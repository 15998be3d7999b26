"""``srdeploy bench`` results: the JSON record and the printed table.

Each row's GFLOP/s is set against the measured ceiling of its own precision (a large
matrix product in fp32, bf16 or int8 on the same threads: srdeploy.bench.ceilings); the
clock-based fp32 peak (srdeploy.bench.peak) is printed beside them for reference.

GFLOP/s are the *image's* convolution FLOPs (read off the ONNX graph by srdeploy.runtime.graph, at
the image's size) over the median pass time. With tiling the windows compute more than
that (each tile's overlap is computed again by its neighbours); that factor is reported
per input set, and is not counted as useful work.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Any

import numpy as np

from srdeploy.bench import ceilings
from srdeploy.bench import peak as cpu_peak
from srdeploy.bench.measure import InputSet, Row
from srdeploy.runtime import graph, tiling
from srdeploy.runtime.cpus import FLAGS_THAT_MATTER, available_cpus, cpu_info
from srdeploy.runtime.upscaler import Upscaler


class FlopCounter:
    """Conv FLOPs of one model (an onnx.ModelProto) per input size, read off its graph by
    srdeploy.runtime.graph."""

    def __init__(self, model: Any, path: Any = "the model"):
        reach = graph.analyze(model.graph)
        if reach is None:
            raise ValueError(f"{path}: bench cannot count this model's FLOPs (its graph holds ops srdeploy.runtime.graph does not know); "
                             "time it end to end with srdeploy upscale")
        self.reach = reach

    def conv(self, height: int, width: int) -> int:
        return self.reach.conv_flops(height, width)

    def of_image(self, lr: np.ndarray) -> int:
        return self.conv(lr.shape[0], lr.shape[1])

    def of_windows(self, lr: np.ndarray, tile: int | None, overlap: int) -> int:
        """What the tile windows of ``lr`` compute together."""
        return sum(self.conv(r.stop - r.start, c.stop - c.start) for r, c in tiling.plan_tiles(lr.shape[0], lr.shape[1], tile, overlap))


def machine_info(peak_gflops: float | None, threads: int) -> dict[str, Any]:
    """The CPU and the flags that matter, its fp32 peak (given, else estimated from the
    clock) with the method, and the ceiling of each precision measured now."""
    estimate = cpu_peak.estimate_peak(threads)  # the rows' threads, as the ceilings below
    cpu = cpu_info()
    if peak_gflops:
        peak, method = peak_gflops, f"{peak_gflops:.0f} GFLOP/s (given with --peak)"
    elif estimate:
        peak, method = estimate.gflops, estimate.method()
    else:
        peak, method = None, "unknown (no clock in /proc/cpuinfo; pass --peak)"
    return {
        "cpu": cpu.model_name, "cpu_flags": [f for f in FLAGS_THAT_MATTER if f in cpu.flags], "cpus_usable": available_cpus(),
        "peak_gflop_per_s": peak, "peak_method": method,
        "ceilings": ceilings.measure(threads),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def summarize(rows: list[Row], sets: list[InputSet], upscaler: Upscaler, flops: FlopCounter, machine: dict[str, Any],
              repeats: int, notes: list[str]) -> dict[str, Any]:
    """Everything the table shows, as one JSON-able dict."""
    from srdeploy.runtime import openvino_engine

    versions = {}
    try:  # an install may run on OpenVINO alone
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if openvino_engine.available():
        versions["openvino"] = openvino_engine.version()
    if "torch" in sys.modules:  # only when the PyTorch row ran
        versions["torch"] = sys.modules["torch"].__version__
    first = sets[0].arrays[0]
    first_flops = flops.of_image(first)
    per_set = []
    for inputs in sets:
        image = sum(flops.of_image(a) for a in inputs.arrays)
        windows = sum(flops.of_windows(a, upscaler.tile, upscaler.overlap) for a in inputs.arrays)
        per_set.append({"set": inputs.name, "images": len(inputs.arrays), "gflop_per_image": image / len(inputs.arrays) / 1e9,
                        "tile_recompute": windows / image})
    return {
        "model": {"name": upscaler.model.name, "path": str(upscaler.model.path), "sha256": upscaler.model.sha256, "scale": upscaler.scale},
        "settings": {"threads": upscaler.threads, "tile": upscaler.tile or 0, "overlap": upscaler.overlap, "repeats": repeats,
                     "auto": f"{upscaler.provider} {upscaler.precision}", "auto_why": upscaler.engine_why},
        "machine": {**machine, **versions},
        "flops": {
            "counted": "Conv only, from the ONNX graph: 2 * Cin/groups * kH * kW * Cout * Hout * Wout per image",
            "first_input": f"{first.shape[0]}x{first.shape[1]}", "gflop": first_flops / 1e9,
            "kflop_per_output_pixel": first_flops / (first.shape[0] * first.shape[1] * upscaler.scale**2) / 1e3,
        },
        "sets": per_set,
        "rows": _row_records(rows, sets, flops, machine, upscaler.scale),
        "notes": notes,
    }


def _row_records(rows: list[Row], sets: list[InputSet], flops: FlopCounter, machine: dict[str, Any], scale: int) -> list[dict[str, Any]]:
    """One record per (set, row): rates, GFLOP/s, its share of the row's precision's
    ceiling (and of the fp32 clock peak), ratios to ORT fp32 and to PyTorch, and the
    largest difference of the row's first output from PyTorch's."""
    reference = next((r for r in rows if r.key == "torch"), None)
    ort_fp32 = next((r for r in rows if r.key == "ort_fp32"), None)
    peak = machine["peak_gflop_per_s"]
    ceiling = {precision: c["gflop_per_s"] for precision, c in machine["ceilings"].items()}
    records = []
    for inputs in sets:
        image_flops = sum(flops.of_image(a) for a in inputs.arrays)
        out_mpx = inputs.lr_pixels * scale * scale / 1e6
        torch_seconds = _median(reference, inputs.name) if reference else None
        ort_seconds = _median(ort_fp32, inputs.name) if ort_fp32 else None
        for row in rows:
            seconds = _median(row, inputs.name)
            if seconds is None:
                continue
            gflops = image_flops / seconds / 1e9
            diff = None
            if reference is not None and row is not reference and inputs.name in row.first_output:
                diff = float(np.abs(row.first_output[inputs.name] - reference.first_output[inputs.name]).max())
            records.append({
                "set": inputs.name, "row": row.key, "label": row.label, "images": len(inputs.arrays),
                "seconds_per_pass": seconds, "passes": row.seconds[inputs.name],
                "images_per_s": len(inputs.arrays) / seconds, "output_mpx_per_s": out_mpx / seconds,
                "precision": row.precision, "gflop_per_s": gflops,
                "ceiling_share": gflops / ceiling[row.precision] if ceiling.get(row.precision) else None,
                "peak_share": gflops / peak if peak else None,
                "vs_ort_fp32": ort_seconds / seconds if ort_seconds else None,
                "vs_torch": torch_seconds / seconds if torch_seconds else None, "max_abs_diff_vs_torch": diff,
            })
    return records


def _median(row: Row, set_name: str) -> float | None:
    times = row.seconds.get(set_name)
    return statistics.median(times) if times else None


def format_table(result: dict[str, Any]) -> list[str]:
    s, machine, fl = result["settings"], result["machine"], result["flops"]
    tiles = f"tile {s['tile']} (+{s['overlap']} px overlap)" if s["tile"] else "untiled"
    ceil = "; ".join(f"{k} {c['gflop_per_s']:.0f} ({', '.join(f'{by} {v:.0f}' for by, v in c['by'].items())})"
                     if c["gflop_per_s"] is not None else f"{k} - (not on this CPU)" for k, c in machine["ceilings"].items())
    lines = [
        f"model {result['model']['name']} (sha256 {result['model']['sha256'][:12]}), x{result['model']['scale']}; "
        f"{s['threads']} threads; {tiles}; median of {s['repeats']} passes after a warm-up",
        f"CPU {machine['cpu']}; flags: {' '.join(machine['cpu_flags']) or 'none that matter'}; {machine['cpus_usable']} CPUs usable",
        f"srdeploy upscale picks here: {s['auto']} ({s['auto_why']})",
        f"ceilings measured now, best {ceilings.SIDE}^3 matrix product (GFLOP/s; GOP/s for int8): {ceil}",
        f"fp32 clock peak: {machine['peak_method']}",
        f"FLOPs ({fl['counted']}): {fl['gflop']:.2f} GFLOP per {fl['first_input']} input, {fl['kflop_per_output_pixel']:.1f} kFLOP per output pixel",
    ]
    for item in result["sets"]:
        if item["tile_recompute"] > 1.0005:
            lines.append(f"{item['set']}: the tile windows compute {item['tile_recompute']:.2f}x the image's FLOPs; GFLOP/s counts the image's")
    width = max(24, *(len(r["label"]) for r in result["rows"]))
    header = (f"{'inputs':<14} {'row':<{width}} {'images/s':>9} {'out Mpx/s':>10} {'GFLOP/s':>8} {'% ceil':>7} "
              f"{'vs ORT fp32':>11} {'vs PyTorch':>10} {'max|diff|':>9}")
    lines += ["", header, "-" * len(header)]
    previous = None

    def shown(value: float | None, text: str) -> str:
        return "-" if value is None else text.format(value)

    for r in result["rows"]:
        name, previous = ("" if r["set"] == previous else r["set"]), r["set"]
        lines.append(
            f"{name:<14} {r['label']:<{width}} {r['images_per_s']:>9.3f} {r['output_mpx_per_s']:>10.3f} {r['gflop_per_s']:>8.1f} "
            f"{shown(r['ceiling_share'] and 100 * r['ceiling_share'], '{:.1f}'):>7} {shown(r['vs_ort_fp32'], '{:.2f}x'):>11} "
            f"{shown(r['vs_torch'], '{:.2f}x'):>10} {shown(r['max_abs_diff_vs_torch'], '{:.1e}'):>9}"
        )
    lines.append("")
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"load average before {machine['load_average_before']}, after {machine['load_average_after']} (1/5/15 min)")
    return lines
