"""OpenVINO's CPU pinning, on and off, with one process and with several side by side
(not a test).

    python benchmarks/openvino_pinning.py [--side 64] [--calls 30] [--rounds 3]

Each row runs OpenVinoRunner (srdeploy.runtime.openvino_engine, the engine `srdeploy
upscale` opens on this CPU) on the shipped default's cpu_graph-rewritten graph, fp32,
one static window of --side x --side, with ENABLE_CPU_PINNING set as the row says and
everything else as the runner sets it. "alone": one process with a thread per available
CPU. "N side by side": one process per CPU, each with one thread, started together, as
Ray actors or TorchServe workers run. Each process reports its best round's time per
call; the row gives the rows' mean, and images per second over all its processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np


def one_process(pinned: bool, threads: int, side: int, calls: int, rounds: int, start: multiprocessing.Barrier, out: multiprocessing.Queue) -> None:
    from srdeploy.runtime import cpu_graph, zoo
    from srdeploy.runtime.openvino_engine import OpenVinoRunner

    graph = cpu_graph.optimized_bytes(zoo.resolve_model("default").path, cpu_graph.OPENVINO_REWRITES["fp32"])
    runner = OpenVinoRunner(graph, "fp32", threads)
    runner.config["ENABLE_CPU_PINNING"] = pinned
    window = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    runner(window)  # compile and warm up, then time together with the others
    start.wait()
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(calls):
            runner(window)
        best = min(best, (time.perf_counter() - began) / calls)
    out.put(best)


def row(pinned: bool, processes: int, threads: int, args: argparse.Namespace) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=one_process, args=(pinned, threads, args.side, args.calls, args.rounds, start, out)) for _ in range(processes)]
    for w in workers:
        w.start()
    seconds = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return float(np.mean(seconds)), sum(1 / s for s in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from srdeploy.runtime.cpus import available_cpus, cpu_info

    cpus = available_cpus()
    print(f"CPU: {cpu_info().describe()}; {cpus} CPUs; load {os.getloadavg()[0]:.2f}; {args.side}x{args.side}, fp32", flush=True)
    for processes, threads, label in ((1, cpus, f"alone, {cpus} threads"), (cpus, 1, f"{cpus} side by side, 1 thread each")):
        for pinned in (True, False):
            ms, rate = row(pinned, processes, threads, args)
            print(f"{label:<32} pinning {'on ' if pinned else 'off'}  {ms * 1000:6.0f} ms a call  {rate:5.2f} img/s in all  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
