"""Runtime benchmark for `srdeploy upscale` on this machine's CPU (not a test).

    python benchmarks/upscale_bench.py [--threads N] [--parts throughput,tiling,rss]

Measures, for one seeded B=8, 64-channel SRResNet generator (the seed's architecture;
random weights: speed and memory do not depend on the values):

1. ONNX Runtime (through the Upscaler, untiled) vs PyTorch eager (channels_last), batch 1,
   the same thread count, at 64x64 and 256x256 inputs: images/s and output Mpx/s, and
   their ratio. `srdeploy bench` does this on real faces, with the whole pipeline too.
2. The tiling overhead: a 512x512 input untiled and at tiles 128, 192 and 256 (``--tiles``):
   median seconds, the FLOPs the windows recompute, the largest difference from the
   untiled output, and the peak RSS of a fresh `srdeploy upscale` of that one image.
3. The peak RSS of `srdeploy upscale` turning a 2048x2048 PNG into its 8192x8192 PNG
   through the tiled path (a fresh process; its VmHWM), and how long it takes.

Needs the `export` extra (torch) to build the model. Timings on a shared CPU are noisy:
the load average before and after is printed with the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import finish, print_rows  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]


def build_model(folder: Path, blocks: int, channels: int):
    import torch

    from srdeploy.export.onnx_export import export_onnx
    from srdeploy.training.models import Generator

    torch.manual_seed(0)
    generator = Generator(num_blocks=blocks, channels=channels, scale=4).eval()
    path = export_onnx(generator, folder / "generator_b8.onnx")
    return generator, path


def timed(fn, repeats: int, min_seconds: float = 2.0) -> float:
    """Median seconds per call after one warm-up call; at least ``repeats`` calls."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def throughput(generator, onnx_path: Path, threads: int, repeats: int) -> list[dict]:
    import onnx
    import torch

    from srdeploy.runtime import graph
    from srdeploy.runtime.upscaler import Upscaler

    flop_per_lr_pixel = graph.analyze(onnx.load(str(onnx_path)).graph).conv_flop_per_lr_pixel  # of the model built (--blocks, --channels)
    torch.set_num_threads(threads)
    generator = generator.to(memory_format=torch.channels_last)  # oneDNN's fast layout, as `srdeploy bench` runs it
    ort_upscaler = Upscaler(onnx_path, provider="cpu", tile=0, threads=threads)
    rows = []
    for side in (64, 256):
        lr = np.random.default_rng(side).random((side, side, 3), dtype=np.float32)
        lr_t = torch.from_numpy(lr.transpose(2, 0, 1)[None].copy()).contiguous(memory_format=torch.channels_last)

        def eager():
            with torch.inference_mode():
                generator(lr_t)

        seconds = {"onnxruntime": timed(lambda: ort_upscaler.upscale_array(lr), repeats), "torch_eager": timed(eager, repeats)}
        out_mpx = (4 * side) ** 2 / 1e6
        for runtime, s in seconds.items():
            rows.append({
                "input": f"{side}x{side}", "runtime": runtime, "seconds_per_image": round(s, 4),
                "images_per_s": round(1 / s, 3), "output_mpx_per_s": round(out_mpx / s, 3),
                "gflop_per_s": round(flop_per_lr_pixel * side * side / s / 1e9, 1),
            })
        rows.append({"input": f"{side}x{side}", "runtime": "ratio onnxruntime/torch", "speedup": round(seconds["torch_eager"] / seconds["onnxruntime"], 2)})
    return rows


def tiling_overhead(onnx_path: Path, threads: int, repeats: int, tiles: list[int], folder: Path) -> list[dict]:
    """A 512x512 input through the Upscaler at each tile (0 = untiled), rounds interleaved;
    the median seconds, the FLOPs the windows recompute, the largest difference from the
    untiled output, and the peak RSS of a fresh process upscaling that one image."""
    import onnx

    from srdeploy.bench.report import FlopCounter
    from srdeploy.runtime.tiling import plan_tiles
    from srdeploy.runtime.upscaler import Upscaler

    side = 512
    lr = np.random.default_rng(side).random((side, side, 3), dtype=np.float32)
    flops = FlopCounter(onnx.load(str(onnx_path)))
    image_flops = flops.of_image(lr)
    upscalers = {tile: Upscaler(onnx_path, provider="cpu", tile=tile, threads=threads) for tile in tiles}
    outputs = {tile: up.upscale_array(lr) for tile, up in upscalers.items()}  # also the warm-up
    seconds: dict[int, list[float]] = {tile: [] for tile in tiles}
    for _ in range(repeats):
        for tile, up in upscalers.items():
            t0 = time.perf_counter()
            up.upscale_array(lr)
            seconds[tile].append(time.perf_counter() - t0)
    reference = outputs[0] if 0 in outputs else None
    rows = []
    for tile, up in upscalers.items():
        windows = plan_tiles(side, side, up.tile, up.overlap)
        window_flops = flops.of_windows(lr, up.tile, up.overlap)
        s = float(np.median(seconds[tile]))
        rows.append({
            "tile": tile or "untiled", "window": windows[0][0].stop - windows[0][0].start, "windows": len(windows),
            "recompute": round(window_flops / image_flops, 2), "seconds": round(s, 2),
            "vs_untiled": round(s / float(np.median(seconds[0])), 2) if 0 in seconds else None,
            "max_abs_diff_vs_untiled": None if reference is None else float(np.abs(outputs[tile] - reference).max()),
            "peak_rss_mib_one_image": peak_rss(onnx_path, side, tile, folder, threads)["peak_rss_mib"],
        })
    return rows


# Runs the CLI and reports the peak RSS of that process image. VmHWM, not ru_maxrss: Linux
# carries ru_maxrss across fork and exec, so a child of this (torch-laden) process would
# report this process's size instead of its own.
_CLI_WITH_PEAK = """
import sys
from srdeploy.cli import main
try:
    main(sys.argv[1:])
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("PEAK", hwm.split()[1], file=sys.stderr)
"""


def peak_rss(onnx_path: Path, side: int, tile: int | None, folder: Path, threads: int | None = None) -> dict:
    """Run `srdeploy upscale` in a fresh process on a side x side PNG; its peak RSS.
    ``threads`` pins the process to that many CPUs (the runtime uses the CPUs it may run on)."""
    from PIL import Image
    from skimage import data

    source = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.BICUBIC)
    src = folder / f"input_{side}.png"
    source.save(src)
    out = folder / f"out_{side}_{tile}"
    cmd = [sys.executable, "-c", _CLI_WITH_PEAK, "upscale", str(src), "-o", str(out), "--model", str(onnx_path), "--provider", "cpu", "--quiet", "--overwrite"]
    if tile is not None:
        cmd += ["--tile", str(tile)]
    cpus = sorted(os.sched_getaffinity(0))[:threads] if threads else None
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = [line for line in run.stderr.splitlines() if line.startswith("PEAK ")]
    if run.returncode != 0 or not peak:
        raise RuntimeError(f"upscale failed ({run.returncode}): {run.stderr}")
    with Image.open(out / src.name) as result:
        size = result.size
    return {
        "input": f"{side}x{side}", "output": f"{size[0]}x{size[1]}", "tile": "default" if tile is None else tile or "untiled",
        "threads": len(cpus) if cpus else len(os.sched_getaffinity(0)), "seconds": round(seconds, 1),
        "peak_rss_mib": round(int(peak[0].split()[1]) / 1024, 1), "output_png_mib": round((out / src.name).stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rss-side", type=int, default=2048)
    parser.add_argument("--rss-tile", type=int, default=None, help="tile for the RSS run (default: the CLI's)")
    parser.add_argument("--tiles", default="0,128,192,256", help="tiles for the 512x512 tiling part (0 = untiled)")
    parser.add_argument("--parts", default="throughput,tiling,rss", help="comma-separated subset of throughput,tiling,rss")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import onnxruntime
    import torch

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "threads_used": args.threads, "load_avg_before": os.getloadavg(),
                    "onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "model": f"SRResNet generator B={args.blocks}, C={args.channels}, x4 (random weights), batch 1",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        generator, onnx_path = build_model(folder, args.blocks, args.channels)
        parts = set(args.parts.split(","))
        if "throughput" in parts:
            results["throughput"] = throughput(generator, onnx_path, args.threads, args.repeats)
            print_rows("ORT vs PyTorch eager", results["throughput"])
        if "tiling" in parts:
            tiles = [int(t) for t in args.tiles.split(",")]
            results["tiling_512"] = tiling_overhead(onnx_path, args.threads, args.repeats, tiles, folder)
            print_rows("Tiling overhead, 512x512 input", results["tiling_512"])
        if "rss" in parts:
            results["rss"] = peak_rss(onnx_path, args.rss_side, args.rss_tile, folder, args.threads)
            print_rows("Peak RSS, tiled CLI path", [results["rss"]])
    finish(results, args.json)


if __name__ == "__main__":
    main()
