"""`srdeploy upscale` end to end against the bare model, on 64x64 faces (not a test).

    python benchmarks/pipeline_bench.py [--count 100] [--repeats 3] [--before REV]
        [--variants bare,before,after] [--parts encode,busy,throughput]

Inputs: the CelebA-HQ test faces (../shared/data/celeba_hq_256/test) downscaled to 64x64
with srdeploy.quality.degrade.downscale (bicubic, antialiased), written as PNGs to a temp folder.
Model: the shipped default (SRResNet B=8), CPU provider, default threads and tile.

- ``encode``: per image, the model time (Upscaler.upscale_array, the engine ``auto`` picks)
  against the PNG encode time of its 256x256 output at each level, srdeploy's writer
  against Pillow's, with the output sizes.
- ``busy``: in-process, the share of run_batch's wall time the model is running, one
  input at a time vs pipelined (see model_busy_share).
- ``throughput``: each variant runs in a fresh subprocess, one after the other, repeated;
  medians are reported, with the 1-minute load average seen before each run (the machine
  is shared, so read the ratios).
  * ``bare``: Upscaler.upscale_array on the pre-decoded float32 arrays (one warm-up image
    first), the same session settings as the CLI (``bare-spin``, ``bare-threadsN``: as below).
  * ``before``: `srdeploy upscale IN -o OUT` from the tree at ``--before`` (git archive).
  * ``after``: the same command from this working tree; ``after-pngN`` adds
    ``--png-compression N``; ``after-spin`` turns ONNX Runtime's spinning back on;
    ``after-workersN`` sets the I/O thread count; ``after-threadsN`` the ORT threads.
  The CLI's own summary line gives the batch rate (run_batch: planning, decoding, model,
  encoding, writing and journalling; not the process start or the session creation);
  the process wall time, start-up included, is reported beside it, and the CPU seconds
  (user + system, all threads) per image over the same span, which other jobs on the
  machine disturb less.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from _report import finish, print_rows  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "celeba_hq_256" / "test"

# Runs in a fresh interpreter with PYTHONPATH set to the tree under test. Benchmark-only
# knobs (spinning, thread counts) are applied by patching, so that the product needs none.
_RUNNER = r"""
import json, resource, sys, time
cfg = json.loads(sys.argv[1])
def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
import srdeploy
print("TREE", srdeploy.__file__, file=sys.stderr)
if cfg.get("spin"):
    import onnxruntime as ort
    real_entry = ort.SessionOptions.add_session_config_entry
    def entry(self, key, value):
        real_entry(self, key, "1" if key == "session.intra_op.allow_spinning" else value)
    ort.SessionOptions.add_session_config_entry = entry
# The module paths of this tree, or of one from before the rooms (--before 8467c2b has
# srdeploy/batch.py and srdeploy/upscaler.py).
try:
    import srdeploy.batch.run as batch_module
    import srdeploy.runtime.upscaler as upscaler_module
except ModuleNotFoundError:
    import srdeploy.batch as batch_module
    import srdeploy.upscaler as upscaler_module
if cfg.get("threads"):
    upscaler_module.available_cpus = lambda: cfg["threads"]
if cfg.get("workers") is not None:
    import dataclasses
    batch_module.LIMITS = dataclasses.replace(batch_module.LIMITS, workers=cfg["workers"])
if cfg["mode"] == "bare":
    import numpy as np
    from pathlib import Path
    from srdeploy.io import imaging
    from srdeploy.runtime.upscaler import Upscaler
    arrays = [imaging.decode(p.read_bytes(), p.name).color.astype(np.float32) / 255 for p in sorted(Path(cfg["inputs"]).glob("*.png"))]
    up = Upscaler("default", provider="cpu")
    up.upscale_array(arrays[0])
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    for a in arrays:
        up.upscale_array(a)
    print("BARE", len(arrays), time.perf_counter() - t0, file=sys.stderr)
    print("CPU", cpu_seconds() - cpu0, file=sys.stderr)
else:
    from srdeploy.cli import main
    run_batch = batch_module.run_batch
    def measured_run_batch(*args, **kwargs):  # the CPU of the batch alone, as its summary times it
        cpu0 = cpu_seconds()
        try:
            return run_batch(*args, **kwargs)
        finally:
            print("CPU", cpu_seconds() - cpu0, file=sys.stderr)
    batch_module.run_batch = measured_run_batch
    try:
        main(["upscale", cfg["inputs"], "-o", cfg["out"], "--provider", "cpu", *cfg.get("args", [])])
    except SystemExit as e:
        if e.code:
            raise
"""

SUMMARY = re.compile(r"(\d+) ok, \d+ skipped, (\d+) failed of \d+ in ([\d.]+) s")


def make_faces(folder: Path, count: int) -> Path:
    """The first ``count`` test faces as 64x64 PNGs in ``folder``/lr, made as `srdeploy
    bench` makes its inputs (srdeploy.bench.measure.make_input_sets)."""
    from srdeploy.bench.measure import make_input_sets

    faces = make_input_sets(FACES, folder, count, large=0)[0]
    return faces.files[0].parent


def export_tree(rev: str, folder: Path) -> Path:
    """The srdeploy package as committed at ``rev``, unpacked into ``folder``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "srdeploy"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def variant_config(name: str, trees: dict[str, Path]) -> tuple[Path, dict]:
    """``bare`` | ``before`` | ``after``, each with optional ``-pngN``, ``-spin``, ``-workersN``,
    ``-threadsN`` -> (tree, runner config)."""
    base, *tweaks = name.split("-")
    cfg: dict = {"mode": "bare" if base == "bare" else "cli", "args": []}
    for tweak in tweaks:
        if tweak == "spin":
            cfg["spin"] = True
        elif m := re.fullmatch(r"png(\d)", tweak):
            cfg["args"] += ["--png-compression", m[1]]
        elif m := re.fullmatch(r"workers(\d+)", tweak):
            cfg["workers"] = int(m[1])
        elif m := re.fullmatch(r"threads(\d+)", tweak):
            cfg["threads"] = int(m[1])
        else:
            raise SystemExit(f"unknown variant tweak {tweak!r} in {name!r}")
    return trees["after" if base == "bare" else base], cfg


def measure(name: str, tree: Path, cfg: dict, inputs: Path, scratch: Path) -> dict:
    """One run of one variant in a fresh process: images/s (batch and wall) and load."""
    out = Path(tempfile.mkdtemp(dir=scratch, prefix="out-"))
    cfg = {**cfg, "inputs": str(inputs), "out": str(out)}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(cfg)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, cwd=scratch)  # not the repo: `python -c` puts the cwd first on sys.path
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"{name} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    tree_line = next(line for line in run.stderr.splitlines() if line.startswith("TREE "))
    if not tree_line.split()[1].startswith(str(tree)):
        raise RuntimeError(f"{name} imported {tree_line.split()[1]}, not the tree {tree}")
    if cfg["mode"] == "bare":
        count, seconds = next(line.split()[1:] for line in run.stderr.splitlines() if line.startswith("BARE "))
        count, seconds = int(count), float(seconds)
    else:
        m = SUMMARY.search(run.stderr)
        if not m or int(m[2]):
            raise RuntimeError(f"{name}: no clean summary line:\n{run.stderr[-3000:]}")
        count, seconds = int(m[1]), float(m[3])
    cpu = float(next(line.split()[1] for line in run.stderr.splitlines() if line.startswith("CPU ")))
    return {"variant": name, "images": count, "images_per_s": count / seconds, "wall_images_per_s": count / wall, "cpu_s_per_image": cpu / count, "load_before": load}


def throughput(variants: list[str], trees: dict[str, Path], inputs: Path, scratch: Path, repeats: int) -> list[dict]:
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for name in variants[r % len(variants):] + variants[: r % len(variants)]:  # rotated: no variant always runs first
            tree, cfg = variant_config(name, trees)
            row = measure(name, tree, cfg, inputs, scratch)
            runs[name].append(row)
            print(f"  repeat {r + 1}: {name}: {row['images_per_s']:.3f} images/s (wall {row['wall_images_per_s']:.3f}), "
                  f"{row['cpu_s_per_image']:.3f} CPU s/image, load {row['load_before']:.2f}", flush=True)
    bare = median(r["images_per_s"] for r in runs["bare"]) if "bare" in runs else None
    rows = []
    for name, rs in runs.items():
        rate = median(r["images_per_s"] for r in rs)
        rows.append({
            "variant": name, "images_per_s": round(rate, 3), "wall_images_per_s": round(median(r["wall_images_per_s"] for r in rs), 3),
            "of_bare": round(rate / bare, 3) if bare else None, "cpu_s_per_image": round(median(r["cpu_s_per_image"] for r in rs), 3), "runs": [round(r["images_per_s"], 3) for r in rs],
            "load_before": [round(r["load_before"], 2) for r in rs],
        })
    return rows


def model_busy_share(inputs: Path, scratch: Path, repeats: int) -> list[dict]:
    """In-process: run_batch one input at a time (Limits(workers=1, in_flight=1): each
    input is read, upscaled, written and journalled before the next is read, as before the
    pipeline; with PNG level 6, the old default) and pipelined, timing the model calls. The share of the batch's
    wall time the model was running is what end to end can reach of the bare model on an
    otherwise idle machine; other jobs on the machine slow both alike."""
    from srdeploy.batch import pipeline
    from srdeploy.batch.jobs import Settings
    from srdeploy.batch.run import LIMITS, run_batch
    from srdeploy.io.imaging import DEFAULT_PNG_COMPRESSION
    from srdeploy.runtime.upscaler import Upscaler

    up = Upscaler("default", provider="cpu")
    model_seconds: list[float] = []
    upscale_picture = up.upscale_picture

    def timed_upscale_picture(picture):
        t0 = time.perf_counter()
        try:
            return upscale_picture(picture)
        finally:
            model_seconds.append(time.perf_counter() - t0)

    up.upscale_picture = timed_upscale_picture
    up.upscale_picture(make_warmup_picture())
    one_at_a_time, png6 = pipeline.Limits(workers=1, in_flight=1), Settings(png_compression=6)
    modes = {  # name -> (limits, settings)
        "one at a time, PNG level 6 (as before)": (one_at_a_time, png6),
        "pipelined, PNG level 6": (LIMITS, png6),
        f"pipelined, PNG level {DEFAULT_PNG_COMPRESSION} (default)": (LIMITS, Settings()),
    }
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for r in range(repeats):
        for name, (limits, settings) in modes.items():
            model_seconds.clear()
            out = Path(tempfile.mkdtemp(dir=scratch, prefix="busy-"))
            load = os.getloadavg()[0]
            summary = run_batch(up, [inputs], out, settings, limits=limits)
            if summary.failed:
                raise RuntimeError(f"{summary.failed} inputs failed: {summary.line()}")
            runs[name].append({"busy": sum(model_seconds) / summary.seconds, "images_per_s": len(model_seconds) / summary.seconds, "load": load})
            print(f"  repeat {r + 1}: {name}: model busy {runs[name][-1]['busy']:.3f} of the batch's wall time, "
                  f"{runs[name][-1]['images_per_s']:.3f} images/s, load {load:.2f}", flush=True)
    return [{
        "batch": name, "model_busy_share": round(median(r["busy"] for r in rs), 3), "images_per_s": round(median(r["images_per_s"] for r in rs), 3),
        "busy_runs": [round(r["busy"], 3) for r in rs], "load_before": [round(r["load"], 2) for r in rs],
    } for name, rs in runs.items()]


def make_warmup_picture():
    from srdeploy.io.imaging import Picture

    return Picture(np.zeros((64, 64, 3), np.uint8))


def encode_share(inputs: Path, count: int) -> list[dict]:
    """Model seconds per image (the engine `srdeploy upscale` picks here) vs the PNG encode
    seconds of its 256x256 output at each level: srdeploy's encode (srdeploy.io.imaging:
    its own writer at 0-3, Pillow at 4-9) and Pillow's own writer at the same zlib level."""
    from PIL import Image

    from srdeploy.io import imaging, png
    from srdeploy.runtime.upscaler import Upscaler

    paths = sorted(inputs.glob("*.png"))[:count]
    arrays = [imaging.decode(p.read_bytes(), p.name).color.astype(np.float32) / 255 for p in paths]
    up = Upscaler("default")
    up.upscale_array(arrays[0])
    t0 = time.perf_counter()
    outputs = [np.rint(up.upscale_array(a) * 255).astype(np.uint8) for a in arrays]
    model_s = (time.perf_counter() - t0) / len(arrays)
    rows = [{"step": f"model (upscale_array, {up.provider} {up.precision})", "ms_per_image": round(1000 * model_s, 2)}]

    def pillow(pixels: np.ndarray, level: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=level)
        return buffer.getvalue()

    def srdeploy(pixels: np.ndarray, level: int) -> bytes:
        return imaging.encode(imaging.Picture(pixels), "PNG", png_compression=level)

    for level in range(10):
        writer = f"srdeploy.io.png, Up filter, {png.deflate_library(level)}" if level in png.FAST_LEVELS else "Pillow"
        for name, encode in ((f"srdeploy ({writer})", srdeploy), ("Pillow's own", pillow)):
            if name.startswith("Pillow") and level not in png.FAST_LEVELS:
                continue  # the same writer as the srdeploy row
            encode(outputs[0], level)
            t0 = time.perf_counter()
            sizes = [len(encode(pixels, level)) for pixels in outputs]
            seconds = (time.perf_counter() - t0) / len(outputs)
            rows.append({
                "step": f"level {level}: {name}", "ms_per_image": round(1000 * seconds, 2),
                "share_of_model": f"{100 * seconds / model_s:.0f}%", "kib_per_image": round(float(np.mean(sizes)) / 1024, 1),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="faces to use (the test split has 100)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="8467c2b", help="git revision for the 'before' variant (default: the last one-file-at-a-time batch)")
    parser.add_argument("--variants", default="bare,before,after")
    parser.add_argument("--parts", default="encode,busy,throughput")
    parser.add_argument("--encode-count", type=int, default=20, help="images for the encode part")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import onnxruntime

    results: dict = {"machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "onnxruntime": onnxruntime.__version__,
                                 "load_avg_before": os.getloadavg()}}
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        scratch = Path(tmp)
        inputs = make_faces(scratch, args.count)
        if "encode" in parts:
            results["encode"] = encode_share(inputs, args.encode_count)
            print_rows("Model vs PNG encode, 64x64 -> 256x256 faces (in-process)", results["encode"])
        if "busy" in parts:
            print(f"\n## Model busy share, {args.count} faces, {args.repeats} repeats (in-process)", flush=True)
            results["busy"] = model_busy_share(inputs, scratch, args.repeats)
            print_rows("Medians: share of run_batch's wall time spent in the model", results["busy"])
        if "throughput" in parts:
            trees = {"after": REPO}
            variants = args.variants.split(",")
            if "before" in variants:
                trees["before"] = export_tree(args.before, scratch / "before")
                results["before_rev"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.before], capture_output=True, text=True).stdout.strip()
            print(f"\n## Throughput, {args.count} faces 64x64 -> 256x256, {args.repeats} repeats (each a fresh subprocess)", flush=True)
            results["throughput"] = throughput(variants, trees, inputs, scratch, args.repeats)
            print_rows("Medians (images/s: batch rate from the CLI summary; bare: upscale_array loop)", results["throughput"])
    finish(results, args.json)


if __name__ == "__main__":
    main()
