"""A bucket's journal, ``OUT/upscale-journal.jsonl`` on an object store, which drivers on
several machines may write at once.

An object store has no append and no lock, only whole-object PUTs (each atomic). So a
driver appends its records to a local file during the run (:func:`spool`: a Journal like
any other, durable and locked on this machine) and publishes them when the run ends
(:func:`publish`), in three steps:

1. each run in the local file gets an object of its own, ``OUT/upscale-journal-runs/RUN.jsonl``,
   which no other run writes: no later PUT can take its records away;
2. the bucket's journal is read, the runs it lacks are appended, and it is written back:
   this run, a run on this machine killed before it could publish, and any run whose own
   object is there but whose records are not (a driver that read the journal just before
   another's PUT and wrote it back just after, without them);
3. the local file is emptied: what it held is in the bucket.

Step 2 is a read, then a write: two drivers publishing at the same moment can still drop
each other's records from ``upscale-journal.jsonl``, but not from their own objects, and
the next run to publish there puts them back. Runs are told apart by their run id
(Journal.run), which is unique to each run.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from srdeploy.batch.jobs import JOURNAL_NAME

RUNS_FOLDER = "upscale-journal-runs"  # in OUT, beside the journal: one object per run
_RUN = re.compile(rb'(?m)^\{"run": "([\w.-]+)"')  # how Journal.append starts every line: the run id first


def spool(bucket: Any) -> Path:
    """The driver's local file for a bucket's journal: this machine's records that are not
    in the bucket yet (a run killed before it published leaves its records here for the
    next run on this machine to publish)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = cache / "srdeploy" / "journals" / hashlib.sha256(bucket.uri.encode()).hexdigest()[:16] / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def publish(bucket: Any, local: Path) -> None:
    """Put the records in ``local`` into the bucket's journal, losing none there, as the
    module docstring says; then empty ``local``. Call while holding its Journal's lock."""
    waiting = runs_of(local.read_bytes())
    journal = bucket.download(JOURNAL_NAME) or b""
    present = run_ids(journal)
    missing = {run: lines for run, lines in waiting.items() if run not in present}
    for run, lines in missing.items():
        bucket.upload(f"{RUNS_FOLDER}/{run}.jsonl", b"".join(line + b"\n" for line in lines))
    for name in bucket.names(RUNS_FOLDER):
        run = name.removesuffix(".jsonl")
        if name.endswith(".jsonl") and run not in present and run not in missing:  # published, then dropped by another driver's PUT
            missing[run] = (bucket.download(f"{RUNS_FOLDER}/{name}") or b"").splitlines()
    if missing:
        bucket.upload(JOURNAL_NAME, appended(journal, missing))
    os.truncate(local, 0)


def runs_of(journal: bytes) -> dict[str, list[bytes]]:
    """A journal's lines by the run that wrote them, runs in the order they first appear. A
    line that names no run (the torn last line of a killed run, a hand edit) goes with the
    run of the line before it; lines before any run's, with the first run."""
    runs: dict[str, list[bytes]] = {}
    current, before = None, []
    for line in journal.splitlines():
        if named := _RUN.match(line):
            current = named[1].decode()
        if current is None:
            before.append(line)
            continue
        if current not in runs:
            runs[current] = before if not runs else []
        runs[current].append(line)
    return runs


def run_ids(journal: bytes) -> set[str]:
    """The runs a journal holds records of (without splitting it into lines: it may be long)."""
    return {named[1].decode() for named in _RUN.finditer(journal)}


def appended(journal: bytes, runs: dict[str, list[bytes]]) -> bytes:
    """``journal`` with the lines of ``runs`` after it, the runs in the order of their ids
    (which begin with the time each started)."""
    added = b"".join(line + b"\n" for run in sorted(runs) for line in runs[run])
    return journal + (b"\n" if journal and not journal.endswith(b"\n") else b"") + added
