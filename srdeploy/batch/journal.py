"""The batch journal: one JSON object per line, appended and fsynced, never rewritten.

A run killed mid-append leaves at most one partial last line; readers skip lines that do
not parse, and the next append starts on a fresh line. Records carry the run id and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

# Records that vouch for an output file: "writing" is appended just before the temp file
# is renamed into place, "ok" right after; either proves the file when its sha256 matches.
_VOUCHING = ("writing", "ok")


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self._made: dict[str, dict[str, Any]] | None = None
        self._reading = threading.Lock()  # the batch's loader threads ask last_ok at once

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, oldest first."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                record = json.loads(line.decode("utf-8", "surrogateescape"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # the torn last line of a killed run
            if isinstance(record, dict):
                yield record

    def last_ok(self, output: str) -> dict[str, Any] | None:
        """The newest record that vouches for ``output`` (relative path), as of the first call."""
        with self._reading:
            if self._made is None:
                made = {}
                for record in self.records():
                    if record.get("status") in _VOUCHING and record.get("output") and record.get("output_sha256"):
                        made[record["output"]] = record
                self._made = made
        return self._made.get(output)

    def append(self, record: dict[str, Any]) -> None:
        record = {"run": self.run, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        line = json.dumps(record, ensure_ascii=False)
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:  # undecodable file names: fall back to \\u escapes
            data = json.dumps(record).encode("ascii")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > 0 and not _ends_with_newline(self.path):
                f.write(b"\n")
            f.write(data + b"\n")
            f.flush()
            os.fsync(f.fileno())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on OUT for the run: two batches writing into one folder
        would remove each other's temp files. Released by the OS if the process dies."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; run one batch per folder
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / ".srdeploy-upscale.lock", "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another srdeploy upscale is writing to {display(self.path.parent)}; wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def display(path: os.PathLike | str | None) -> str:
    """A path as printable text, even when its name is not valid UTF-8."""
    return os.fsencode(os.fspath(path or "")).decode("utf-8", "replace")
