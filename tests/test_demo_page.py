"""`srdeploy demo` in a real headless Chromium, driven by Selenium.

The server runs as a subprocess in its own process group (its own TMPDIR and working
folder); the test uploads the example face, waits for the result, downloads it through
the page's button and compares it byte for byte with `srdeploy upscale`; switches the
engine and back; uploads a file over the pixel cap and reads its message on the page;
checks that the page fetched nothing from outside the server; saves screenshots under
test-artifacts/ (SRDEPLOY_TEST_ARTIFACTS elsewhere); and stops the server by its pid,
leaving no process and no temporary folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, SRDEPLOY
from PIL import Image

from srdeploy.handlers.config import free_port_block
from srdeploy.io import png

pytest.importorskip("gradio", reason="gradio is not installed (pip install 'srdeploy[demo]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'srdeploy[dev]')")
psutil = pytest.importorskip("psutil")
requests = pytest.importorskip("requests")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]

# After the skips, which say why when selenium is absent.
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

FACE = EXAMPLES / "astronaut_face.png"
MAX_PIXELS = 1_000_000  # the server's and the CLI's --max-pixels: small enough to refuse a cheap test file
BUDGET = 300  # s for the whole test on a loaded 2-core machine
STEP = 90  # s at most for one step (the server starting, a result, a download)
ARTIFACTS = Path(os.environ.get("SRDEPLOY_TEST_ARTIFACTS", REPO / "test-artifacts"))
# Chromium on a machine without network: no sandbox (containers), no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,1040"]
RAN = "to decode, upscale and encode"  # in the status once a result is shown


class Deadline:
    """Time left for the test, or for one step of it (at most STEP)."""

    def __init__(self, seconds: float, what: str = "the test"):
        self.seconds, self.what, self.end = seconds, what, time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.what} took more than {self.seconds:.0f} s")
        return min(left, STEP)

    def step(self, what: str) -> Deadline:
        return Deadline(self.left(), what)


def over_the_cap(path: Path) -> Path:
    """A PNG whose header says 3000x2000 over garbage pixel data: refused by the header
    check, or reported corrupt if anything decoded it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(png.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 2000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b""))
    return path


def cli_output(tmp_path: Path, *options: str) -> tuple[bytes, str]:
    """`srdeploy upscale` of the face with the server's settings: the file and the line saying what ran."""
    out = tmp_path / f"cli{len(list(tmp_path.glob('cli*')))}"
    done = subprocess.run([str(SRDEPLOY), "upscale", str(FACE), "-o", str(out), "--max-pixels", str(MAX_PIXELS), *options],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return (out / FACE.name).read_bytes(), done.stderr.splitlines()[0]


class Server:
    """`srdeploy demo` in its own session: its pid is its process group's id."""

    def __init__(self, root: Path, port: int):
        self.root, self.url = root, f"http://127.0.0.1:{port}"
        (root / "tmp").mkdir(parents=True)
        self.log = root / "demo.log"
        env = {**os.environ, "TMPDIR": str(root / "tmp")}
        command = [str(SRDEPLOY), "demo", "--port", str(port), "--max-pixels", str(MAX_PIXELS)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, deadline: Deadline) -> dict:
        step = deadline.step("srdeploy demo to answer")
        while True:
            assert self.process.poll() is None, f"srdeploy demo exited with {self.process.returncode}: {self.tail()}"
            try:
                answer = requests.get(f"{self.url}/config", timeout=5)
                if answer.ok:
                    return answer.json()
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(min(1.0, step.left()))

    def group(self) -> list[int]:
        found = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.process.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    def stop(self) -> list[int]:
        """SIGTERM to the group, then SIGKILL to whatever outlived 30 s; returns those."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        survivors = self.group()
        if survivors:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        return survivors

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def chromium(profile: Path, downloads: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    except BaseException:
        quit_browser(driver)  # the caller never gets the driver to quit it
        raise
    return driver


def quit_browser(driver) -> list[int]:
    """Quit, then wait for chromedriver and every Chromium process under it to end;
    returns the pids still running 30 s later (then killed)."""
    driver_process = psutil.Process(driver.service.process.pid)
    family = [driver_process, *driver_process.children(recursive=True)]
    driver.quit()
    _, alive = psutil.wait_procs(family, timeout=30)
    for process in alive:
        process.kill()
    return [p.pid for p in alive]


def wait_for_status(driver, text: str, deadline: Deadline) -> str:
    WebDriverWait(driver, deadline.left()).until(lambda d: text in d.find_element(By.ID, "status").text, message=f"the page never showed {text!r}")
    return driver.find_element(By.ID, "status").text


def upload(driver, path: Path) -> None:
    """Into the file drop zone, clearing what it holds first (its file input exists only when empty)."""
    zone = driver.find_element(By.ID, "upload")
    for clear in zone.find_elements(By.CSS_SELECTOR, "button[aria-label=Clear]"):
        clear.click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def choose(driver, dropdown: str, value: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"#{dropdown} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.ENTER)


def downloaded(folder: Path, name: str, deadline: Deadline) -> bytes:
    target, step = folder / name, deadline.step(f"the download of {name}")
    while not target.is_file() or list(folder.glob("*.crdownload")):
        time.sleep(min(0.2, step.left()))
    return target.read_bytes()


def requested_urls(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def test_the_page_upscales_like_the_cli_and_explains_a_bad_file(tmp_path):
    deadline = Deadline(BUDGET)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    server = Server(tmp_path / "server", free_port_block(1))
    driver = None
    try:
        config = server.wait_ready(deadline)
        assert config["analytics_enabled"] is False
        listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
        # DNS rebinding: a page of another name pointed at 127.0.0.1 is not answered.
        assert requests.get(f"{server.url}/config", headers={"Host": "attacker.example"}, timeout=10).status_code == 400
        # A page of another site may post a form to any address: its uploads are refused.
        posted = requests.post(f"{server.url}/gradio_api/upload", headers={"Origin": "https://attacker.example"},
                               files={"files": ("x.png", FACE.read_bytes(), "image/png")}, timeout=10)
        assert posted.status_code == 403 and posted.headers["X-Frame-Options"] == "DENY"
        page = requests.get(server.url, headers={"Host": "localhost"}, timeout=10)
        assert page.ok and page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
        expected, cli_line = cli_output(tmp_path)
        ran = cli_line.rsplit(", tile", 1)[0]  # "model srresnet (sha256 ...), x4, provider openvino fp32 (auto: ...)"
        driver = chromium(tmp_path / "profile", downloads)
        driver.get(server.url)
        WebDriverWait(driver, deadline.left()).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))  # the app has rendered

        upload(driver, FACE)
        status = wait_for_status(driver, RAN, deadline)
        assert ran in status and "64x64 -> 256x256 PNG" in status
        assert "loaded first" not in status  # the model was loaded before the server listened
        driver.save_screenshot(str(ARTIFACTS / "demo.png"))
        driver.find_element(By.ID, "download").click()
        got = downloaded(downloads, FACE.name, deadline)
        assert got == expected
        (downloads / FACE.name).rename(downloads / "auto.png")
        assert Image.open(downloads / "auto.png").size == tuple(4 * side for side in Image.open(FACE).size)

        choose(driver, "provider", "cpu")  # another engine: loaded on first use, then kept
        status = wait_for_status(driver, "provider cpu fp32", deadline)
        assert "loaded first" in status
        driver.find_element(By.ID, "download").click()
        assert downloaded(downloads, FACE.name, deadline) == cli_output(tmp_path, "--provider", "cpu")[0]
        choose(driver, "provider", "auto")
        status = wait_for_status(driver, ran, deadline)
        assert "loaded first" not in status

        big = over_the_cap(tmp_path / "big.png")
        upload(driver, big)
        message = "big.png: 3000x2000 (6,000,000 pixels) exceeds the input cap of 1,000,000 pixels (--max-pixels); not decoded"
        wait_for_status(driver, message, deadline)
        assert driver.find_elements(By.CSS_SELECTOR, "#status .srd-error")
        assert "Traceback" not in driver.page_source
        driver.save_screenshot(str(ARTIFACTS / "demo-bad-file.png"))

        requested = requested_urls(driver)
        assert any(u.startswith(server.url) for u in requested)  # the log holds the page's own requests: it is read
        outside = {u for u in requested if u.split(":", 1)[0] in ("http", "https", "ws", "wss") and not u.startswith(server.url)}
        assert outside == set()
    finally:
        try:
            browser_left = quit_browser(driver) if driver is not None else []
        finally:  # the server goes even when quitting the browser fails
            survivors = server.stop()
            shutil.copy(server.log, ARTIFACTS / "demo-server.log")
    assert browser_left == [], f"chromium left {browser_left} running after quit (killed)"
    assert survivors == [], f"srdeploy demo left {survivors} running after SIGTERM: {server.tail()}"
    assert server.process.returncode == 0 and server.tail().endswith("srdeploy demo: stopped\n"), server.tail()
    assert server.group() == []
    # Gradio's uploads and results went with the server. .ses: ONNX Runtime writes it on
    # import (its telemetry SDK's session file), srdeploy upscale as well.
    assert [p.name for p in (tmp_path / "server" / "tmp").iterdir() if p.name != ".ses"] == []
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == ["demo.log", "tmp"]  # nothing written where it ran
