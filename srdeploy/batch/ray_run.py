"""``srdeploy upscale --ray``: the batch of srdeploy.batch.run, on a Ray cluster, with Ray Data.

::

    driver                                         workers (srdeploy.batch.ray_actor)
    engine check  ───────────────────────────────► check_engine: one task with an actor's resources
    collect: list the inputs (folders, URIs)
    rows: each input ────────────────────────────► read_headers: Ray Data tasks
    plan: formats, names, clashes  ◄───────────────  each header, or its error
    rows: each job + its journal record ─────────► Upscaling actors (one Upscaler each): read,
                                                   rerun check, decode, upscale, encode, and
                                                   stage (folder) or PUT (bucket) the output
    commit in input order  ◄───────────────────────  each input's value: a result record and
    (journal, rename, report, progress bar)          a temp file name, never pixels

The guarantees are the local batch's, with its code: the steps and the commit protocol
(srdeploy.batch.steps), planning and the journal record (srdeploy.batch.run). Results
come back in whatever order the actors finish; the driver holds each until those before
it are committed. A worker that dies is restarted by Ray and its task retried: its inputs
are redone, a second answer for an input is discarded with its temp file (a bucket's
object that an earlier attempt PUT carries the run's id, so its input is still ``ok``,
not ``skipped``). Ctrl-C (or a
cluster error) stops the dataset, stops every actor (stop_writers: their processes have
exited), removes the temp files of the outputs not committed and raises; a bucket's
outputs are whole objects or none.

The journal stays on the driver, with the listing and the plan: for a folder it is
``OUT/upscale-journal.jsonl`` as always; for a bucket it is appended to a local file and
published to ``OUT/upscale-journal.jsonl`` when the run ends (srdeploy.batch.bucket_journal:
drivers on several machines may write to one bucket at once).
"""

from __future__ import annotations

import math
import pickle
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from srdeploy.batch import bucket_journal, ray_cluster
from srdeploy.batch.jobs import JOURNAL_NAME, Job, Result, Settings, Summary
from srdeploy.batch.journal import Journal
from srdeploy.batch.ray_actor import Roster, Upscaling, check_engine, read_headers, wait_exit
from srdeploy.batch.run import (
    Recorder, collect, make_output_folder, plan, progress_bar, refuse_nothing_to_do, refuse_output_among_inputs, settings_record, stray_result, strays_in_output, walked_inside_output,
)
from srdeploy.batch.steps import Committer, Folder, arrived, is_staged
from srdeploy.io.files import display
from srdeploy.runtime import engines
from srdeploy.runtime.zoo import MODEL_SUFFIXES

ROWS_PER_CALL = 8  # inputs per actor call: its results reach the driver together
CALLS_PER_ACTOR = 16  # blocks of rows per actor: the unit Ray retries when a worker dies
HEADERS_PER_TASK = 256
ENGINE_CHECK_SECONDS = 600  # a fresh GPU node may build a TensorRT engine first
WRITER_EXIT_SECONDS = 30


class RayBatch:
    """A batch on a Ray cluster: ``with RayBatch(address) as batch: batch.start(...);
    batch.run(...)``. Leaving the block leaves the cluster (a ``local`` one stops)."""

    def __init__(self, address: str, actors: int | None = None, cpus_per_actor: float | None = None):
        self.address, self.actors, self.cpus_per_actor = address, actors, cpus_per_actor
        self.engine: dict[str, Any] = {}

    def __enter__(self) -> RayBatch:
        ray_cluster.connect(self.address)
        return self

    def __exit__(self, *exc) -> None:
        ray_cluster.disconnect()

    def start(self, model: str, provider: str, precision: str, tile: int) -> dict[str, Any]:
        """Open the engine once on the cluster, as an actor will, and size the pool for what
        it picked; the actors then run exactly that engine and precision, so every output
        comes from the same one. Returns the Upscaler's describe() (with ``note``)."""
        import ray

        nodes = ray_cluster.nodes()
        wants_gpu = provider in engines.GPU_PROVIDERS or (provider == "auto" and any(n.get("GPU", 0) for n in nodes))
        trial = ray_cluster.size_pool("cuda" if wants_gpu else "cpu", 1, self.cpus_per_actor, nodes)
        self.model = str(Path(model).expanduser().resolve()) if Path(model).suffix.lower() in MODEL_SUFFIXES else model  # workers run elsewhere
        self.tile = tile
        check = ray.remote(check_engine).options(num_cpus=trial.cpus, num_gpus=trial.gpus)
        try:
            engine = ray.get(check.remote(self.model, provider, precision, tile, trial.threads), timeout=ENGINE_CHECK_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise ray_cluster.ClusterError(f"the cluster did not open the engine within {ENGINE_CHECK_SECONDS} s") from None
        if "error" in engine:
            raise ray_cluster.ClusterError(engine["error"])
        self.pool = ray_cluster.size_pool(engine["provider"], self.actors, self.cpus_per_actor, nodes)
        self.engine = {**engine, "threads": self.pool.threads}
        return self.engine

    def run(
        self, inputs: list[Path | str], out: Path | str, settings: Settings,
        report: Callable[[Result], None] | None = None, progress: bool = False,
    ) -> Summary:
        """The batch (see srdeploy.batch.run.run_batch, whose rules and records it keeps)."""
        started = time.perf_counter()
        out = out.absolute() if isinstance(out, Path) else out.rstrip("/")
        refuse_output_among_inputs(inputs, out)
        files, decided, unentered_dirs = collect(inputs, settings.recursive, out)
        refuse_nothing_to_do(inputs, files, decided, unentered_dirs)
        if isinstance(out, Path):
            make_output_folder(out)
            place: Any = Folder(out)
            journal = Journal(out / JOURNAL_NAME)
        else:
            from srdeploy.batch.stores import Bucket

            place = Bucket(out)
            journal = Journal(bucket_journal.spool(place))
        summary = Summary(journal=journal.path if isinstance(out, Path) else f"{out}/{JOURNAL_NAME}", unentered_dirs=unentered_dirs)  # type: ignore[arg-type]
        jobs: list[Job] = []
        with journal.lock():
            try:
                journal.append({"event": "run", "settings": settings_record(settings), **_describe(self.engine), "ray": self.pool.describe()})
                strays = strays_in_output(inputs, out, settings.recursive, journal)
                jobs, refused = plan(files, settings, self.engine["scale"], place, self._headers(files, settings.max_pixels), protected=strays,
                                     read_back=walked_inside_output(inputs, out, settings.recursive))
                decided += [(len(files), stray_result(path, out)) for path in strays]
                if isinstance(place, Folder):
                    place.sweep(job.output for job in jobs)  # temp files a killed run left; the lock says none is live
                # Workers run elsewhere: they read absolute paths; results name inputs as given, as the local batch does.
                jobs = [replace(job, source=_absolute(job.source)) for job in jobs]
                record = Recorder(journal, summary, report, jobs, decided=decided + refused)
                with progress_bar(len(jobs), len(decided) + len(refused), progress) as bar:
                    self._upscale(jobs, place, journal, settings, record, bar)
                record.close()
            finally:
                if isinstance(place, Folder):
                    place.sweep(job.output for job in jobs)  # a dead worker's temp files: every value is committed or discarded now
                else:
                    bucket_journal.publish(place, journal.path)
        summary.seconds = time.perf_counter() - started
        return summary

    def _headers(self, files: list[tuple[Path | str, Any]], max_pixels: int) -> list:
        """Every input's header, read by Ray Data tasks, in input order."""
        import ray.data

        rows = [{"index": i, "source": pickle.dumps(_absolute(path)), "shown": display(path)} for i, (path, _) in enumerate(files)]
        if not rows:
            return []
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / HEADERS_PER_TASK)))
        dataset = dataset.map_batches(read_headers, fn_kwargs={"max_pixels": max_pixels}, batch_size=None, num_cpus=1)
        headers: list = [None] * len(rows)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for index, blob in zip(batch["index"], batch["header"]):
                headers[int(index)] = pickle.loads(blob)
        return headers

    def _upscale(self, jobs: list[Job], place: Any, journal: Journal, settings: Settings, record: Recorder, bar: Any) -> None:
        """The jobs through the actor pool, committed on this thread in input order."""
        if not jobs:
            return
        import ray

        roster = ray.remote(Roster).options(num_cpus=0).remote()
        try:
            self._through_actors(jobs, place, journal, settings, record, bar, roster)
        except BaseException:
            # Stopped mid-run, actors may still be writing. A run that got every answer has
            # none: Ray Data's iteration ends only when all its tasks have returned.
            stop_writers(roster)
            raise
        finally:
            ray.kill(roster)

    def _through_actors(self, jobs: list[Job], place: Any, journal: Journal, settings: Settings, record: Recorder, bar: Any, roster: Any) -> None:
        import ray.data

        rows = job_rows(jobs, journal, place)
        blocks = min(len(rows), self.pool.actors * CALLS_PER_ACTOR)
        out = place.root if isinstance(place, Folder) else place.uri
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            Upscaling,
            fn_constructor_kwargs=dict(
                model=self.model, provider=self.engine["provider"], precision=self.engine["precision"], tile=self.tile,
                threads=self.pool.threads, settings=settings, out=out, roster=roster, run=uuid.uuid4().hex,
            ),
            batch_size=ROWS_PER_CALL, compute=ray.data.ActorPoolStrategy(size=self.pool.actors),
            num_cpus=self.pool.cpus, num_gpus=self.pool.gpus or None,
        )
        failed = 0

        def finish(result: Result, extra: dict) -> None:
            nonlocal failed
            record(result, **extra)
            if result.status == "failed":
                failed += 1
                bar.set_postfix(failed=failed)

        committer = Committer(place, journal, finish)
        pending: dict[int, Any] = {}  # results that arrived before those ahead of them
        committed = 0
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, blob in zip(batch["index"], batch["outcome"]):
                    index = int(index)
                    value, took = pickle.loads(blob)
                    if index < committed or index in pending:  # a retried task's second answer
                        if is_staged(value):
                            committer.discard(value)
                        continue
                    pending[index] = arrived(value, took)
                    bar.update()
                while committed in pending:
                    committer.commit(pending.pop(committed))
                    committed += 1
        except BaseException:
            for value in pending.values():
                if is_staged(value):
                    committer.discard(value)
            raise
        if committed != len(jobs):
            raise RuntimeError(f"the cluster answered for {committed} of {len(jobs)} inputs")


def stop_writers(roster: Any) -> None:
    """Kill the run's Upscaling actors and wait until their processes have exited, so that
    none stages a file after the run's last sweep: Ray's kill is asynchronous, and Ray Data
    does not wait for its actors when a dataset stops (on Ctrl-C, mid-write). It is called
    while an error is on its way up, so it raises none of its own: a wait that fails (a
    lost node, a timeout) is let go, and the next run's sweep removes what such a writer left."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        writers = ray.get(roster.close.remote(), timeout=WRITER_EXIT_SECONDS)
        for handle, _, _ in writers:
            ray.kill(handle, no_restart=True)
        waits = [
            ray.remote(wait_exit).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(pid, WRITER_EXIT_SECONDS)
            for _, node, pid in writers
        ]
        ray.get(waits, timeout=WRITER_EXIT_SECONDS + 10)
    except ray.exceptions.RayError:
        pass


def _absolute(source: Path | str) -> Path | str:
    return source.absolute() if isinstance(source, Path) else source


def job_rows(jobs: list[Job], journal: Journal, place: Any) -> list[dict[str, Any]]:
    """The dataset's rows: each job, and for a folder the journal records that vouch for
    its output (only the driver reads the journal; a bucket's objects vouch for themselves)."""
    return [
        {"index": i, "job": pickle.dumps(job), "made": pickle.dumps(journal.vouching(str(job.output)) if isinstance(place, Folder) else {})}
        for i, job in enumerate(jobs)
    ]


def _describe(engine: dict[str, Any]) -> dict[str, Any]:
    """The run record's engine fields: the Upscaler's describe(), as the local batch writes it."""
    return {k: v for k, v in engine.items() if k != "note"}
