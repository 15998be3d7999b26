"""ONNX Runtime CPU settings and graph rewrites for the generator, timed back to back
against PyTorch eager on one input (not a test).

    python benchmarks/ort_cpu_variants.py [--model default] [--side 64] [--threads N] [--rounds 12]

Every variant is one ORT session (or the PyTorch generator, channels_last, inference_mode)
on the same input. Rounds interleave the variants, rotating their order, and each round's
time is compared with the baseline's in that same round: on a CPU shared with other jobs,
the median of those paired ratios is far steadier than two separate medians.

"before" is what `srdeploy upscale` ran before these changes: the exported graph with
srdeploy.runtime.providers.session_options plus the memory pattern; "now" is what it runs: both
srdeploy.runtime.cpu_graph rewrites and the current session options. The other rows change one
thing each.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np


def variants(model_path: Path, threads: int, x: np.ndarray) -> dict[str, Callable[[], object]]:
    import onnx
    import onnxruntime as ort

    from srdeploy.runtime.cpu_graph import rewrite_for_cpu
    from srdeploy.runtime.providers import session_options

    exported = onnx.load(str(model_path))
    graphs = {name: rewrite_for_cpu(exported, rewrites)[0].SerializeToString() for name, rewrites in
              (("tail", ("tail",)), ("prelu", ("prelu",)), ("both", ("tail", "prelu")))}
    graphs["exported"] = exported.SerializeToString()

    def session(graph: str, *changes: Callable[[ort.SessionOptions], None]):
        options = session_options("cpu", threads)
        for change in changes:
            change(options)
        s = ort.InferenceSession(graphs[graph], options, providers=["CPUExecutionProvider"])
        return lambda: s.run(None, {"lr": x})

    def entry(key: str, value: str):
        return lambda o: o.add_session_config_entry(key, value)

    def mem_pattern(o):  # the runtime's setting before this comparison
        o.enable_mem_pattern = True

    def extended(o):
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED

    def no_arena(o):
        o.enable_cpu_mem_arena = False

    def parallel(o):
        o.execution_mode, o.inter_op_num_threads = ort.ExecutionMode.ORT_PARALLEL, threads

    spinning = entry("session.intra_op.allow_spinning", "1")
    return {
        "before: exported graph": session("exported", mem_pattern),
        "before, EXTENDED (no NCHWc)": session("exported", mem_pattern, extended),
        "before, allow_spinning 1": session("exported", mem_pattern, spinning),
        "before + tail rewrite": session("tail", mem_pattern),
        "before + PRelu rewrite": session("prelu", mem_pattern),
        "before + both rewrites": session("both", mem_pattern),
        "now: both, no mem pattern": session("both"),
        "now, EXTENDED (no NCHWc)": session("both", extended),
        "now, allow_spinning 1": session("both", spinning),
        "now, denormal_as_zero": session("both", entry("session.set_denormal_as_zero", "1")),
        "now, no arena": session("both", no_arena),
        "now, ORT_PARALLEL": session("both", parallel),
    }


def torch_eager(generator_path: Path, threads: int, x: np.ndarray) -> Callable[[], object]:
    """The `srdeploy bench` PyTorch reference (srdeploy.bench.measure.torch_runner) on ``x``."""
    from srdeploy.bench.measure import torch_runner

    run = torch_runner(generator_path, threads)
    return lambda: run(x)


def main() -> None:
    from srdeploy.runtime.cpus import available_cpus
    from srdeploy.runtime.zoo import resolve_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="shipped name or model.onnx (with generator.pt beside it)")
    parser.add_argument("--side", type=int, default=64, help="input side in LR pixels")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--per-round", type=int, default=2, help="runs of each variant per round")
    args = parser.parse_args()

    model = resolve_model(args.model).path
    x = np.random.default_rng(0).random((1, 3, args.side, args.side), dtype=np.float32)
    runs = {"PyTorch eager (channels_last)": torch_eager(model.parent / "generator.pt", args.threads, x), **variants(model, args.threads, x)}
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()
    for run in runs.values():  # warm-up
        run()
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(args.per_round):
                runs[name]()
            seconds[name].append((time.perf_counter() - start) / args.per_round)
    baseline, torch_times = np.array(seconds["before: exported graph"]), np.array(seconds[names[0]])
    print(f"{args.side}x{args.side} input, {args.threads} threads, {args.rounds} rounds x {args.per_round}; "
          f"load average {load_before} -> {os.getloadavg()}")
    print(f"{'variant':<32} {'median img/s':>12} {'best img/s':>10} {'vs before':>10} {'vs PyTorch':>11}")
    for name in names:
        t = np.array(seconds[name])
        print(f"{name:<32} {1 / np.median(t):>12.3f} {1 / t.min():>10.3f} {np.median(baseline / t):>9.2f}x {np.median(torch_times / t):>10.2f}x")


if __name__ == "__main__":
    main()
