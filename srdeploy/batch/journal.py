"""The batch journal: one JSON object per line, appended, never rewritten.

Each record reaches the kernel in one write as it is appended, so a killed process loses
none. Only records that vouch for an output about to be renamed into place (``writing``)
are fsynced at once, for a power cut; the rest are fsynced when the run lets go of the
journal (:meth:`Journal.lock`): losing them loses nothing a rerun needs.

A run killed mid-append leaves at most one partial last line; readers skip lines that do
not parse, and the next append starts on a fresh line. Records carry the run id and time.

A rerun reads the journal a block at a time and keeps, for each output, the line of the
newest record that vouches for each sha256 it was given: its memory grows with the outputs,
not with the journal, whose reruns' ``skipped`` records are most of its lines once it is long,
and are not even parsed (:func:`_may_vouch`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from srdeploy.io.files import display, folder_lock, open_regular

# Records that vouch for an output file: "writing" is appended just before the temp file
# is renamed into place, "ok" right after; either proves the file when its sha256 matches.
_VOUCHING = ("writing", "ok")
# A vouching record as json.dumps writes it holds these bytes as they are; only \u escapes
# (a name that is not UTF-8, or a hand edit) could spell them otherwise.
_OK_MARK, _WRITING_MARK = (json.dumps(status).encode() for status in _VOUCHING)
_SHA256_MARK = json.dumps("output_sha256").encode()
_BLOCK = 1 << 20  # bytes read at a time: a read holds one block's lines at once
LOCK_NAME = ".srdeploy-upscale.lock"  # in OUT, held by the run writing there


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        # The start time, the PID and a random part: two drivers on other machines (containers
        # with small PIDs) may start in one second with one PID, and a bucket's journal tells
        # runs apart by this id (srdeploy.batch.bucket_journal).
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        self._made: dict[str, dict[str, bytes]] | None = None  # output -> its sha256 -> the line of its record
        self._reading = threading.Lock()  # the batch's loader threads ask last_ok at once
        self._file: BinaryIO | None = None  # open for appends while the run holds the lock
        self._torn = True  # whether the file may end without a newline (a killed run's last line)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, oldest first."""
        for line in self._lines():
            record = _parsed(line)
            if record is not None:
                yield record

    def vouching(self, output: str) -> dict[str, dict[str, Any]]:
        """The records that vouch for ``output`` (relative path), as of the first call: the
        newest for each sha256 they give the file, parsed again from their lines."""
        with self._reading:
            if self._made is None:
                self._made = self._vouching_lines()
            lines = self._made.get(output, {})
        return {sha: record for sha, line in lines.items() if (record := _parsed(line)) is not None}  # each line parsed once already

    def _vouching_lines(self) -> dict[str, dict[str, bytes]]:
        """Output -> its sha256 -> the newest line that vouches for it. The line's bytes,
        not its record: a parsed record (a dict, its values and its own copy of every key)
        takes about four times the memory, and a rerun asks for each output once."""
        made: dict[str, dict[str, bytes]] = {}
        for line in self._lines():
            record = _parsed(line) if _may_vouch(line) else None
            if record is None:
                continue
            name, sha = record.get("output"), record.get("output_sha256")
            if record.get("status") in _VOUCHING and name and sha and isinstance(name, str) and isinstance(sha, str):
                made.setdefault(name, {})[sha] = line  # a hand-edited line of other types vouches for nothing
        return made

    def _lines(self) -> Iterator[bytes]:
        """The journal's lines as the read finds it, a block at a time: records appended
        while it reads are left out, as a read of the whole file would have left them."""
        try:
            f = open_regular(self.path)  # a FIFO in its place is refused, not waited on
        except FileNotFoundError:
            return
        except OSError as e:
            raise _unreadable(self.path, e) from e
        with f:
            try:
                left, started = os.fstat(f.fileno()).st_size, [b""]  # started: the blocks of a line not ended yet
                while left > 0 and (block := f.read(min(_BLOCK, left))):
                    left -= len(block)
                    if b"\n" not in block:  # kept apart, not joined again at each block: a long line costs its length
                        started.append(block)
                        continue
                    lines, tail = _whole_lines(b"".join([*started, block]))
                    started = [tail]
                    yield from lines
                yield from b"".join(started).splitlines()  # a last line without its newline: a killed run's, torn
            except OSError as e:
                raise _unreadable(self.path, e) from e

    def last_ok(self, output: str, output_sha256: str | None) -> dict[str, Any] | None:
        """The newest record that vouches for ``output`` as the file is now (its sha256).
        Not simply the newest record: a run killed between a ``writing`` record and its
        rename leaves the file an older record vouches for."""
        return self.vouching(output).get(output_sha256) if output_sha256 else None

    def append(self, record: dict[str, Any], durable: bool = False) -> None:
        """Add a record. ``durable``: fsync it before returning (a record a later step relies
        on through a power cut); always so outside :meth:`lock`, where the file is not kept open."""
        record = {"run": self.run, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        line = json.dumps(record, ensure_ascii=False)
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:  # undecodable file names: fall back to \\u escapes
            data = json.dumps(record).encode("ascii")
        with self._failing_as_journal():
            if self._file is not None:
                self._write(self._file, data, durable)
                return
            with self._open() as f:
                self._write(f, data, durable=True)

    @contextlib.contextmanager
    def _failing_as_journal(self) -> Iterator[None]:
        """An OSError (a full disk, a read-only mount) as a JournalError naming the journal."""
        try:
            yield
        except JournalError:
            raise
        except OSError as e:
            raise JournalError(f"cannot write the journal {display(self.path)} ({e.strerror or e})") from e

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._torn = True
        return open_regular(self.path, append=True)  # unbuffered: each record is one write(); a FIFO is refused

    def _write(self, f: BinaryIO, data: bytes, durable: bool) -> None:
        self._check_in_place(f)
        if self._torn and f.tell() > 0 and not _ends_with_newline(self.path):
            data = b"\n" + data
        self._torn = True  # until the whole line is written
        line = memoryview(data + b"\n")
        while line:
            line = line[f.write(line):]
        self._torn = False
        if durable:
            os.fsync(f.fileno())

    def _check_in_place(self, f: BinaryIO) -> None:
        """JournalError when the open journal is no longer the file at its path: it, or OUT
        with it, was deleted, moved or replaced during the run, and what is appended to it
        now would vouch for nothing a later run can find."""
        held = os.fstat(f.fileno())
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != (held.st_dev, held.st_ino):
            raise JournalError(f"the journal {display(self.path)} was deleted, moved or replaced during the run "
                               "(with the output folder?); its records would be lost")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on OUT for the run, and the journal open for its appends
        (fsynced when the run ends, however it ends): two batches writing into one folder
        would remove each other's temp files. Released by the OS if the process dies."""
        with self._locked():
            with self._failing_as_journal():
                f = self._open()
            with f:
                self._file = f
                try:
                    yield
                finally:
                    self._file = None
                    with self._failing_as_journal():
                        os.fsync(f.fileno())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        busy = f"another srdeploy upscale is writing to {display(folder)}; wait for it to finish"
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(folder_lock(folder, LOCK_NAME, busy))
            except OSError as e:  # a read-only OUT, or something else by that name
                raise JournalError(f"cannot lock the output folder {display(folder)}: {LOCK_NAME} ({e.strerror or e})") from None
            yield


class JournalError(OSError):
    """The journal cannot be written: the batch stops (nothing could vouch for outputs)."""


def _unreadable(path: Path, error: OSError) -> JournalError:
    return JournalError(f"cannot read the journal {display(path)} ({error.strerror or error})")


def _may_vouch(line: bytes) -> bool:
    """Whether a line may hold a record that vouches for an output: one whose bytes hold a
    vouching status and the output_sha256 field, or any escape (a backslash: a Windows path
    has them, and a name that is not UTF-8 its \\u escapes). The rest (run records, failed
    and skipped inputs) are not parsed."""
    return (_SHA256_MARK in line and (_OK_MARK in line or _WRITING_MARK in line)) or b"\\" in line


def _whole_lines(chunk: bytes) -> tuple[list[bytes], bytes]:
    """The whole lines of ``chunk``, and the start of the line it ends with. Split at a lone
    \\r too, as bytes.splitlines splits, where a hand edit left one (json.dumps escapes them)."""
    lines = chunk.split(b"\n")
    tail = lines.pop()
    if b"\r" in chunk:
        lines = [part for line in lines for part in line.splitlines()]
    return lines, tail


def _parsed(line: bytes) -> dict[str, Any] | None:
    """A line's record, or None: the torn last line of a killed run, or a hand edit that is
    not a JSON object (too deeply nested, or a number past Python's digits limit, too)."""
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"

