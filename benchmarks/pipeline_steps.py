"""Where `srdeploy upscale`'s time goes, step by step, on 64x64 faces (not a test).

    python benchmarks/pipeline_steps.py [--count 400] [--repeats 3] [--png-compression N] [--model M]

Runs srdeploy.batch.run.run_batch in this process (the engine `auto` picks, its default
threads and tile) on faces from the CelebA-HQ val split downscaled to 64x64 PNGs
(../shared/data/celeba_hq_256/val, made as `srdeploy bench` makes its inputs:
srdeploy.bench.measure.make_input_sets), and times each step of srdeploy.batch.steps on
the thread that runs it: CPU seconds (time.thread_time) and wall seconds per image. The
model's own worker threads are not any step's: the CPU of every thread of the process,
by role, is read from /proc as the last input is reported (Linux), beside the page
faults per image. Before the batch, the bare engine (Upscaler.upscale_array on the
decoded arrays) runs on the same faces, so the pipeline's share of the bare rate is
measured in the same run.

``--model`` runs another model. A stand-in as fast on a slow CPU as the shipped model is
on a fast one (about 100 faces/s on 2 cores of an AVX2 EPYC, as OpenVINO bf16 on the AMX
Xeon) shows there what the batch costs at that rate (docs/results.md, "Batch throughput
at 100 faces/s"): a B=1, 16-filter SRResNet trained a few minutes so its outputs
compress like faces::

    srdeploy train srresnet --data $D/train --data-list $D/train.txt --blocks 1 --channels 16 \
        --patch 96 --batch-size 16 --steps 400 --workers 0 --val-limit 10 -o runs/stand-in
    srdeploy export runs/stand-in/last.pt -o runs/stand-in/export
    python benchmarks/pipeline_steps.py --count 200 --model runs/stand-in/export/model.onnx
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "celeba_hq_256" / "val"


class StepClock:
    """Wraps methods so each call adds its thread CPU and wall seconds to a named total."""

    def __init__(self):
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.wall: dict[str, float] = collections.defaultdict(float)

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.cpu[label] += time.thread_time() - cpu
                self.wall[label] += time.perf_counter() - wall

        setattr(owner, name, staticmethod(timed) if isinstance(owner.__dict__.get(name), staticmethod) else timed)


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every live thread of this process, by native id
    (Linux /proc; empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path("/proc/self/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def thread_roles() -> dict[int, str]:
    """Native thread id -> its role: the calling thread, the pipeline's worker and commit
    threads (by name); threads Python did not start are the engine's own."""
    return {t.native_id: "calling thread" if t is threading.main_thread() else t.name.rsplit("_", 1)[0] for t in threading.enumerate()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--png-compression", type=int, default=None)
    parser.add_argument("--model", default="default", help="default, srgan or a .onnx file")
    args = parser.parse_args()

    from srdeploy.batch import journal, run, steps
    from srdeploy.batch.jobs import Settings
    from srdeploy.bench.measure import make_input_sets
    from srdeploy.runtime.cpus import cpu_info
    from srdeploy.runtime.upscaler import Upscaler

    settings = Settings() if args.png_compression is None else Settings(png_compression=args.png_compression)
    up = Upscaler(args.model)
    print(f"{cpu_info().describe()}; model {args.model}; {up.provider} {up.precision} ({up.engine_why}); {up.threads} threads; PNG level {settings.png_compression}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    clock = StepClock()
    for name in ("load", "upscale", "store"):
        clock.wrap(steps.InputSteps, name, name)
    clock.wrap(steps.Committer, "commit", "commit")
    clock.wrap(journal.Journal, "append", "  journal append (in commit)")
    clock.wrap(steps.Upscaler, "decode", "  decode (in load)")
    clock.wrap(steps.Upscaler, "encode", "  encode (in store)")
    with tempfile.TemporaryDirectory(prefix="pipeline-steps-") as tmp:
        faces = make_input_sets(DATA, Path(tmp), args.count, large=0)[0]
        folder, arrays = faces.files[0].parent, faces.arrays
        up.upscale_array(arrays[0])
        bare, batch, cpu_per_image, faults = [], [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for lr in arrays:
                up.upscale_array(lr)
            bare.append(len(arrays) / (time.perf_counter() - start))
            out = Path(tmp) / "out"
            shutil.rmtree(out, ignore_errors=True)
            clock.cpu.clear()
            clock.wall.clear()
            cpu, faulted = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            before, last = thread_cpu(), {}

            results = []

            def report(result, results=results, last=last) -> None:  # on the commit thread, while the pools are alive
                results.append(result)
                if len(results) == len(faces.files):
                    last.update(cpu=thread_cpu(), roles=thread_roles())

            summary = run.run_batch(up, [folder], out, settings, report=report)
            batch.append(len(summary.results) / summary.seconds)
            cpu_per_image.append((time.process_time() - cpu) / len(summary.results))
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted) / len(summary.results))
    ratios = [b / a for a, b in zip(bare, batch)]
    print(f"bare engine {statistics.median(bare):.1f} images/s; pipeline {statistics.median(batch):.1f} images/s "
          f"({statistics.median(ratios):.2f}x bare, per-repeat {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"process CPU {1000 * statistics.median(cpu_per_image):.1f} ms/image, {statistics.median(faults):.0f} page faults/image (medians of {args.repeats})")
    by_role: dict[str, float] = collections.defaultdict(float)
    for tid, seconds in last.get("cpu", {}).items():
        by_role[last["roles"].get(tid, "engine threads")] += seconds - before.get(tid, 0.0)
    shares = [f"{role} {1000 * s / args.count:.2f} ms" for role, s in sorted(by_role.items()) if s > 0]
    print("last repeat, CPU per image by thread (/proc): " + ", ".join(shares))
    print("last repeat, per image:")
    for label in clock.cpu:
        print(f"  {label:30s} CPU {1000 * clock.cpu[label] / args.count:6.2f} ms   wall {1000 * clock.wall[label] / args.count:6.2f} ms")


if __name__ == "__main__":
    main()
