"""The demo page's work without the page: what it offers on this machine, the Upscaler
cache, and one request (bytes equal to the CLI's Upscaler, one-line errors, the pixel cap
before decoding). The page itself, in a real browser, is tests/test_demo_page.py."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image
from test_imaging import bad_inputs

from srdeploy.demo.choices import machine_choices
from srdeploy.demo.compare import KEEP_SECONDS, Comparison, Settings, compare
from srdeploy.demo.upscalers import Upscalers
from srdeploy.io import imaging, png
from srdeploy.runtime import engines, openvino_engine, zoo
from srdeploy.runtime.upscaler import DEFAULT_TILE, Upscaler

FACE = EXAMPLES / "astronaut_face.png"
CLI_SETTINGS = Settings("same", None, imaging.DEFAULT_PNG_COMPRESSION, imaging.DEFAULT_MAX_PIXELS)  # srdeploy upscale's defaults


@pytest.fixture(scope="module")
def upscalers():
    return Upscalers(DEFAULT_TILE)


def upload(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_the_download_is_the_cli_upscalers_bytes_and_the_pictures_line_up(upscalers, tmp_path):
    done = compare(upscalers, FACE, "srresnet", "auto", "auto", CLI_SETTINGS, tmp_path)
    assert isinstance(done, Comparison), done
    expected = Upscaler("default").upscale_bytes(FACE.read_bytes(), FACE.name)  # what srdeploy upscale writes
    assert done.file.name == "astronaut_face.png" and done.file.read_bytes() == expected.data
    assert done.input.size == (64, 64) and done.upscaled.size == done.bicubic.size == (256, 256)
    up = upscalers.get("srresnet", "auto", "auto").upscaler
    assert f"provider {up.provider} {up.precision}" in done.summary and up.engine_why in done.summary  # what ran, and why auto chose it
    assert "64x64 -> 256x256 PNG" in done.summary


def test_results_older_than_an_hour_are_removed_by_the_next_request(upscalers, tmp_path):
    results = tmp_path / "results"
    done = compare(upscalers, FACE, "srresnet", "auto", "auto", CLI_SETTINGS, results)
    hour_and_a_bit = time.time() - KEEP_SECONDS - 60
    os.utime(done.file.parent, (hour_and_a_bit, hour_and_a_bit))
    recent = compare(upscalers, FACE, "srresnet", "auto", "auto", CLI_SETTINGS, results)
    assert [p.name for p in results.iterdir()] == [recent.file.parent.name] and recent.file.exists()


def test_the_page_format_is_the_cli_format(upscalers, tmp_path):
    settings = Settings("jpg", 80, imaging.DEFAULT_PNG_COMPRESSION, imaging.DEFAULT_MAX_PIXELS)
    done = compare(upscalers, FACE, "srresnet", "auto", "auto", settings, tmp_path)
    expected = Upscaler("default").upscale_bytes(FACE.read_bytes(), FACE.name, "jpg", 80)
    assert done.file.name == "astronaut_face.jpg" and done.file.read_bytes() == expected.data


def test_each_setting_is_loaded_once_and_kept(tmp_path):
    cache = Upscalers(DEFAULT_TILE)
    first = cache.get("srresnet", "cpu", "fp32")
    assert first.seconds > 0
    again = cache.get("srresnet", "cpu", "fp32")
    assert again.upscaler is first.upscaler and again.seconds == 0.0
    other = cache.get("srgan", "cpu", "fp32")
    assert other.upscaler is not first.upscaler and other.upscaler.model.name == "srgan" and len(cache) == 2
    done = compare(cache, FACE, "srresnet", "cpu", "fp32", CLI_SETTINGS, tmp_path)
    assert "loaded first" not in done.summary  # switching back costs nothing


@pytest.mark.parametrize("name", list(bad_inputs(np.random.default_rng(0))))
def test_a_bad_file_is_one_line_naming_it(upscalers, tmp_path, name):
    data, reason = bad_inputs(np.random.default_rng(0))[name]
    outcome = compare(upscalers, upload(tmp_path, name, data), "srresnet", "auto", "auto", CLI_SETTINGS, tmp_path / "out")
    assert isinstance(outcome, str) and outcome.startswith(f"{name}: ") and reason in outcome and "\n" not in outcome
    assert not (tmp_path / "out").exists()  # nothing to download


def test_the_pixel_cap_is_checked_before_decoding(upscalers, tmp_path):
    """A 3000x2000 header over garbage pixel data: the decoder would call it corrupt."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = png.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 2000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")
    path = upload(tmp_path, "big.png", data)
    capped = Settings("same", None, imaging.DEFAULT_PNG_COMPRESSION, 1_000_000)
    outcome = compare(upscalers, path, "srresnet", "auto", "auto", capped, tmp_path)
    assert outcome == "big.png: 3000x2000 (6,000,000 pixels) exceeds the input cap of 1,000,000 pixels (--max-pixels); not decoded"
    assert "corrupt" in compare(upscalers, path, "srresnet", "auto", "auto", CLI_SETTINGS, tmp_path)


def test_an_output_too_large_for_its_format_names_the_pages_control(upscalers, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4100, 2), "gray").save(buffer, "PNG")  # x4: 16400 px wide, past WebP's 16383
    webp = Settings("webp", None, imaging.DEFAULT_PNG_COMPRESSION, imaging.DEFAULT_MAX_PIXELS)
    outcome = compare(upscalers, upload(tmp_path, "strip.png", buffer.getvalue()), "srresnet", "auto", "auto", webp, tmp_path)
    assert outcome.startswith("strip.png: the x4 output (16400x8) exceeds WEBP's limit") and outcome.endswith("; choose PNG as the output format")


def test_a_setting_that_cannot_run_is_one_line(upscalers, tmp_path):
    assert compare(upscalers, FACE, "nonesuch", "auto", "auto", CLI_SETTINGS, tmp_path).startswith("unknown model 'nonesuch'")
    outcome = compare(upscalers, FACE, "srresnet", "cpu", "bf16", CLI_SETTINGS, tmp_path)
    assert outcome.startswith("provider 'cpu' has no bf16 path") and "\n" not in outcome


def test_running_out_of_memory_for_the_screen_copies_is_one_line_too(upscalers, tmp_path, monkeypatch):
    from srdeploy.demo import compare as compare_module

    def out_of_memory(picture):
        raise MemoryError

    monkeypatch.setattr(compare_module, "_to_pil", out_of_memory)
    outcome = compare(upscalers, FACE, "srresnet", "auto", "auto", CLI_SETTINGS, tmp_path)
    assert outcome == f"{FACE.name}: out of memory while upscaling; try a smaller image"


def test_the_page_offers_what_this_machine_runs(tmp_path):
    choices = machine_choices()
    assert choices.models[0] == "srresnet" and set(zoo.shipped_models()) <= set(choices.models)
    assert choices.providers[0] == "auto" and "cpu" in choices.providers  # onnxruntime is in every install
    # What this machine has, asked of the libraries themselves (not of the module under test)
    import onnxruntime as ort

    listed = ort.get_available_providers()
    here = {"cpu": "CPUExecutionProvider" in listed, "openvino": openvino_engine.available(),
            "cuda": "CUDAExecutionProvider" in listed, "tensorrt": "TensorrtExecutionProvider" in listed}
    assert choices.providers == ("auto", *(p for p in engines.PROVIDERS if here.get(p)))
    assert choices.precisions[:2] == ("auto", "fp32") and ("bf16" in choices.precisions) == openvino_engine.native_bf16()
    exported = tmp_path / "model.onnx"
    exported.write_bytes((zoo.MODELS_DIR / "srgan" / zoo.MODEL_FILE).read_bytes())
    named = machine_choices((str(exported), "default"), "cpu", "fp32")
    assert named.models == (str(exported), "srresnet", "srgan")  # the first named is loaded at start
    assert machine_choices(precision="int8").precisions[-1] == "int8"  # the page opens with it, so it is a choice


CHECK_HELP = """
import sys
from click.testing import CliRunner
from srdeploy.cli import main
result = CliRunner().invoke(main, ["demo", "--help"])
assert result.exit_code == 0, result.output
print(result.output)
print("HEAVY:", sorted(m for m in ("gradio", "torch", "onnxruntime", "openvino") if m in sys.modules))
"""

BLOCK_GRADIO = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gradio":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from srdeploy.cli import run
run(["demo", "--port", "1"])
"""


def test_demo_help_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", CHECK_HELP], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY: []" in out.stdout and "--max-pixels" in out.stdout and "127.0.0.1" in out.stdout


def test_without_gradio_the_demo_names_its_extra(tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCK_GRADIO], capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip() == "Error: this needs the gradio package, which is not installed: pip install 'srdeploy[demo]'"
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone


def test_an_address_that_is_not_this_machines_says_why():
    from conftest import SRDEPLOY

    out = subprocess.run([str(SRDEPLOY), "demo", "--host", "999.1.1.1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("Error: cannot listen on 999.1.1.1:7860: 999.1.1.1 is not a name or address this machine can use (")


def test_an_ipv6_address_is_refused_in_one_line():
    from srdeploy.demo.cli import listen_problem

    assert "IPv6 address is not supported" in listen_problem("::1", 7860)  # Gradio would fail on it with an URL error


def test_a_port_in_use_is_one_line(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'srdeploy[demo]')")
    import socket

    from conftest import SRDEPLOY

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([str(SRDEPLOY), "demo", "--port", str(port)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"  # said before any model loads
    assert "Traceback" not in out.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ses"] == []  # .ses: ONNX Runtime's, written on import


@pytest.mark.parametrize("host, answered", [("127.0.0.1", ["127.0.0.1", "localhost"]), ("localhost", ["127.0.0.1", "localhost"]),
                                            ("127.0.0.2", ["127.0.0.1", "127.0.0.2", "localhost"]), ("0.0.0.0", ["*"]), ("192.168.1.5", ["*"])])
def test_a_loopback_server_answers_loopback_names_only(host, answered):
    from srdeploy.demo.guard import allowed_hosts

    assert allowed_hosts(host) == answered

