"""Batch designs tried against srdeploy's pipeline at a fast model's rate, and why none is
kept (not a test; docs/results.md, "Batch throughput at 100 faces/s").

    python benchmarks/pipeline_variants.py --model M [--count 150] [--rounds 7] [--parts variants,contention] [--busy N]

``--busy N`` runs N CPU-bound processes beside it (a shared machine), at normal priority.

``variants``: in one process, in rotated order each round, on the same 64x64 faces (made
as pipeline_steps.py makes them):

- ``bare``: Upscaler.upscale_array in a loop, one OpenVINO stream of all the threads;
- ``bare 2 streams``: two streams of one thread each, called from two threads;
- ``pipeline``: srdeploy.batch.run.run_batch as it ships;
- ``pipeline gate``: the same, with the file work (load, store, commit) held off the CPU
  while the model runs and the model held while file work runs (a gate that prefers the
  model), so the model never shares its cores;
- ``pipeline 2 streams``: the model called from two threads on the two-stream engine, so
  a worker that takes a core stalls one stream, not both halves of one call;
- ``pipeline idle``: the shipped pipeline with its worker and commit threads in Linux's
  SCHED_IDLE class, so the kernel runs file work only on a core the model leaves idle
  and takes the core back the moment a model thread wakes (nice 19 still shares it);
- ``phased``: groups of faces through the model with nothing else running, then their
  file work on two threads (:func:`run_phased`), optionally with the writes, fsyncs and
  commits moved into the next model phase;
- ``per-core pipelines, 2 streams``: two threads, each taking an input through load,
  upscale on its own stream and store (:func:`run_per_core`), the commits in input order;
- ``one I/O burst a face``: one thread does an input's store, its commit and a later
  input's load back to back (:func:`run_fused`), so the file work wakes once a face, not
  three or four times (each wake-up starts with cold caches: ``file_work.py --gap-ms``).

The gate, two-stream and idle variants are patched into srdeploy.batch for the run only. Ratios are
the median of the per-round ratios to ``bare``, so a round the machine ran slow counts
once.

``contention``: the bare engine while another thread takes a fixed CPU share (zlib, which
releases the GIL) every 8 ms: what the model loses when something else runs, with that
thread in the normal class and in SCHED_IDLE (and how much CPU it got).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pipeline_steps import DATA  # the val faces; benchmarks/ is on sys.path when run as a script


class Gate:
    """Model calls exclusive, file work shared among the workers; a waiting model call
    goes first."""

    def __init__(self):
        self.changed = threading.Condition()
        self.file_work = 0
        self.model_waiting = self.model_running = False
        self.on = False  # off: both wrappers pass straight through

    def shared(self, step):
        def gated(*args, **kwargs):
            if not self.on:
                return step(*args, **kwargs)
            with self.changed:
                self.changed.wait_for(lambda: not (self.model_running or self.model_waiting))
                self.file_work += 1
            try:
                return step(*args, **kwargs)
            finally:
                with self.changed:
                    self.file_work -= 1
                    self.changed.notify_all()

        return gated

    def exclusive(self, step):
        def gated(*args, **kwargs):
            if not self.on:
                return step(*args, **kwargs)
            with self.changed:
                self.model_waiting = True
                self.changed.wait_for(lambda: self.file_work == 0)
                self.model_waiting, self.model_running = False, True
            try:
                return step(*args, **kwargs)
            finally:
                with self.changed:
                    self.model_running = False
                    self.changed.notify_all()

        return gated


def to_idle_class() -> None:
    """Put the calling thread in SCHED_IDLE (Linux; for good: leaving it needs privileges)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def patch_pipeline(gate: Gate, two_callers: threading.Event, idle_file_work: threading.Event) -> None:
    """Gate the steps, let _Pipeline call the model from two threads when asked, and start
    its worker and commit threads in SCHED_IDLE when asked."""
    from srdeploy.batch import pipeline, steps

    class Pool(ThreadPoolExecutor):  # the pipeline makes a new pool of each kind per batch
        def __init__(self, workers: int, thread_name_prefix: str = ""):
            lower = to_idle_class if idle_file_work.is_set() else None
            super().__init__(workers, thread_name_prefix=thread_name_prefix, initializer=lower)

    pipeline.ThreadPoolExecutor = Pool

    for name in ("load", "store"):
        setattr(steps.InputSteps, name, gate.shared(getattr(steps.InputSteps, name)))
    steps.Committer.commit = gate.shared(steps.Committer.commit)
    steps.InputSteps.upscale = gate.exclusive(steps.InputSteps.upscale)

    shipped_run, shipped_next = pipeline._Pipeline.run, pipeline._Pipeline._upscale_next

    def run(self, jobs):
        self.callers = ThreadPoolExecutor(2, thread_name_prefix="model")
        try:
            shipped_run(self, jobs)
        finally:
            self.callers.shutdown()

    def upscale_next(self):
        if not two_callers.is_set():
            return shipped_next(self)
        job, loading = self.loading.popleft()

        def through_store():  # on a caller thread: the load's value -> stored | Done
            value = loading.result()
            if not isinstance(value, pipeline.Done):
                value = self.steps.upscale(value)
            return value if isinstance(value, pipeline.Done) else self.workers.submit(self.steps.store, value).result()

        self.committing.append((job, self.committer.submit(self._commit, self.callers.submit(through_store))))

    pipeline._Pipeline.run, pipeline._Pipeline._upscale_next = run, upscale_next


@contextlib.contextmanager
def planned(upscaler, folder: Path, out: Path, settings):
    """What every hand-built batch here starts from, as srdeploy.batch.run.run_batch does:
    the folder's inputs planned into ``out`` under its journal's lock. Yields (jobs, steps,
    place, done): the InputSteps and output Folder to run them with, and the list each
    committed result is appended to."""
    from srdeploy.batch import run
    from srdeploy.batch.jobs import JOURNAL_NAME
    from srdeploy.batch.journal import Journal
    from srdeploy.batch.steps import Folder, InputSteps

    files, _, _ = run.collect([folder], settings.recursive, out)
    out.mkdir(parents=True, exist_ok=True)
    journal, place, done = Journal(out / JOURNAL_NAME), Folder(out), []
    with journal.lock():
        jobs, _ = run.plan(files, settings, upscaler.scale, place)
        yield jobs, InputSteps(upscaler, place, settings, journal, lambda result, extra: done.append(result)), place, done


def run_phased(upscaler, folder: Path, out: Path, settings, group: int, overlap_io: bool = False) -> float:
    """A batch in alternating phases: ``group`` model calls with nothing else running,
    then the file work of two groups at once on two threads (the next group's loads, the
    last group's stores, and its commits after them). ``overlap_io``: the last group's
    temp-file writes (with their fsyncs) and commits run on a third thread during the
    next model phase instead, so that only CPU work waits for the model. No budget, no
    stop handling: a measurement, not a batch runner. Returns images/s."""
    from srdeploy.batch import pipeline
    from srdeploy.batch.steps import _Staged

    start = time.perf_counter()

    def encode(value):  # the CPU half of InputSteps.store
        item = value.item
        encoded = upscaler.encode(value.picture, item.job.format, item.job.note, settings.quality, settings.png_compression)
        return item, encoded, hashlib.sha256(encoded.data).hexdigest()

    def write_and_commit(item, encoded, output_sha256):  # its I/O half, then the commit
        tmp = place.stage(item.target, encoded.data, item.key, output_sha256, (encoded.width, encoded.height))
        steps.commit(_Staged(item, tmp, output_sha256, (encoded.width, encoded.height)))

    with planned(upscaler, folder, out, settings) as (jobs, steps, place, done), ThreadPoolExecutor(2) as workers, ThreadPoolExecutor(1) as io:
        upscaled: list = []
        io_done: list = []  # the I/O thread's futures, checked: an error there must not read as 0 images/s
        for first in range(0, len(jobs) + group, group):
            loads = [workers.submit(steps.load, job) for job in jobs[first : first + group]]
            cpu_half = encode if overlap_io else steps.store
            stores = [None if isinstance(v, pipeline.Done) else workers.submit(cpu_half, v) for v in upscaled]
            for value, stored in zip(upscaled, stores):
                if overlap_io:
                    io_done.append(io.submit(steps.commit, value) if stored is None else io.submit(write_and_commit, *stored.result()))
                else:
                    steps.commit(value if stored is None else stored.result())
            loaded = [f.result() for f in loads]
            upscaled = [v if isinstance(v, pipeline.Done) else steps.upscale(v) for v in loaded]
        for future in io_done:
            future.result()
    return len(done) / (time.perf_counter() - start)


def run_per_core(upscaler, folder: Path, out: Path, settings) -> float:
    """Two whole pipelines, one a core: each of two threads takes the next input through
    load, upscale (on its own stream of a two-stream engine) and store, so file work only
    ever delays its own thread's model call, never the other half of a shared one; the
    commits run in input order on this thread. No budget, no stop handling: a measurement,
    not a batch runner. Returns images/s."""
    start = time.perf_counter()
    with planned(upscaler, folder, out, settings) as (jobs, steps, _, done), ThreadPoolExecutor(2, thread_name_prefix="core") as cores:
        for stored in [cores.submit(steps.through_store, job) for job in jobs]:
            steps.commit(stored.result())
    return len(done) / (time.perf_counter() - start)


def run_fused(upscaler, folder: Path, out: Path, settings, ahead: int = 2) -> float:
    """The file work as one burst a face on one thread: after the model's call for input i,
    that thread stores and commits i, then loads input i + ``ahead`` for the model. No
    budget, no stop handling: a measurement, not a batch runner. Returns images/s."""
    from srdeploy.batch import pipeline

    start = time.perf_counter()
    with planned(upscaler, folder, out, settings) as (jobs, steps, _, done), ThreadPoolExecutor(1, thread_name_prefix="io") as io:
        loaded = [io.submit(steps.load, job) for job in jobs[:ahead]]  # then each burst loads one more

        def burst(value, later_job):
            steps.commit(value if isinstance(value, pipeline.Done) else steps.store(value))
            return None if later_job is None else steps.load(later_job)

        for i in range(len(jobs)):
            value = loaded[i].result()
            if not isinstance(value, pipeline.Done):
                value = steps.upscale(value)
            loaded.append(io.submit(burst, value, jobs[i + ahead] if i + ahead < len(jobs) else None))
    return len(done) / (time.perf_counter() - start)


def variants(model: str, count: int, rounds: int) -> None:
    from srdeploy.batch import run
    from srdeploy.batch.jobs import Settings
    from srdeploy.bench.measure import make_input_sets
    from srdeploy.runtime.upscaler import Upscaler

    gate, two_callers, idle_file_work = Gate(), threading.Event(), threading.Event()
    patch_pipeline(gate, two_callers, idle_file_work)
    one = Upscaler(model)
    two = Upscaler(model)
    if not hasattr(two._run, "config"):
        sys.exit("the stream variants need an OpenVINO model (the engine auto picks on this CPU is not OpenVINO)")
    two._run.config.update({"NUM_STREAMS": 2, "PERFORMANCE_HINT": "THROUGHPUT"})  # before its first compile
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-variants-"))
    try:
        faces = make_input_sets(DATA, tmp, count, large=0)[0]
        folder, arrays = faces.files[0].parent, faces.arrays

        def bare() -> float:
            start = time.perf_counter()
            for lr in arrays:
                one.upscale_array(lr)
            return len(arrays) / (time.perf_counter() - start)

        def bare_two_streams() -> float:
            start = time.perf_counter()
            with ThreadPoolExecutor(2) as callers:
                list(callers.map(two.upscale_array, arrays))
            return len(arrays) / (time.perf_counter() - start)

        def fresh_out() -> Path:  # every measure writes every output anew
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            return out

        def batch(upscaler, gated: bool = False, two_threads: bool = False, idle: bool = False) -> float:
            gate.on = gated
            (two_callers.set if two_threads else two_callers.clear)()
            (idle_file_work.set if idle else idle_file_work.clear)()
            try:
                summary = run.run_batch(upscaler, [folder], fresh_out(), Settings())
            finally:
                gate.on = False
                two_callers.clear()
                idle_file_work.clear()
            return len(summary.results) / summary.seconds

        def phased(group: int, overlap_io: bool = False) -> float:
            return run_phased(one, folder, fresh_out(), Settings(), group, overlap_io)

        runs = {
            "bare": bare, "bare 2 streams": bare_two_streams, "pipeline": lambda: batch(one),
            "pipeline gate": lambda: batch(one, gated=True), "pipeline 2 streams": lambda: batch(two, two_threads=True),
            "pipeline idle": lambda: batch(one, idle=True),
            "phased, groups of 8": lambda: phased(8), "phased, groups of 24": lambda: phased(24),
            "phased 24, I/O overlapped": lambda: phased(24, overlap_io=True),
            "per-core pipelines, 2 streams": lambda: run_per_core(two, folder, fresh_out(), Settings()),
            "one I/O burst a face": lambda: run_fused(one, folder, fresh_out(), Settings()),
        }
        for measure in runs.values():  # compile, warm up
            measure()
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                rates[name].append(runs[name]())
            print(f"round {r + 1}: " + ", ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items()), flush=True)
        print(f"{count} faces, {rounds} rounds (images/s median; ratio: median of per-round ratios to bare):")
        for name, values in rates.items():
            ratio = statistics.median(a / b for a, b in zip(values, rates["bare"]))
            print(f"  {name:30s} {statistics.median(values):7.1f} images/s  {ratio:.2f}x bare")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def contention(model: str, count: int, rounds: int) -> None:
    from srdeploy.runtime.upscaler import Upscaler

    up = Upscaler(model)
    lr = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    payload = np.random.default_rng(1).integers(0, 40, 200_000, dtype=np.uint8).tobytes()  # compresses like a filtered face

    def busy(stop: threading.Event, cpu_ms: float, idle: bool, used: list[float]) -> None:
        if idle:
            to_idle_class()
        begun, start = time.perf_counter(), time.thread_time()
        while not stop.is_set():
            burst = time.thread_time()
            while time.thread_time() - burst < cpu_ms / 1000:
                zlib.compress(payload, 1)
            time.sleep(0.008)
        used.append((time.thread_time() - start) / (time.perf_counter() - begun))

    loads = [(0.0, False), (3.0, False), (3.0, True), (6.0, False), (6.0, True)]  # (CPU ms per burst, SCHED_IDLE)
    rates: dict[tuple, list[float]] = {load: [] for load in loads}
    shares: dict[tuple, list[float]] = {load: [] for load in loads}
    for _ in range(rounds):
        for load, values in rates.items():
            stop = threading.Event()
            other = threading.Thread(target=busy, args=(stop, *load, shares[load]), daemon=True)
            if load[0]:
                other.start()
            for _ in range(5):
                up.upscale_array(lr)
            start = time.perf_counter()
            for _ in range(count):
                up.upscale_array(lr)
            values.append(count / (time.perf_counter() - start))
            stop.set()
            if load[0]:
                other.join()
    print(f"bare engine, {count} calls per measure, {rounds} rounds (median; ratio: median of per-round ratios):")
    alone = rates[loads[0]]
    for (cpu_ms, idle), values in rates.items():
        if not cpu_ms:
            print(f"  alone: {statistics.median(values):6.1f} images/s")
            continue
        share = cpu_ms / (cpu_ms + 8) / up.threads  # of all the cores, were it never kept waiting
        got = statistics.median(shares[(cpu_ms, idle)]) / up.threads
        ratio = statistics.median(a / b for a, b in zip(values, alone))
        kind = "SCHED_IDLE" if idle else "normal    "
        print(f"  other thread ({kind}) {cpu_ms:.0f} ms CPU per 8 ms sleep (asks about {100 * share:.0f}% of the cores, got {100 * got:.0f}%): {statistics.median(values):6.1f} images/s, {ratio:.2f}x alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default, srgan or a .onnx file (the stream variants need OpenVINO)")
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--parts", default="variants,contention")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside the measurements")
    args = parser.parse_args()
    from srdeploy.runtime.cpus import cpu_info

    print(cpu_info().describe() + (f"; {args.busy} busy processes beside" if args.busy else ""), flush=True)
    parts = args.parts.split(",")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        if "variants" in parts:
            variants(args.model, args.count, args.rounds)
        if "contention" in parts:
            contention(args.model, args.count, args.rounds)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


if __name__ == "__main__":
    main()
