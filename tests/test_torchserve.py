"""The archive served by a real TorchServe (Java 17 frontend, Python worker).

`srdeploy package` builds the .mar around the tiny generator and writes config.properties
on free loopback ports; torchserve starts from a fresh folder (its own TMPDIR, logs and
key_file.json), and the test talks HTTP to it: tokens, images identical to the CLI's,
per-request errors, a short concurrent load, then a stop that must leave no process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, SCRIPTS, SRDEPLOY
from PIL import Image

from srdeploy.handlers.config import free_port_block

requests = pytest.importorskip("requests")
pytest.importorskip("ts", reason="torchserve is not installed (pip install 'srdeploy[serve]')")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs Java 17 (`java` is not on PATH)"),
]

MAX_PIXELS = 96 * 96
READY_TIMEOUT = 300  # s: the JVM and a worker importing torch, on a loaded 2-core machine


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


class TorchServe:
    """``torchserve --foreground`` in its own process group, folder and TMPDIR (the pid
    file and worker sockets live there, so concurrent servers cannot collide)."""

    def __init__(self, root: Path, properties: Path):
        self.root, self.properties = root, properties
        props = dict(line.split("=", 1) for line in properties.read_text().splitlines() if "=" in line and not line.startswith("#"))
        self.inference, self.management = props["inference_address"], props["management_address"]
        tmp = root / "tmp"
        tmp.mkdir()
        self.env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "LOG_LOCATION": str(root / "logs"), "METRICS_LOCATION": str(root / "logs")}
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(SCRIPTS / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(self.properties)]
        with open(self.root / "torchserve.out", "wb") as log:  # the server keeps its own copy of the handle
            self.process = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid = self.process.pid

    def keys(self) -> dict:
        return json.loads((self.root / "key_file.json").read_text())

    def auth(self, api: str = "inference") -> dict:
        return {"Authorization": f"Bearer {self.keys()[api]['key']}"}

    def wait_ready(self, model: str) -> dict:
        """Poll /ping, then the model's description until its worker is READY."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"torchserve exited with {self.process.returncode}: {self.tail()}"
            try:
                if requests.get(f"{self.inference}/ping", headers=self.auth(), timeout=5).json().get("status") == "Healthy":
                    workers = self.describe(model)["workers"]
                    if workers and all(w["status"] == "READY" for w in workers):
                        return workers[0]
            except (OSError, ValueError, KeyError, requests.RequestException):
                pass  # not up yet: no key file, connection refused, model still loading
            time.sleep(2)
        raise AssertionError(f"torchserve not ready in {READY_TIMEOUT} s: {self.tail()}")

    def describe(self, model: str) -> dict:
        answer = requests.get(f"{self.management}/models/{model}", headers=self.auth("management"), timeout=10)
        answer.raise_for_status()
        return answer.json()[0]

    def stop(self) -> list[int]:
        """``torchserve --stop``, then wait for the whole process group to end; returns the
        pids that outlived a 60 s grace period (then killed)."""
        try:
            subprocess.run([str(SCRIPTS / "torchserve"), "--stop"], cwd=self.root, env=self.env, capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            pass  # the group is killed below all the same
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 60
        while self.group() and time.monotonic() < deadline:
            time.sleep(1)
        survivors = self.group()
        if survivors:
            os.killpg(self.pgid, signal.SIGKILL)
        return survivors

    def group(self) -> list[int]:
        import psutil

        found = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.pgid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    def tail(self) -> str:
        text = (self.root / "torchserve.out").read_text(errors="replace")
        return text[-3000:]


def test_torchserve_serves_the_archive_end_to_end(tiny_onnx, tmp_path, rng):
    root = tmp_path / "srv"
    root.mkdir()
    base = free_port_block()
    packaged = subprocess.run(
        [str(SRDEPLOY), "package", "--model", str(tiny_onnx), "-o", str(root / "store"), "--port", str(base),
         "--max-pixels", str(MAX_PIXELS), "--batch-size", "4", "--max-batch-delay", "100"],
        capture_output=True, text=True, timeout=300,
    )
    assert packaged.returncode == 0, packaged.stderr
    assert "tiny.mar" in packaged.stdout  # named after the model file when no --name is given
    server = TorchServe(root, root / "config.properties")
    server.start()
    try:
        worker = server.wait_ready("tiny")
        url = f"{server.inference}/predictions/tiny"
        check_tokens_are_required(url, server)
        check_images_match_the_cli(url, server, tiny_onnx, tmp_path, rng)
        check_bad_images_get_clear_4xx(url, server, rng)
        check_a_concurrent_mixed_batch(url, server, rng)
        check_load(url, server, rng, worker["pid"])
    finally:
        survivors = server.stop()
    assert survivors == [], f"processes left after torchserve --stop: {survivors}"
    assert server.process.returncode is not None


def check_tokens_are_required(url: str, server: TorchServe) -> None:
    """TorchServe 0.12 refuses a missing or wrong token with 400 InvalidKeyException
    (not 401), before the handler sees anything."""
    face = (EXAMPLES / "astronaut_face.png").read_bytes()
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        answer = requests.post(url, data=face, headers={"Content-Type": "image/png", **headers}, timeout=60)
        assert answer.status_code in (400, 401), answer.text
        assert "Token Authorization failed" in answer.json()["message"]
    assert requests.get(f"{server.management}/models", timeout=10).status_code in (400, 401)


def check_images_match_the_cli(url: str, server: TorchServe, model: Path, tmp_path: Path, rng) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(EXAMPLES / "astronaut_face.png", inputs / "face.png")
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(inputs / "noise.jpg", quality=90)
    cli = subprocess.run([str(SRDEPLOY), "upscale", str(inputs), "-o", str(tmp_path / "cli"), "--model", str(model), "--format", "png", "-q"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    for name, content_type in (("face.png", "image/png"), ("noise.jpg", "image/jpeg")):
        data = (inputs / name).read_bytes()
        answer = requests.post(url, data=data, headers={"Content-Type": content_type, **server.auth()}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "image/png"
        served = Image.open(io.BytesIO(answer.content))
        source = Image.open(inputs / name)
        assert served.size == (4 * source.width, 4 * source.height)
        expected = (tmp_path / "cli" / Path(name).with_suffix(".png")).read_bytes()
        mse = np.mean((np.asarray(served, np.float64) - np.asarray(Image.open(io.BytesIO(expected)), np.float64)) ** 2)
        assert mse == 0, f"{name}: PSNR {10 * np.log10(255**2 / mse):.1f} dB against the CLI, not identical"
        assert answer.content == expected  # byte for byte, not only pixel for pixel
    multipart = requests.post(url, files={"image": ("face.png", (inputs / "face.png").read_bytes(), "image/png")}, data={"format": "webp", "quality": "75"}, headers=server.auth(), timeout=120)
    assert multipart.status_code == 200 and multipart.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(multipart.content)).size == (256, 256)


def check_bad_images_get_clear_4xx(url: str, server: TorchServe, rng) -> None:
    good = png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    cases = [
        (b"hello, not an image\n", "text/plain", 415, "not an image (the file holds text)"),
        (good[: len(good) // 2], "image/png", 400, "corrupt or truncated PNG data"),
        (png(np.zeros((97, 96, 3), np.uint8)), "image/png", 413, "96x97 (9,312 pixels) exceeds this server's cap of 9,216 pixels"),
    ]
    for data, content_type, status, reason in cases:
        answer = requests.post(url, data=data, headers={"Content-Type": content_type, **server.auth()}, timeout=120)
        assert answer.status_code == status, answer.text
        assert answer.headers["Content-Type"] == "application/json"
        message = answer.json()["message"]
        assert message.startswith("request ") and reason in message, message


def check_a_concurrent_mixed_batch(url: str, server: TorchServe, rng) -> None:
    """Four requests at once (batchSize 4, maxBatchDelay 100 ms): three sizes and one bad
    item; each gets its own answer."""
    bodies = [png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((8, 8), (20, 12), (5, 31))] + [b"GIF89a broken"]
    answers: list = [None] * len(bodies)

    def post(i: int) -> None:
        answers[i] = requests.post(url, data=bodies[i], headers={"Content-Type": "application/octet-stream", **server.auth()}, timeout=120)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200, 200, 200, 400], [a.text[:200] for a in answers]
    for body, answer in zip(bodies[:3], answers):
        w, h = Image.open(io.BytesIO(body)).size
        assert Image.open(io.BytesIO(answer.content)).size == (4 * w, 4 * h)


def check_load(url: str, server: TorchServe, rng, worker_pid: int, clients: int = 8, seconds: float = 5.0) -> None:
    """``clients`` threads post small images for ``seconds``: every answer 200 or 503
    (queue full), never 500; afterwards the same worker still serves."""
    images = [png(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in (16, 24, 32)]
    statuses: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    errors: list[str] = []
    answered: list[int] = []  # clients that got at least one answer

    def client(k: int) -> None:
        try:  # a dropped connection is a failure of the server, not a thread's quiet end
            with requests.Session() as session:
                i = k
                while time.monotonic() < stop_at:
                    answer = session.post(url, data=images[i % len(images)], headers={"Content-Type": "image/png", **server.auth()}, timeout=120)
                    with lock:
                        statuses.append(answer.status_code)
                    i += 1
            if i > k:
                with lock:
                    answered.append(k)
        except Exception as e:
            with lock:
                errors.append(f"client {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(answered) == list(range(clients)), errors
    counts = {code: statuses.count(code) for code in set(statuses)}
    assert set(counts) <= {200, 503}, counts
    assert counts.get(200, 0) >= clients, counts
    assert requests.get(f"{server.inference}/ping", headers=server.auth(), timeout=10).json()["status"] == "Healthy"
    workers = server.describe("tiny")["workers"]
    assert [(w["status"], w["pid"]) for w in workers] == [("READY", worker_pid)], workers  # no crash, no restart
    after = requests.post(url, data=images[0], headers={"Content-Type": "image/png", **server.auth()}, timeout=120)
    assert after.status_code == 200
