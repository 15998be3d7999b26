"""A bucket's journal written by drivers on two machines at once (srdeploy.batch.bucket_journal),
on a real S3 server (moto) on loopback: no run's records are lost, whichever PUT comes last.
The machines are two local journal files (two XDG cache folders); no Ray is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray_helpers import moto_s3

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from srdeploy.batch import bucket_journal  # noqa: E402
from srdeploy.batch.bucket_journal import RUNS_FOLDER, publish, runs_of  # noqa: E402
from srdeploy.batch.jobs import JOURNAL_NAME  # noqa: E402
from srdeploy.batch.journal import Journal  # noqa: E402
from srdeploy.batch.stores import Bucket  # noqa: E402

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def out(s3_endpoint, monkeypatch, request):
    """A fresh bucket's OUT prefix."""
    import boto3

    for name, value in {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    name = request.node.name.replace("_", "-")[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}/out"


class Driver:
    """One run of `srdeploy upscale --ray ... -o s3://...` on one machine, reduced to its
    journal: the local file it appends to, and its publish when the run ends."""

    def __init__(self, out: str, machine: Path, monkeypatch):
        monkeypatch.setenv("XDG_CACHE_HOME", str(machine))
        self.bucket = Bucket(out)
        self.journal = Journal(bucket_journal.spool(self.bucket))
        self.lines: list[bytes] = []  # this run's records, as it appended them

    def append(self, name: str, status: str = "ok") -> None:
        self.journal.append({"input": f"in/{name}", "status": status, "output": name})
        self.lines.append(self.journal.path.read_bytes().splitlines()[-1])

    def publish(self) -> None:
        publish(self.bucket, self.journal.path)


def journal_on(bucket: Bucket) -> dict[str, list[bytes]]:
    return runs_of(bucket.download(JOURNAL_NAME) or b"")


def test_two_drivers_publishing_at_once_keep_both_runs(out, tmp_path, monkeypatch):
    """B reads the bucket's journal, then A publishes its whole run, then B writes the
    journal back: without its own object, A's records would be gone (the last PUT won)."""
    earlier = Driver(out, tmp_path / "machine-a", monkeypatch)
    earlier.append("old.png")
    earlier.publish()
    a, b = Driver(out, tmp_path / "machine-a", monkeypatch), Driver(out, tmp_path / "machine-b", monkeypatch)
    for i in range(3):  # the two runs' records interleaved in time
        a.append(f"a{i}.png")
        b.append(f"b{i}.png", "skipped")

    read = b.bucket.download

    def read_then_let_a_publish(name):
        data = read(name)
        if name == JOURNAL_NAME:
            monkeypatch.setattr(b.bucket, "download", read)
            a.publish()
        return data

    monkeypatch.setattr(b.bucket, "download", read_then_let_a_publish)
    b.publish()
    runs = journal_on(b.bucket)
    assert runs == {earlier.journal.run: earlier.lines, a.journal.run: a.lines, b.journal.run: b.lines}
    for driver in (earlier, a, b):  # each run's own object, and nothing left waiting on its machine
        assert b.bucket.download(f"{RUNS_FOLDER}/{driver.journal.run}.jsonl").splitlines() == driver.lines
        assert driver.journal.path.read_bytes() == b""


def test_a_run_dropped_by_another_drivers_put_is_put_back_by_the_next_run(out, tmp_path, monkeypatch):
    """Both drivers read the journal and list the runs' objects before either writes: B's PUT
    drops A's records from the journal, A's own object keeps them, and the next run to
    publish (C, on a third machine) puts them back."""
    a, b = Driver(out, tmp_path / "machine-a", monkeypatch), Driver(out, tmp_path / "machine-b", monkeypatch)
    a.append("a.png")
    b.append("b.png")
    names = b.bucket.names

    def list_then_let_a_publish(folder):
        listed = names(folder)
        monkeypatch.setattr(b.bucket, "names", names)
        a.publish()
        return listed

    monkeypatch.setattr(b.bucket, "names", list_then_let_a_publish)
    b.publish()
    assert list(journal_on(b.bucket)) == [b.journal.run]  # the race this cannot close
    assert b.bucket.download(f"{RUNS_FOLDER}/{a.journal.run}.jsonl").splitlines() == a.lines

    c = Driver(out, tmp_path / "machine-c", monkeypatch)
    c.append("c.png")
    c.publish()
    runs = journal_on(c.bucket)
    assert runs == {b.journal.run: b.lines, a.journal.run: a.lines, c.journal.run: c.lines}  # each run once
    assert list(runs) == [b.journal.run, *sorted([a.journal.run, c.journal.run])]  # after the journal, by run id


def test_a_run_killed_before_it_published_is_published_by_the_next_run_on_its_machine(out, tmp_path, monkeypatch):
    """Its records wait in the machine's local file, torn last line and all, while another
    machine's runs publish; the local copy was replaced by the bucket's then, and they were lost."""
    killed = Driver(out, tmp_path / "machine-a", monkeypatch)
    killed.append("a.png")
    with open(killed.journal.path, "ab") as f:
        f.write(b'{"run": "' + killed.journal.run.encode() + b'", "status": "wri')  # killed mid-append
    other = Driver(out, tmp_path / "machine-b", monkeypatch)
    other.append("b.png")
    other.publish()
    after = Driver(out, tmp_path / "machine-a", monkeypatch)
    after.append("a.png", "skipped")
    after.publish()
    runs = journal_on(after.bucket)
    assert list(runs) == [other.journal.run, *sorted([killed.journal.run, after.journal.run])]
    assert runs[killed.journal.run][:-1] == killed.lines and runs[killed.journal.run][-1].endswith(b'"status": "wri')
    assert runs[after.journal.run] == after.lines  # its first record on a line of its own
    assert all(json.loads(line) for line in runs[after.journal.run])


def test_runs_of_groups_a_journal_by_run_and_keeps_every_line():
    journal = b"\n".join([
        b"a torn start",
        b'{"run": "r1", "status": "ok"}', b'{"run": "r2", "status": "ok"}', b'{"run": "r1", "status": "skipped"}',
        b'{"run": "r1", "status": "wri', b'{"status": "ok", "run": "r9"}',  # torn; the run not first (a hand edit): with the line before
    ])
    assert runs_of(journal) == {
        "r1": [b"a torn start", b'{"run": "r1", "status": "ok"}', b'{"run": "r1", "status": "skipped"}', b'{"run": "r1", "status": "wri', b'{"status": "ok", "run": "r9"}'],
        "r2": [b'{"run": "r2", "status": "ok"}'],
    }
    assert sum(map(len, runs_of(journal).values())) == len(journal.splitlines())
