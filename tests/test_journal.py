"""The batch journal read as a rerun reads it (srdeploy.batch.journal): a line at a time, only
the lines that may vouch parsed, with the results the whole-file reader gave on every kind of
line a journal may hold."""

from __future__ import annotations

import json
import os
import signal
import tracemalloc
from pathlib import Path

import pytest

from srdeploy.batch.journal import Journal, JournalError

SHA1, SHA2 = "1" * 64, "2" * 64
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # a file name that is not UTF-8, as Python names it (surrogateescape)


def vouching_as_read_whole(path: Path) -> dict[str, dict[str, dict]]:
    """What Journal.vouching answered before it streamed: the whole file read, every line
    parsed, the newest vouching record kept for each output and sha256."""
    made: dict[str, dict[str, dict]] = {}
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8", "surrogateescape"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict):
            continue
        name, sha = record.get("output"), record.get("output_sha256")
        if record.get("status") in ("writing", "ok") and name and sha and isinstance(name, str) and isinstance(sha, str):
            made.setdefault(name, {})[sha] = record
    return made


def tricky_journal(path: Path) -> list[str]:
    """A journal with every kind of line a reader meets; returns the output names it mentions."""
    journal = Journal(path)
    journal.append({"event": "run", "settings": {"format": "same"}})
    journal.append({"input": "in/a.png", "status": "writing", "output": "a.png", "output_sha256": SHA1, "source": "in/a.png"})
    journal.append({"input": "in/a.png", "status": "ok", "output": "a.png", "output_sha256": SHA1, "source": "in/a.png", "size": [4, 4]})
    journal.append({"input": "in/a.png", "status": "skipped", "reason": "already done", "output": "a.png", "source": "in/a.png"})
    journal.append({"input": "in/b.png", "status": "failed", "reason": "not an image", "output": "b.png"})
    journal.append({"input": NOT_UTF8, "status": "ok", "output": NOT_UTF8, "output_sha256": SHA1})  # written with \u escapes
    journal.append({"input": "in/ünï.png", "status": "ok", "output": "ünï.png", "output_sha256": SHA2})  # UTF-8 as it is
    lines = [
        b'{"status": "ok", "output": "a.png", "output_sha256": "' + SHA1.encode() + b'", bad}',  # malformed: the older ok still vouches
        b'["ok", "a.png"]', b'"ok"', b"42", b"null", b"",  # JSON, but not a record
        b'{"status": "ok", "output": ["c.png"], "output_sha256": "' + SHA1.encode() + b'"}',  # wrong-typed fields
        b'{"status": "ok", "output": "c.png", "output_sha256": {"x": 1}}',
        b'{"status": ["ok"], "output": "c.png", "output_sha256": "' + SHA1.encode() + b'"}',
        b'{"status": "ok", "output": "", "output_sha256": "' + SHA1.encode() + b'"}',
        b'{"status": "ok", "output": "c.png", "output_sha256": 5}',
        b'{"status": "ok", "output": "d\xe9.png", "output_sha256": "' + SHA2.encode() + b'"}',  # raw bytes that are not UTF-8
        b'{"status":"writing","output":"e.png","output_sha256":"' + SHA1.encode() + b'"}',  # by hand, without json.dumps's spaces
        b'{"status": "o\\u006b", "output": "f.png", "output\\u005fsha256": "' + SHA1.encode() + b'"}',  # escapes spell the marks
        b'{"status": "skipped", "output": "g.png", "output_sha256": "' + SHA1.encode() + b'", "status": "ok"}',  # the last key wins
        b'{"x": {"status": "ok", "output": "h.png", "output_sha256": "' + SHA1.encode() + b'"}}',  # nested: not the record's own
        b'{"status": "ok", "output": "i.png", "output_sha256": "' + SHA1.encode() + b'"}\r',  # a CRLF line end
        b'{"status": "ok", "output": "j.png", "output_sha256": "' + SHA1.encode() + b'"}\r{"status": "ok", "output": "k.png", "output_sha256": "'
        + SHA2.encode() + b'"}',  # a lone CR between two records
    ]
    with open(path, "ab") as f:
        f.write(b"\n".join(lines) + b"\n")
        f.write(b'{"run": "x", "status": "ok", "output": "l.png", "output_sha256": "' + SHA1.encode() + b'"')  # torn: killed mid-append
    return ["a.png", "b.png", NOT_UTF8, "ünï.png", "c.png", "", os.fsdecode(b"d\xe9.png"), *(f"{c}.png" for c in "efghijkl")]


def test_the_streaming_reader_vouches_as_the_whole_file_reader_did(tmp_path):
    path = tmp_path / "upscale-journal.jsonl"
    names = tricky_journal(path)
    journal = Journal(path)
    read = {name: journal.vouching(name) for name in names}
    assert {name: made for name, made in read.items() if made} == vouching_as_read_whole(path)
    # And what that is, named: each of these vouches, the rest do not.
    assert sorted(name for name, made in read.items() if made) == sorted(["a.png", NOT_UTF8, "ünï.png", os.fsdecode(b"d\xe9.png"), "e.png", "f.png", "g.png", "i.png", "j.png", "k.png"])
    assert read["a.png"][SHA1]["status"] == "ok" and read["a.png"][SHA1]["size"] == [4, 4]  # the newest whole record, every field
    assert journal.last_ok(NOT_UTF8, SHA1)["input"] == NOT_UTF8  # the name round-trips, not mangled
    assert journal.last_ok("a.png", SHA2) is None and journal.last_ok("a.png", None) is None


def test_lines_that_cannot_vouch_are_not_parsed(tmp_path, monkeypatch):
    path = tmp_path / "upscale-journal.jsonl"
    journal = Journal(path)
    journal.append({"input": "in/a.png", "status": "ok", "output": "a.png", "output_sha256": SHA1})
    for _ in range(50):  # reruns: most of a long journal
        journal.append({"event": "run", "settings": {}})
        journal.append({"input": "in/a.png", "status": "skipped", "reason": "already done (same input, model, engine and settings)", "output": "a.png"})
    parsed = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, **kw: parsed.append(text) or loads(text, **kw))
    assert Journal(path).last_ok("a.png", SHA1)["status"] == "ok"
    assert len(parsed) == 2  # the ok line, once read and once asked for


def test_a_long_journal_is_read_in_the_memory_of_a_block_not_of_the_file(tmp_path):
    """20 MB of reruns' records: read whole, the file and its lines took twice that."""
    path = tmp_path / "upscale-journal.jsonl"
    skipped = json.dumps({"run": "r", "input": "in/a.png", "status": "skipped", "reason": "already done" + " " * 150, "output": "a.png"}).encode()
    path.write_bytes((skipped + b"\n") * 100_000)
    tracemalloc.start()
    try:
        assert Journal(path).vouching("a.png") == {}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size > 20_000_000 and peak < 5_000_000, peak


def test_a_journal_deeply_nested_or_with_a_huge_number_by_hand_vouches_for_nothing(tmp_path):
    """Lines on which json.loads raises other than JSONDecodeError (RecursionError, and
    ValueError past Python's int digits limit) are malformed lines too: the rerun goes on."""
    path = tmp_path / "upscale-journal.jsonl"
    mark = b'"output_sha256": "' + SHA1.encode() + b'", "status": "ok", "output": "a.png"'
    path.write_bytes(b"[" * 100_000 + mark + b"\n" + b'{"n": ' + b"1" * 5000 + b", " + mark + b"}\n")
    assert Journal(path).vouching("a.png") == {}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_in_the_journals_place_is_refused_not_waited_on(tmp_path):
    path = tmp_path / "upscale-journal.jsonl"
    os.mkfifo(path)

    def hung(*_):
        raise TimeoutError("the read waited on the pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(JournalError, match="cannot read the journal .* a named pipe"):
            Journal(path).vouching("a.png")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_run_id_is_unique_to_each_run():
    """Drivers on two machines can share a PID and a second; a bucket's journal tells runs apart by it."""
    runs = {Journal(Path(os.devnull)).run for _ in range(100)}  # one process, one second: the PID and the time are the same
    assert len(runs) == 100
