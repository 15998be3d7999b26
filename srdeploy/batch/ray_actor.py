"""What runs on a Ray cluster's workers for ``srdeploy upscale --ray``: the engine check, the
header pass and the actors that upscale.

Rows and results are small: an input's :class:`~srdeploy.batch.jobs.Job` goes in, its
value from srdeploy.batch.steps comes out (a staged output or a final outcome), both
pickled. Pixels never travel: an actor reads its inputs from their files or objects and
writes its outputs itself (srdeploy.batch.steps.Folder or srdeploy.batch.stores.Bucket).
Every failure of one input becomes that input's failed result here, so Ray never sees an
error from a bad file (it would fail the whole dataset).
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

from srdeploy.batch.jobs import Settings, failure_reason
from srdeploy.batch.steps import Folder, InputSteps, elapsed, failed
from srdeploy.io import imaging

# What the engine check reports as a one-line error rather than a crash (as the local CLI).
START_ERRORS = (ImportError, ValueError, RuntimeError, OSError)


def check_engine(model: str, provider: str, precision: str, tile: int, threads: int) -> dict[str, Any]:
    """Open the engine once as an actor will (on a node with the actor's resources) and say
    what runs: the Upscaler's describe() and the note of what auto picked, or ``error``."""
    from srdeploy.runtime.upscaler import Upscaler

    try:
        upscaler = Upscaler(model, provider=provider, tile=tile, threads=threads, precision=precision)
    except START_ERRORS as e:
        return {"error": str(e) or type(e).__name__}
    return {**upscaler.describe(), "note": upscaler.engine_why}


def read_headers(batch: dict[str, Any], max_pixels: int) -> dict[str, Any]:
    """Ray Data task: each input's header (imaging.probe) or the ImageError it gives, for
    srdeploy.batch.run.plan on the driver."""
    imaging.allow_pixels(max_pixels)
    headers = []
    for blob, shown in zip(batch["source"], batch["shown"]):  # shown: the input as the user gave it
        headers.append(pickle.dumps(_header(pickle.loads(blob), str(shown), max_pixels)))
    return {"index": batch["index"], "header": headers}


def _header(source: Path | str, shown: str, max_pixels: int) -> imaging.ImageInfo | imaging.ImageError:
    try:
        if isinstance(source, Path):
            return imaging.probe(source, shown, max_pixels)  # reads the header only
        from srdeploy.batch.stores import read_uri

        return imaging.probe(read_uri(source), shown, max_pixels)
    except imaging.ImageError as e:
        return e
    except OSError as e:
        return imaging.ImageError(f"{shown}: cannot read ({e.strerror or e})")
    except Exception as e:  # a store's own error: this input fails, not the batch
        return imaging.ImageError(f"{shown}: {failure_reason(e, shown)}")


class _Vouched:
    """Stands in for the journal on a worker, for a folder's outputs: the records that
    vouch for this batch's outputs (Journal.vouching), which the driver looked up."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, dict]] = {}

    def last_ok(self, output: str, output_sha256: str | None) -> dict | None:
        return self.records.get(output, {}).get(output_sha256) if output_sha256 else None


class Roster:
    """The writers of one run: a small Ray actor of the driver's, where each Upscaling actor
    signs in as it starts (its handle, node and PID) before it may write. The driver closes
    it to stop them all (srdeploy.batch.ray_run.stop_writers); an actor that starts later is
    refused and never writes."""

    def __init__(self) -> None:
        self.open, self.writers = True, {}

    def sign_in(self, actor_id: str, handle: Any, node_id: str, pid: int) -> bool:
        if self.open:
            self.writers[actor_id] = (handle, node_id, pid)  # a restarted actor: its new process
        return self.open

    def close(self) -> list[tuple[Any, str, int]]:
        self.open = False
        return list(self.writers.values())


def sign_in(roster: Any) -> None:
    """Called by a writer actor as it starts: sign in to the run's Roster, or raise (never to
    write) when the run is stopping."""
    import ray

    context = ray.get_runtime_context()
    if not ray.get(roster.sign_in.remote(context.get_actor_id(), context.current_actor, context.get_node_id(), os.getpid())):
        raise RuntimeError("the run is stopping")


def wait_exit(pid: int, seconds: float) -> None:
    """Ray task, run on the node of process ``pid``: wait until it has exited (a zombie has
    too: it writes nothing more), for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def is_running(pid: int) -> bool:
    """Whether process ``pid`` still runs; a zombie does not."""
    if not Path("/proc/self").is_dir():  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's: it exists
            pass
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Upscaling:
    """A Ray Data actor: one Upscaler (one engine session, opened once when the actor
    starts), then for each input of a batch the steps up to ``store``: read, rerun check,
    decode, upscale, encode, and the output staged (a folder) or written (a bucket)."""

    def __init__(self, model: str, provider: str, precision: str, tile: int, threads: int, settings: Settings, out: Path | str, roster: Any, run: str):
        from srdeploy.runtime.upscaler import Upscaler

        sign_in(roster)
        imaging.allow_pixels(settings.max_pixels)
        upscaler = Upscaler(model, provider=provider, tile=tile, threads=threads, precision=precision)
        if isinstance(out, Path):
            place, self.vouched = Folder(out), _Vouched()
            journal: Any = self.vouched
        else:
            from srdeploy.batch.stores import Bucket

            place = journal = Bucket(out, run)  # its objects' metadata vouch for them (and name the run)
            self.vouched = None
        self.steps = InputSteps(upscaler, place, settings, journal, None)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        jobs = [pickle.loads(blob) for blob in batch["job"]]
        if self.vouched is not None:
            self.vouched.records = {str(job.output): pickle.loads(made) for job, made in zip(jobs, batch["made"])}
        outcomes = []
        for job in jobs:
            try:
                value = self.steps.through_store(job)
            except Exception as e:  # what the steps do not catch still fails this input alone
                value = failed(job, e)
            outcomes.append(pickle.dumps((value, elapsed(value))))
        return {"index": batch["index"], "outcome": outcomes}
