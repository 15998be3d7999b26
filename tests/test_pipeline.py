"""srdeploy.batch.pipeline with stand-in steps: input order, bounds, and stopping cleanly."""

from __future__ import annotations

import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from srdeploy.batch import pipeline


class Recorder:
    """Stand-in steps that sleep a little at random (so workers finish out of order) and
    record what happened: commits in order, live "temp files", jobs in flight."""

    def __init__(self, failing: set[int] = frozenset(), weights: dict[int, int] | None = None, seed: int = 0):
        self.failing, self.weights = failing, weights or {}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.committed: list[object] = []
        self.temp_files: set[int] = set()
        self.discarded: list[int] = []
        self.active: set[int] = set()  # loaded and not yet committed or discarded
        self.max_active = 0
        self.max_pixels = 0
        self.alone: dict[int, bool] = {}  # job -> nothing else was active when it loaded

    def nap(self) -> None:
        with self.lock:
            seconds = self.rng.uniform(0, 0.004)
        time.sleep(seconds)

    def load(self, job: int):
        with self.lock:
            self.alone[job] = not self.active
            self.active.add(job)
            self.max_active = max(self.max_active, len(self.active))
            self.max_pixels = max(self.max_pixels, sum(self.weight(j) for j in self.active))
        self.nap()
        return Failed(job) if job in self.failing else job

    def upscale(self, job: int) -> int:
        return job

    def store(self, job: int) -> int:
        self.nap()
        with self.lock:
            self.temp_files.add(job)
        return job

    def commit(self, value) -> None:
        job = value.job if isinstance(value, Failed) else value
        with self.lock:
            self.temp_files.discard(job)
            self.active.discard(job)
            self.committed.append(value)

    def discard(self, job: int) -> None:
        with self.lock:
            self.discarded.append(job)
            self.temp_files.discard(job)
            self.active.discard(job)

    def weight(self, job: int) -> int:
        return self.weights.get(job, 1)

    def steps(self, **overrides) -> pipeline.Steps:
        parts = dict(load=self.load, upscale=self.upscale, store=self.store, commit=self.commit, discard=self.discard)
        return pipeline.Steps(**{**parts, **overrides})


class Failed(pipeline.Done):
    def __init__(self, job: int):
        self.job = job

    def __eq__(self, other) -> bool:
        return isinstance(other, Failed) and other.job == self.job


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("srdeploy-io", "srdeploy-commit"))]


def test_commits_come_in_input_order_with_failures_in_their_place():
    rec = Recorder(failing={3, 4, 11})
    jobs = list(range(40))
    pipeline.run_in_order(jobs, rec.steps(), pipeline.Limits(workers=3, in_flight=6))
    assert rec.committed == [Failed(j) if j in rec.failing else j for j in jobs]
    assert not rec.temp_files and not pipeline_threads()
    assert 1 < rec.max_active <= 6  # it did overlap, within the bound


def test_in_flight_jobs_and_pixels_stay_within_the_limits_and_a_heavy_job_runs_alone():
    weights = {5: 100, 12: 100}  # heavier than the whole budget
    rec = Recorder(weights=weights, seed=1)
    limits = pipeline.Limits(workers=2, in_flight=4, budget=10)
    pipeline.run_in_order(range(20), rec.steps(), limits, weight=rec.weight)
    assert rec.committed == list(range(20))
    assert rec.max_active <= 4
    assert rec.alone[5] and rec.alone[12]
    assert rec.max_pixels == 100  # the heavy jobs, each with nothing beside it; the rest within 10


def test_an_error_while_committing_stops_the_run_and_removes_what_was_not_committed():
    rec = Recorder(seed=2)

    def commit(value):
        if value == 7:
            raise OSError(28, "No space left on device")
        rec.commit(value)

    with pytest.raises(OSError, match="No space left"):
        pipeline.run_in_order(range(30), rec.steps(commit=commit), pipeline.Limits(workers=2, in_flight=6))
    assert rec.committed == list(range(7))  # nothing is committed past the failure
    assert not rec.temp_files and not pipeline_threads()


def test_an_unexpected_error_in_a_worker_step_stops_the_run():
    rec = Recorder(seed=3)

    def load(job):
        if job == 9:
            raise RuntimeError("a bug in load")
        return rec.load(job)

    with pytest.raises(RuntimeError, match="a bug in load"):
        pipeline.run_in_order(range(30), rec.steps(load=load), pipeline.Limits(workers=2, in_flight=5))
    assert rec.committed == list(range(len(rec.committed))) and len(rec.committed) <= 9
    assert not rec.temp_files and not pipeline_threads()


def test_keyboard_interrupt_during_the_model_discards_stored_outputs_and_ends_every_thread():
    rec = Recorder(seed=4)

    def slow_commit(value):  # stored outputs queue up behind it, uncommitted, when Ctrl-C comes
        time.sleep(0.03)
        rec.commit(value)

    def upscale(job):
        if job == 8:
            raise KeyboardInterrupt
        return job

    with pytest.raises(KeyboardInterrupt):
        pipeline.run_in_order(range(30), rec.steps(upscale=upscale, commit=slow_commit), pipeline.Limits(workers=2, in_flight=6))
    assert rec.committed == list(range(len(rec.committed))) and len(rec.committed) < 8
    assert rec.discarded, "nothing was in flight: the test did not test the stop"
    assert not rec.temp_files, "a stored output was neither committed nor discarded"
    assert not pipeline_threads()


def test_ctrl_c_between_a_store_and_its_commit_still_discards_the_stored_output(monkeypatch):
    """The interrupt lands after a job's store was handed to a worker and before its
    commit was queued: only the pipeline knows the stored value then."""
    rec = Recorder(seed=5)
    commits = itertools.count()

    class CtrlCBeforeTheFifthCommit(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            if getattr(fn, "__name__", "") == "_commit" and next(commits) == 4:
                time.sleep(0.05)  # the store on the worker finishes meanwhile
                raise KeyboardInterrupt
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(pipeline, "ThreadPoolExecutor", CtrlCBeforeTheFifthCommit)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_in_order(range(12), rec.steps(), pipeline.Limits(workers=2, in_flight=6))
    assert 4 in rec.discarded and 4 not in rec.committed
    assert not rec.temp_files, "a stored output was neither committed nor discarded"
    assert not pipeline_threads()


def test_limits_are_checked():
    with pytest.raises(ValueError, match="must be positive"):
        pipeline.Limits(workers=0)
