"""INT8 vs fp32 ONNX Runtime throughput on this machine's CPU (not a test).

    python benchmarks/int8_bench.py EXPORT_DIR [--rounds 7] [--threads 2] [--profile]

EXPORT_DIR holds model.onnx and model.int8.onnx (``srdeploy export ... --int8``). Both
run on 64x64 LR inputs at batch 1 and 8 as the Upscaler runs them (its session settings;
the fp32 graph with srdeploy.runtime.cpu_graph's rewrites). The two models alternate run by run, so a shared
CPU's load hits both alike; the ratio of medians is the figure to read. CPU seconds per
image (the process's, which spinning threads would inflate: spinning is off) are printed
too: they are less sensitive to other processes than wall time. ``--profile`` adds ORT's
per-op time split (one thread, batch 1), which shows where int8 cannot help.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int, profile: bool = False):
    """A CPU session as srdeploy opens one (providers.open_session: its session options,
    and an fp32 model rewritten by srdeploy.runtime.cpu_graph): the int8 model is measured against
    the fp32 model that actually deploys."""
    from srdeploy.runtime import providers

    options = providers.session_options("cpu", threads)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / path.stem)
    return providers.open_session(path, "cpu", threads, None, options)


def throughput(paths: dict[str, Path], batch: int, rounds: int, threads: int) -> dict[str, dict[str, float]]:
    sessions = {name: session(p, threads) for name, p in paths.items()}
    x = np.random.default_rng(0).random((batch, 3, 64, 64), dtype=np.float32)
    for s in sessions.values():
        s.run(None, {"lr": x})  # warm-up: allocations, kernel selection
    wall: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for name, s in sessions.items():
            t, c = time.perf_counter(), time.process_time()
            s.run(None, {"lr": x})
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {name: {"img_per_s": batch / float(np.median(wall[name])), "cpu_s_per_img": float(np.median(cpu[name])) / batch} for name in paths}


def op_split(path: Path) -> dict[str, float]:
    """Milliseconds per op type for one batch-1 run on one thread."""
    s = session(path, threads=1, profile=True)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    for _ in range(3):
        s.run(None, {"lr": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    split: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            split[e["args"]["op_name"]] += e["dur"] / 3 / 1000
    return dict(sorted(split.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    paths = {"fp32": args.export_dir / "model.onnx", "int8": args.export_dir / "model.int8.onnx"}

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.threads} ORT threads, 64x64 LR inputs")
    for batch in (1, 8):
        r = throughput(paths, batch, args.rounds, args.threads)
        fp32, int8 = r["fp32"], r["int8"]
        print(
            f"batch {batch}: fp32 {fp32['img_per_s']:.2f} img/s ({fp32['cpu_s_per_img']:.3f} CPU s/img), "
            f"int8 {int8['img_per_s']:.2f} img/s ({int8['cpu_s_per_img']:.3f} CPU s/img); "
            f"int8/fp32 {int8['img_per_s'] / fp32['img_per_s']:.2f}x wall, {fp32['cpu_s_per_img'] / int8['cpu_s_per_img']:.2f}x CPU time"
        )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.profile:
        for name, path in paths.items():
            split = op_split(path)
            total = sum(split.values())
            print(f"{name}: {total:.0f} ms per 64x64 image on 1 thread: " + ", ".join(f"{op} {ms / total:.0%}" for op, ms in list(split.items())[:6]))


if __name__ == "__main__":
    main()
