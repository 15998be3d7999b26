"""`srdeploy upscale --ray` as a subprocess on a real two-node Ray cluster on loopback: the
bad-input corpus, bytes equal to the local CLI's, Ctrl-C then resume, an actor killed with
kill -9, and s3:// inputs and outputs on a real S3 server (moto). Skipped without Ray."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from ray_helpers import moto_s3, processes_mentioning, processes_titled, srdeploy_env, two_node_cluster  # before ray: sets its loopback switch

pytest.importorskip("ray.data")
pytest.importorskip("s3fs")

from conftest import EXAMPLES, SRDEPLOY  # noqa: E402
from onnx_toy import build_toy_sr  # noqa: E402
from test_imaging import bad_inputs  # noqa: E402
from test_upscale_cli import interrupt_after_ok_records, journal, outputs, save, temp_files  # noqa: E402

from srdeploy.runtime.cpus import available_cpus  # noqa: E402
from srdeploy.runtime.upscaler import Upscaler  # noqa: E402

pytestmark = pytest.mark.slow
ACTOR_TITLE = "ray::MapWorker(MapBatches(Upscaling))"
BUCKET = "faces"
RAY_LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]")  # Ray's C++ logger: [2026-12-02 00:11:02,381 E 28419 28419]
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_sr(tmp_path_factory.mktemp("toy") / "toy.onnx")


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory) -> Path:
    """The two nodes' temp folder: their processes keep files open under it."""
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def cluster(s3_endpoint, cluster_dir):
    """The two nodes, with the S3 server's endpoint and keys in their environment (as a
    real cluster's nodes have their store's credentials)."""
    saved = {k: os.environ.get(k) for k in (*AWS, "AWS_ENDPOINT_URL")}
    os.environ.update(AWS, AWS_ENDPOINT_URL=s3_endpoint)
    try:
        with two_node_cluster(cluster_dir) as address:
            yield address
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upscale(*args, timeout=180, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(SRDEPLOY), "upscale", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=srdeploy_env(**env), cwd=cwd)


def noise_folder(folder: Path, count: int, side: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    names = [f"img_{i:02d}.png" for i in range(count)]
    for name in names:  # noise compresses badly: outputs big enough to take a while
        save(folder / name, rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    return names


def rows(out: Path) -> list[tuple]:
    """The journal's per-input records, without times and run ids."""
    return [(r["input"], r["status"], r["reason"], r.get("output")) for r in journal(out) if "input" in r and r["status"] != "writing"]


def test_mixed_corpus_on_two_nodes_matches_the_local_cli_byte_for_byte(toy, cluster, tmp_path):
    src = tmp_path / "in"
    corpus = bad_inputs(np.random.default_rng(0))
    src.mkdir()
    for name, (data, _) in corpus.items():
        (src / name).write_bytes(data)
    rng = np.random.default_rng(1)
    save(src / "good_a.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    save(src / "good_b.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    save(src / "sub" / "grey.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    save(src / "sub" / "alpha.png", rng.integers(0, 256, (10, 14, 4), dtype=np.uint8))
    for example in EXAMPLES.glob("*.*"):
        if example.suffix in (".png", ".jpg"):
            (src / "sub" / example.name).write_bytes(example.read_bytes())

    on_ray, here = tmp_path / "on_ray", tmp_path / "here"
    # Given relative to the working folder: the workers get absolute paths, the records name inputs as given.
    run = upscale("in", "-o", on_ray, "--model", toy, "--recursive", "--ray", cluster, cwd=tmp_path)
    local = upscale("in", "-o", here, "--model", toy, "--recursive", cwd=tmp_path)
    assert run.returncode == 1 and local.returncode == 1, run.stderr[-3000:]
    assert "Ray: 4 actor(s) x 1 CPU" in run.stderr  # two actors a node: both nodes work
    assert "Traceback" not in run.stderr
    assert not RAY_LOG_LINE.search(run.stderr), run.stderr[-3000:]
    good = sorted(outputs(here))
    assert len(good) == 4 + len(list(EXAMPLES.glob("*.[pj][np]g"))) and sorted(outputs(on_ray)) == good
    for name in good:  # the same model, engine and settings give the same bytes
        assert outputs(on_ray)[name].read_bytes() == outputs(here)[name].read_bytes(), name
    failed = {r[0]: r[2] for r in rows(on_ray) if r[1] == "failed"}
    assert set(failed) == {f"in/{name}" for name in corpus}
    for name, (_, reason) in corpus.items():
        assert reason in failed[f"in/{name}"]
        assert f"failed  in/{name}: " in run.stderr  # one line per bad file
    assert rows(on_ray) == rows(here)  # the same records, in the same (input) order
    assert f"{len(good)} ok, 0 skipped, {len(corpus)} failed of {len(good) + len(corpus)}" in run.stderr
    assert not temp_files(on_ray)
    run_record = journal(on_ray)[0]
    assert run_record["event"] == "run" and run_record["ray"]["actors"] == 4 and run_record["provider"] == journal(here)[0]["provider"]


def test_ray_auto_joins_the_cluster_ray_address_names(toy, cluster, tmp_path):
    """The README's cluster command: `--ray auto` on a machine of the cluster, found as Ray
    finds it (RAY_ADDRESS here; a node's own address file on a real one)."""
    run = upscale(EXAMPLES, "-o", tmp_path / "out", "--model", toy, "--ray", "auto", RAY_ADDRESS=cluster)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Ray: 4 actor(s) x 1 CPU" in run.stderr  # the two nodes, not a cluster of its own
    assert sorted(outputs(tmp_path / "out")) == sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))


def test_ctrl_c_leaves_no_partial_output_and_a_rerun_resumes(toy, cluster, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = noise_folder(src, 80, 160, seed=2)  # enough that Ctrl-C lands mid-run on a fast CPU
    args = [str(SRDEPLOY), "upscale", str(src), "-o", str(out), "--model", str(toy), "--ray", cluster, "--actors", "2", "--quiet"]
    code, err = interrupt_after_ok_records(args, out, 3, timeout=120, env=srdeploy_env())
    assert code == 130, "the batch finished before Ctrl-C; make it longer" if code == 0 else code
    assert "Traceback" not in err and "interrupted: every output written so far is whole" in err
    survivors = outputs(out)
    assert 3 <= len(survivors) < len(names)
    assert not temp_files(out)  # the staged outputs not committed were removed
    assert set(survivors) == {r[3] for r in rows(out) if r[1] == "ok"}  # and every output is journalled whole

    rerun = upscale(src, "-o", out, "--model", toy, "--ray", cluster, "--actors", "2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(outputs(out)) == names and not temp_files(out)
    last = journal(out)[-1]["run"]
    statuses = {Path(r["input"]).name: r["status"] for r in journal(out) if r.get("run") == last and r.get("status") in ("ok", "skipped")}
    assert {n for n, s in statuses.items() if s == "skipped"} == set(survivors)
    assert {n for n, s in statuses.items() if s == "ok"} == set(names) - set(survivors)
    up = Upscaler(toy)  # what auto picks, as the CLI runs
    assert outputs(out)[names[-1]].read_bytes() == up.upscale_bytes((src / names[-1]).read_bytes(), names[-1]).data


def test_stopping_the_writers_waits_until_their_processes_are_gone_and_admits_no_new_one(cluster, tmp_path):
    """The run's last sweep is only final if no actor can stage a file after it: Ray's kill
    is asynchronous (on Ctrl-C, an actor killed mid-write still wrote after the sweep)."""
    import ray

    from srdeploy.batch.ray_actor import Roster, is_running, sign_in
    from srdeploy.batch.ray_run import stop_writers

    class Scribbler:  # a writer as Upscaling is one: it signs in, then writes files
        def __init__(self, roster):
            sign_in(roster)

        def pid(self):
            return os.getpid()

        def scribble(self, folder):
            for i in range(100_000):
                Path(folder, f"{i}.tmp").write_bytes(b"x" * 4096)
                time.sleep(0.001)

    ray.init(address=cluster, logging_level="ERROR", log_to_driver=False)
    try:
        roster = ray.remote(Roster).options(num_cpus=0).remote()
        writer = ray.remote(Scribbler).options(num_cpus=0).remote(roster)
        pid = ray.get(writer.pid.remote(), timeout=60)
        writer.scribble.remote(str(tmp_path))
        deadline = time.monotonic() + 30
        while not any(tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(tmp_path.iterdir()), "the writer never wrote"
        stop_writers(roster)
        assert not is_running(pid)  # gone, not only told to go
        written = len(list(tmp_path.iterdir()))
        time.sleep(0.5)
        assert len(list(tmp_path.iterdir())) == written  # nothing written after the stop
        late = ray.remote(Scribbler).options(num_cpus=0).remote(roster)  # the roster is closed
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(late.pid.remote(), timeout=60)
    finally:
        ray.shutdown()


def test_a_process_that_exited_is_not_running_before_it_is_reaped():
    from srdeploy.batch.ray_actor import is_running

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while is_running(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_running(child.pid)  # a zombie now: it writes nothing more
        assert Path(f"/proc/{child.pid}").exists() and child.poll() == 0  # unreaped until now
        assert is_running(os.getpid())
    finally:
        child.wait()


def test_an_actor_killed_mid_run_is_restarted_and_its_inputs_redone(toy, cluster, cluster_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = noise_folder(src, 40, 160, seed=3)
    args = [str(SRDEPLOY), "upscale", str(src), "-o", str(out), "--model", str(toy), "--ray", cluster, "--actors", "2", "--quiet"]
    before = set(processes_titled(ACTOR_TITLE))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=srdeploy_env())
    killed = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and killed is None:
            actors = set(processes_titled(ACTOR_TITLE)) - before
            actors &= set(processes_mentioning(str(cluster_dir))) if actors else set()  # this cluster's, not another Ray's on the machine
            journal_text = (out / "upscale-journal.jsonl").read_text(encoding="utf-8") if (out / "upscale-journal.jsonl").exists() else ""
            if actors and journal_text.count('"status": "ok"') >= 2:
                killed = min(actors)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        printed, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed is not None, "no actor was seen before the batch ended; make it longer"
    assert proc.returncode == 0, err.decode()[-3000:]
    assert printed == b"", printed.decode()  # --quiet: no lines, Ray's notice of the dead worker included (it goes to stderr)
    made = outputs(out)
    assert sorted(made) == names and not temp_files(out)
    assert sorted(r[3] for r in rows(out) if r[1] == "ok") == names  # each input journalled once
    up = Upscaler(toy)  # what auto picks, as the CLI runs
    for name in names:  # complete and byte-identical
        assert made[name].read_bytes() == up.upscale_bytes((src / name).read_bytes(), name).data, name
    vouched = {r["output"]: r["output_sha256"] for r in journal(out) if r.get("status") == "ok"}
    assert vouched == {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in made.items()}


def test_s3_inputs_and_outputs_with_one_put_each_and_resume(toy, cluster, s3_endpoint, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in AWS.items() if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    rng = np.random.default_rng(4)
    local = tmp_path / "faces"
    save(local / "a.png", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    save(local / "party" / "b.jpg", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    (local / "party" / "notes.jpg").write_bytes(b"shopping list: eggs, milk\n")
    save(local / ".hidden" / "c.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for path in local.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"in/{path.relative_to(local).as_posix()}", Body=path.read_bytes())
    env = {**AWS, "AWS_ENDPOINT_URL": s3_endpoint, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the driver's local journal file

    run = upscale(f"s3://{BUCKET}/in", "-o", f"s3://{BUCKET}/out", "--model", toy, "--recursive", "--ray", cluster, "--actors", "2", **env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"failed  s3://{BUCKET}/in/party/notes.jpg: not an image (the file holds text)" in run.stderr
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"])
    runs = [key for key in keys if key.startswith("out/upscale-journal-runs/")]  # the run's own records, beside the journal
    assert [key for key in keys if key not in runs] == ["out/a.png", "out/party/b.jpg", "out/upscale-journal.jsonl"]  # no temp objects, hidden folder left out
    assert len(runs) == 1 and s3.get_object(Bucket=BUCKET, Key=runs[0])["Body"].read() == s3.get_object(Bucket=BUCKET, Key="out/upscale-journal.jsonl")["Body"].read()
    here = tmp_path / "here"
    assert upscale(local, "-o", here, "--model", toy, "--recursive").returncode == 1
    for name in ("a.png", "party/b.jpg"):  # the same bytes as the local CLI's, and vouched for by the object itself
        obj = s3.get_object(Bucket=BUCKET, Key=f"out/{name}")
        data = obj["Body"].read()
        assert data == (here / name).read_bytes(), name
        assert obj["Metadata"]["srdeploy-sha256"] == hashlib.sha256(data).hexdigest()
        assert json.loads(obj["Metadata"]["srdeploy-key"])["source"] == f"s3://{BUCKET}/in/{name}"
    records = [json.loads(line) for line in s3.get_object(Bucket=BUCKET, Key="out/upscale-journal.jsonl")["Body"].read().splitlines()]
    assert [(r["input"], r["status"]) for r in records if "input" in r] == [  # in input order, refused at planning or not
        (f"s3://{BUCKET}/in/a.png", "ok"), (f"s3://{BUCKET}/in/party/b.jpg", "ok"), (f"s3://{BUCKET}/in/party/notes.jpg", "failed"),
    ]

    again = upscale(f"s3://{BUCKET}/in", "-o", f"s3://{BUCKET}/out", "--model", toy, "--recursive", "--ray", cluster, "--actors", "2", **env)
    assert again.returncode == 1 and again.stdout.count("already done (same input, model, engine and settings)") == 2, again.stdout
    s3.put_object(Bucket=BUCKET, Key="out/a.png", Body=b"the user's own object")  # not ours: left alone
    kept = upscale(f"s3://{BUCKET}/in", "-o", f"s3://{BUCKET}/out", "--model", toy, "--recursive", "--ray", cluster, "--actors", "2", **env)
    assert "output exists (not made by srdeploy from this input); --overwrite replaces it" in kept.stdout
    assert s3.get_object(Bucket=BUCKET, Key="out/a.png")["Body"].read() == b"the user's own object"
    journal_lines = s3.get_object(Bucket=BUCKET, Key="out/upscale-journal.jsonl")["Body"].read().splitlines()
    assert len({json.loads(line)["run"] for line in journal_lines}) == 3  # one journal, every run appended
    assert len(s3.list_objects_v2(Bucket=BUCKET, Prefix="out/upscale-journal-runs/")["Contents"]) == 3


def test_a_task_retried_after_its_put_reports_its_input_ok(toy, s3_endpoint, tmp_path, monkeypatch):
    """What an actor does when Ray retries a task whose worker died after the PUT, before
    answering: the object is this run's (its metadata names the run), so the input is
    ``ok``, as the first attempt would have said; for another run it is ``skipped``."""
    import boto3

    from srdeploy.batch.jobs import Job, Settings
    from srdeploy.batch.steps import InputSteps, is_staged
    from srdeploy.batch.stores import Bucket

    for name, value in {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="retried")
    save(tmp_path / "a.png", np.random.default_rng(5).integers(0, 256, (6, 7, 3), dtype=np.uint8))
    job = Job(tmp_path / "a.png", "a.png", PurePosixPath("a.png"), "PNG", None, 42)
    upscaler = Upscaler(toy)

    def attempt(run):
        bucket = Bucket("s3://retried/out", run)
        return InputSteps(upscaler, bucket, Settings(), bucket, None).through_store(job)

    first = attempt("run-1")
    assert is_staged(first) and first.tmp is None  # the PUT wrote it whole
    retried = attempt("run-1")
    assert (retried.result.status, retried.result.reason) == ("ok", "28x24 PNG")
    assert retried.extra["output_sha256"] == first.output_sha256 and retried.extra["size"] == [28, 24]
    later = attempt("run-2")
    assert (later.result.status, later.result.reason) == ("skipped", "already done (same input, model, engine and settings)")


def test_an_object_past_the_read_limit_is_refused_unread(s3_endpoint, monkeypatch):
    import boto3

    from srdeploy.batch.stores import read_uri
    from srdeploy.io.files import FileTooLarge

    for name, value in {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="limits")
    s3.put_object(Bucket="limits", Key="padded.png", Body=b"\0" * 1000)
    with pytest.raises(FileTooLarge, match="more than 999 bytes"):
        read_uri("s3://limits/padded.png", limit=999)
    assert len(read_uri("s3://limits/padded.png", limit=1000)) == 1000


def test_ray_local_starts_a_cluster_for_the_run_says_only_our_lines_and_stops_it(toy, tmp_path):
    # Ray's own temp folder: RAY_TMPDIR would mark the run's processes, but it also hides
    # the C++ log line this test looks for.
    sessions = Path(tempfile.gettempdir()) / "ray"
    driver = None
    # A user's shell has no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: the run must keep its cluster on loopback by itself.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    listening: set[str] = set()
    try:
        with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
            driver = subprocess.Popen([str(SRDEPLOY), "upscale", str(EXAMPLES), "-o", str(tmp_path / "out"), "--model", str(toy), "--ray", "local"],
                                      stdout=stdout, stderr=stderr, text=True, env=env)
            deadline = time.monotonic() + 180
            while driver.poll() is None and time.monotonic() < deadline:
                listening |= listening_addresses(driver.pid)
                time.sleep(0.2)
            driver.kill() if driver.poll() is None else None
            driver.wait()
            stdout.seek(0), stderr.seek(0)
            run = subprocess.CompletedProcess(driver.args, driver.returncode, stdout.read(), stderr.read())
    finally:  # a driver killed by the timeout leaves its cluster: it goes too
        # Ray names a session's folder after the driver's PID: this run's processes, not
        # those of another Ray on the machine.
        session = next(sessions.glob(f"session_*_{driver.pid}"), None) if driver else None
        ours = (lambda: set(processes_mentioning(str(session)))) if session else set
        deadline = time.monotonic() + 20
        while ours() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = sorted(ours())
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if session:
            shutil.rmtree(session, ignore_errors=True)  # its logs: Ray leaves one folder a run in /tmp/ray
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in re.split(r"[\r\n]", run.stderr) if line.strip() and "%|" not in line]  # the bar's redraws aside
    assert lines[0].startswith(f"model {toy} ") and f"; Ray: {available_cpus()} actor(s) x 1 CPU" in lines[0]  # one actor a CPU here
    images = sorted(p.name for p in EXAMPLES.glob("*.[pj][np]g"))
    assert len(lines) == 2 and lines[1].startswith(f"{len(images)} ok, 0 skipped, 0 failed"), lines
    assert not RAY_LOG_LINE.search(run.stderr), run.stderr[-3000:]  # not even beside the bar
    assert sorted(outputs(tmp_path / "out")) == images
    assert not left, f"Ray processes outlived --ray local (killed): {left}"
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening), listening  # Ray has no authentication


def listening_addresses(pid: int) -> set[str]:
    """The addresses that ``pid`` and its descendants (Ray's GCS, raylet and workers) listen on."""
    import psutil

    found = set()
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return found
    for process in processes:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # gone meanwhile
            continue
    return found


def test_without_ray_nothing_imports_it_and_uris_say_what_they_need(toy, tmp_path):
    block = "import sys; sys.modules['ray'] = None; sys.modules['fsspec'] = None\nfrom srdeploy.cli import run; run()\n"
    plain = subprocess.run([sys.executable, "-c", block, "upscale", str(EXAMPLES), "-o", str(tmp_path / "out"), "--model", str(toy), "-q"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    needs_ray = subprocess.run([sys.executable, "-c", block, "upscale", str(EXAMPLES), "-o", str(tmp_path / "o2"), "--model", str(toy), "--ray", "local"], capture_output=True, text=True, timeout=120)
    assert needs_ray.returncode == 2 and needs_ray.stderr.strip() == "Error: --ray needs the ray package, which is not installed: pip install 'srdeploy[ray]'"
    uri = upscale("s3://faces/in", "-o", tmp_path / "o3", "--model", toy)
    assert uri.returncode == 2 and "s3://faces/in: object-store URIs need --ray" in uri.stderr
    too_big = upscale(EXAMPLES, "-o", tmp_path / "o4", "--model", toy, "--actors", "2")
    assert too_big.returncode == 2 and "--actors and --cpus-per-actor go with --ray" in too_big.stderr


def test_an_address_nothing_listens_on_is_an_error_in_seconds_not_a_hang(toy, tmp_path):
    """ray.init retries such an address for ever; the CLI checks that the head answers."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = save(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8)).parent
    for address, message in ((f"127.0.0.1:{port}", f"Error: cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused)"),
                             ("10.0.0.5:99999", "Error: --ray 10.0.0.5:99999: give local, auto or a cluster's HOST:PORT")):
        run = upscale(src, "-o", tmp_path / "out", "--model", toy, "--ray", address, timeout=60)
        assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


def test_a_workers_error_reaches_the_user_as_its_own_line_not_rays_traceback():
    """An actor that cannot start (a node without the model file, or without bf16 units)
    fails the dataset with the worker's traceback wrapped in Ray's errors."""
    from ray.data.exceptions import UserCodeException
    from ray.exceptions import RayTaskError

    from srdeploy.batch.ray_cluster import failure_line
    from srdeploy.runtime.zoo import ModelError

    cause = ModelError("/models/m.onnx: model file not found")
    wrapped = RayTaskError("Upscaling.__init__", "Traceback (most recent call last):\n  File \"ray_actor.py\", line 141\nModelError: ...", cause)
    assert failure_line(wrapped) == "/models/m.onnx: model file not found"
    assert failure_line(wrapped.as_instanceof_cause()) == "/models/m.onnx: model file not found"  # what ray.get raises
    try:
        try:
            raise wrapped
        except RayTaskError as e:
            raise UserCodeException("UDF failed to process a data block.") from e
    except UserCodeException as chained:
        assert failure_line(chained) == "/models/m.onnx: model file not found"
    ours = ValueError("the output folder out is also an input folder; choose another -o")
    ours.__cause__ = OSError("an inner detail")
    assert failure_line(ours) == str(ours)  # our own errors are not unwrapped
