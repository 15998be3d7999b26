"""Overlap reading, decoding, encoding and writing with inference, in input order.

On a CPU the model takes most of a batch's time, but not all of it: reading and decoding
an input, compressing its output (PNG's zlib above all) and the fsyncs of the temp file
and the journal used to run between model calls, in series with them. Here every job
goes through four steps on three kinds of thread::

    worker threads   load(job 3)                 store(job 1)      read, decode / encode, temp file
    calling thread             upscale(job 2)                      the model
    commit thread                                      commit(job 0)   journal, rename, report

Pillow, zlib, hashlib and file I/O release the GIL, and so does ONNX Runtime while it runs,
so the workers use the time the model leaves a core idle or waits on the disk.

Guarantees:

- commits happen one at a time, in input order, so results are reported and journalled in
  input order whatever order the workers finish in;
- memory stays bounded: at most ``Limits.in_flight`` jobs between load and commit, and at
  most ``Limits.budget`` output pixels among them, except that a job heavier than the
  budget is let in when nothing else is in flight (so a huge image runs alone, as in a
  serial batch);
- a step that raises (steps turn the failures of one input into a :class:`Done` value,
  so this means the batch cannot go on: the journal cannot be written, a bug) or a
  KeyboardInterrupt stops the run: jobs not started are dropped, steps already running
  finish, a commit already begun completes, and every stored result not committed is
  handed to ``discard`` (which removes its temp file) before the exception propagates.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, TypeVar

Job = TypeVar("Job")


class Done:
    """Base class of a job's final outcome. A step that returns one skips the steps after
    it; ``commit`` still receives it, in its place in the input order."""


@dataclass(frozen=True)
class Steps(Generic[Job]):
    """What happens to each job, and on which thread."""

    load: Callable[[Job], Any]  # worker: job -> loaded | Done
    upscale: Callable[[Any], Any]  # calling thread: loaded -> upscaled | Done
    store: Callable[[Any], Any]  # worker: upscaled -> stored | Done
    commit: Callable[[Any], None]  # commit thread, input order: stored | Done
    discard: Callable[[Any], None]  # commit thread: a stored value that will not be committed (stopping, or its commit raised)


@dataclass(frozen=True)
class Limits:
    """How much runs at once."""

    workers: int = 2  # threads for load and store
    in_flight: int = 6  # jobs between load and commit
    budget: int = 32 * 2**20  # output pixels among them (32 Mpx: about 100 MiB as 8-bit RGB)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.in_flight < 1 or self.budget < 1:
            raise ValueError(f"pipeline limits must be positive, got {self}")


def run_in_order(jobs: Iterable[Job], steps: Steps[Job], limits: Limits = Limits(), weight: Callable[[Job], int] = lambda job: 0) -> None:
    """Run every job through load -> upscale -> store -> commit (see the module docstring);
    return when all are committed. ``weight`` is a job's output pixels, for the budget."""
    _Pipeline(steps, limits, weight).run(jobs)


class _Pipeline(Generic[Job]):
    def __init__(self, steps: Steps[Job], limits: Limits, weight: Callable[[Job], int]):
        self.steps, self.limits, self.weight = steps, limits, weight
        self.loading: deque[tuple[Job, Future]] = deque()  # load futures, input order
        self.committing: deque[tuple[Job, Future]] = deque()  # commit futures, input order
        self.pixels_in_flight = 0
        self.stopping = threading.Event()  # set: commits not yet begun discard instead
        # Stored values neither committed nor discarded, by id: what a stop must discard,
        # even one whose commit a Ctrl-C kept from being queued.
        self.uncommitted: dict[int, Any] = {}
        self.uncommitted_lock = threading.Lock()

    def run(self, jobs: Iterable[Job]) -> None:
        waiting = deque(jobs)
        self.workers = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="srdeploy-io")
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="srdeploy-commit")
        try:
            while waiting or self.loading or self.committing:
                self._admit(waiting)
                if self.loading:
                    self._upscale_next()
                    self._retire(block=False)
                else:  # at the end, or waiting for room in the budget
                    self._retire(block=True)
        except BaseException:
            self._stop()
            raise
        finally:
            self.workers.shutdown()
            self.committer.shutdown()

    def _admit(self, waiting: deque[Job]) -> None:
        """Start loading waiting jobs while the limits allow."""
        while waiting and len(self.loading) + len(self.committing) < self.limits.in_flight:
            pixels = self.weight(waiting[0])
            idle = not (self.loading or self.committing)
            if not idle and self.pixels_in_flight + pixels > self.limits.budget:
                return
            job = waiting.popleft()
            self.pixels_in_flight += pixels
            self.loading.append((job, self.workers.submit(self.steps.load, job)))

    def _upscale_next(self) -> None:
        """The oldest loaded job through the model here, then on to store and commit."""
        job, loading = self.loading.popleft()
        value = loading.result()  # a load that raised stops the batch here
        if not isinstance(value, Done):
            value = self.steps.upscale(value)
        stored = value if isinstance(value, Done) else self.workers.submit(self._store, value)
        self.committing.append((job, self.committer.submit(self._commit, stored)))

    def _store(self, value: Any) -> Any:
        """On a worker: the store step, its result registered until committed or discarded."""
        stored = self.steps.store(value)
        if not isinstance(stored, Done):
            with self.uncommitted_lock:
                self.uncommitted[id(stored)] = stored
        return stored

    def _commit(self, stored: Future | Done) -> None:
        """On the commit thread, in submission (= input) order."""
        try:
            value = stored.result() if isinstance(stored, Future) else stored
        except BaseException:  # its store raised, or a stop cancelled it: nothing to discard
            self.stopping.set()
            raise
        if self.stopping.is_set():
            self._discard(value)
            return
        try:
            self.steps.commit(value)
        except BaseException:
            self.stopping.set()  # nothing is committed past a job whose commit failed
            self._discard(value)  # which may have left its temp file
            raise
        self._settled(value)

    def _discard(self, value: Any) -> None:
        if not isinstance(value, Done) and self._settled(value):
            self.steps.discard(value)

    def _settled(self, value: Any) -> bool:
        """Forget a stored value (committed or discarded now); whether it was still waiting."""
        with self.uncommitted_lock:
            return self.uncommitted.pop(id(value), None) is not None

    def _retire(self, block: bool) -> None:
        """Collect finished commits in order (waiting for the oldest if ``block``), freeing
        their room; an exception a step raised is raised here."""
        while self.committing and (block or self.committing[0][1].done()):
            job, committed = self.committing.popleft()
            committed.result()
            self.pixels_in_flight -= self.weight(job)
            block = False

    def _stop(self) -> None:
        """Drop what has not started, let what runs finish, discard what was not committed."""
        self.stopping.set()
        for _, loading in self.loading:
            loading.cancel()
        self.workers.shutdown(wait=True, cancel_futures=True)  # running loads and stores finish
        self.committer.shutdown(wait=True)  # queued commits now discard their stored values
        for value in list(self.uncommitted.values()):  # stored, but its commit was never queued
            self._discard(value)
