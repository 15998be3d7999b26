"""The TorchServe handler and the archive builder without a server (no Java).

The handler is loaded the way TorchServe loads it: the .mar that `srdeploy package`
builds is unpacked, its entry module imported from the unpacked folder, and the one class
in it instantiated; requests go through TorchServe's own Context/RequestProcessor
objects (pure Python), with the bytearray parameters TorchServe passes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, SRDEPLOY
from PIL import Image

from srdeploy.export.fp16 import convert_fp16
from srdeploy.handlers import config as serve_config
from srdeploy.handlers.config import Ports, ServeConfig
from srdeploy.handlers import package as package_module
from srdeploy.handlers.package import ENTRY_MODULE, PackageError, build_archive
from srdeploy.io import png
from srdeploy.runtime import cpus, graph, zoo
from srdeploy.runtime.engines import CPU_PROVIDERS
from srdeploy.runtime.upscaler import DEFAULT_TILE, Upscaler

ts_context = pytest.importorskip("ts.context", reason="torchserve is not installed (pip install 'srdeploy[serve]')")
ARCHIVE_FILES = {f"{ENTRY_MODULE}.py", "model.onnx", "manifest.json", "model-config.yaml", "MAR-INF/MANIFEST.json"}


# --- helpers ------------------------------------------------------------------------------


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **options)
    return out.getvalue()


def noise(rng, h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def unpack(archive: Path, into: Path) -> Path:
    """What TorchServe does with a .mar before loading it."""
    with zipfile.ZipFile(archive) as z:
        z.extractall(into)
    return into


def load_handler(model_dir: Path, gpu: int | None = None):
    """Import the archive's entry module from its folder and initialise its one class,
    as ts.model_loader does; returns (handler, context)."""
    from ts.utils.util import list_classes_from_module

    spec = importlib.util.spec_from_file_location(f"{ENTRY_MODULE}_{abs(hash(model_dir))}", model_dir / f"{ENTRY_MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = list_classes_from_module(module)
    assert len(classes) == 1, classes
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    model_config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    context = ts_context.Context("srgan", str(model_dir), manifest, model_config["batchSize"], gpu, "0.12.0", model_yaml_config=model_config)
    handler = classes[0]()
    handler.initialize(context)
    return handler, context


def send(handler, context, requests: list[tuple[dict, dict]]) -> list[dict]:
    """One batch of (parameters, headers) -> [{status, type, headers, body}] per request."""
    context.request_ids = {i: f"req-{i}" for i in range(len(requests))}
    processors = []
    for params, headers in requests:
        # TorchServe lists each parameter's content type among the headers, as a dict.
        merged = {name: {"content-type": "application/octet-stream"} for name in params}
        processors.append(ts_context.RequestProcessor({**merged, **headers}))
    context.request_processor = processors
    data = [{k: bytearray(v) if isinstance(v, bytes) else v for k, v in params.items()} for params, _ in requests]
    bodies = handler.handle(data, context)
    assert len(bodies) == len(requests)
    answers = []
    for idx, body in enumerate(bodies):
        status, _ = context.get_response_status(idx)
        answers.append({"status": status, "type": context.get_response_content_type(idx), "headers": context.get_response_headers(idx), "body": body})
    return answers


@pytest.fixture
def archive(tiny_onnx, tmp_path):
    """A real srgan.mar around the tiny generator, pixel cap 48x48, unpacked."""
    done = build_archive(tiny_onnx, tmp_path / "store", "srgan", ServeConfig(max_pixels=48 * 48, batch_size=8, workers=2))
    return done, unpack(done.archive, tmp_path / "unpacked")


@pytest.fixture
def served(archive):
    return load_handler(archive[1])


# --- the handler ----------------------------------------------------------------------------


def test_initialize_takes_settings_from_the_archive_and_threads_from_the_cores(archive, monkeypatch):
    monkeypatch.setattr(serve_config, "available_cpus", lambda: 6)
    handler, _ = load_handler(archive[1])
    d = handler.upscaler.describe()
    assert handler.settings.max_pixels == 48 * 48
    assert (d["tile"], d["scale"]) == (DEFAULT_TILE, 4) and d["provider"] in CPU_PROVIDERS  # auto, on this CPU
    assert d["threads"] == 3  # 6 cores shared by the archive's 2 workers
    assert d["model_sha256"] == archive[0].model_sha256


def test_a_batch_of_mixed_sizes_gives_the_clis_bytes_for_each(served, tiny_onnx, rng):
    handler, context = served
    images = [encoded(noise(rng, 12, 20), "PNG"), encoded(noise(rng, 33, 17), "JPEG", quality=90), encoded(noise(rng, 16, 16, 1), "PNG"), encoded(noise(rng, 5, 40, 4), "PNG")]
    answers = send(handler, context, [({"body": data}, {"Content-Type": "image/png"}) for data in images])
    reference = Upscaler(tiny_onnx, tile=DEFAULT_TILE)  # what `srdeploy upscale --format png` runs
    for data, answer in zip(images, answers):
        expected = reference.upscale_bytes(data, "x", "png")
        assert (answer["status"], answer["type"]) == (200, "image/png")
        assert answer["body"] == expected.data
        w, h = Image.open(io.BytesIO(data)).size
        assert Image.open(io.BytesIO(answer["body"])).size == (4 * w, 4 * h)


def test_bad_items_get_their_own_4xx_while_the_rest_succeed(served, rng):
    handler, context = served
    good = encoded(noise(rng, 10, 10), "PNG")
    big = encoded(noise(rng, 49, 48), "PNG")  # 2352 > 48 x 48 = 2304 pixels
    huge_header = png.PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 2000, 8, 2, 0, 0, 0)) + _chunk(b"IDAT", b"junk")
    bomb_header = png.PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)) + _chunk(b"IDAT", b"junk")  # past Pillow's own guard
    requests = [
        ({"body": good}, {}),
        ({"body": b"shopping list: eggs, milk\n"}, {}),
        ({"body": good[: len(good) // 2]}, {}),
        ({"body": big}, {}),
        ({"body": huge_header}, {}),
        ({"body": bomb_header}, {}),
        ({"body": b"GIF89a" + b"\0" * 20}, {}),
        ({"body": b""}, {}),
        ({"body": good}, {"X-Output-Format": "gif"}),
        ({"body": good, "quality": b"high"}, {"X-Output-Format": "jpeg"}),
        ({"body": {"url": "http://example.com/face.png"}}, {}),
        ({"photo": good, "scan": good}, {}),
        ({"format": b"png"}, {}),
        ({"foo": b"bar"}, {}),
        ({"body": good}, {}),
        ({"photo": good, "caption": b"BMW M3 at the show", "name": "me"}, {}),  # a form's text fields beside its only file (a BMP's magic, as text)
    ]
    answers = send(handler, context, requests)
    statuses = [a["status"] for a in answers]
    assert statuses == [200, 415, 400, 413, 413, 413, 400, 400, 400, 400, 400, 400, 400, 415, 200, 200]
    reasons = [
        None, "not an image (the file holds text)", "corrupt or truncated PNG data", "48x49 (2,352 pixels) exceeds this server's cap of 2,304 pixels",
        "3000x2000 (6,000,000 pixels) exceeds",
        "its header declares 400,000,000 pixels, which exceeds this server's cap of 2,304 pixels; send a smaller image",  # the count Pillow's guard stated
        "GIF", "'body' is empty", "unknown output format 'gif'", "quality must be a whole number from 1 to 100, got 'high'",
        "holds dict data", "no image found", "no image found; send the image bytes as the request body or as a multipart field named 'image' (fields: 'format')",
        "request req-13, field 'foo': not an image (the file holds text)",  # the one field, read as the image, is named
        None, None,
    ]
    for idx, (answer, reason) in enumerate(zip(answers, reasons)):
        if reason is None:
            assert answer["type"] == "image/png" and answer["body"] == answers[0]["body"]
            continue
        error = json.loads(answer["body"])
        assert answer["type"] == "application/json"
        assert error["code"] == answer["status"]
        assert error["message"].startswith((f"request req-{idx}: ", f"request req-{idx}, field ")), error
        assert reason in error["message"], error


def test_an_internal_failure_is_a_500_for_its_item_alone_and_its_details_stay_in_the_log(served, rng, monkeypatch, caplog):
    handler, context = served
    real = handler.upscaler.upscale_picture
    calls = []

    def fails_once(picture):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("onnxruntime: node /body/conv_3 at /opt/models/secret_path")
        return real(picture)

    monkeypatch.setattr(handler.upscaler, "upscale_picture", fails_once)
    image = encoded(noise(rng, 10, 10), "PNG")
    answers = send(handler, context, [({"body": image}, {}), ({"body": image}, {})])
    assert [a["status"] for a in answers] == [500, 200]
    message = json.loads(answers[0]["body"])["message"]
    assert "secret_path" not in message and "upscaling failed (an internal error; the server's log has the details)" in message
    assert "secret_path" in caplog.text  # the operator sees it

    def engine_out_of_memory(picture):  # as ONNX Runtime's CUDA provider words it
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; GPU=0")

    def python_out_of_memory(picture):  # numpy's allocation: a MemoryError with no words to match
        raise MemoryError

    for failure in (engine_out_of_memory, python_out_of_memory):
        monkeypatch.setattr(handler.upscaler, "upscale_picture", failure)
        (answer,) = send(handler, context, [({"body": image}, {})])
        assert answer["status"] == 507 and "out of memory while upscaling; try a smaller image" in json.loads(answer["body"])["message"]


def test_output_format_from_header_or_field(served, tiny_onnx, rng):
    handler, context = served
    rgb, rgba = encoded(noise(rng, 12, 14), "PNG"), encoded(noise(rng, 12, 14, 4), "PNG")
    jpeg = encoded(noise(rng, 8, 8), "JPEG")
    answers = send(handler, context, [
        ({"body": rgb}, {"X-Output-Format": "JPEG", "X-Output-Quality": "80"}),
        ({"image": rgb, "format": b"webp", "quality": b"70"}, {}),
        ({"image": rgb, "format": b"png"}, {"x-output-format": "webp"}),  # the field wins
        ({"body": jpeg}, {"X-Output-Format": "same"}),
        ({"body": rgba}, {"X-Output-Format": "jpg"}),
    ])
    reference = Upscaler(tiny_onnx, tile=DEFAULT_TILE)
    expected = [
        ("image/jpeg", reference.upscale_bytes(rgb, "x", "jpg", 80)),
        ("image/webp", reference.upscale_bytes(rgb, "x", "webp", 70)),
        ("image/png", reference.upscale_bytes(rgb, "x", "png")),
        ("image/jpeg", reference.upscale_bytes(jpeg, "x", "same")),
        ("image/png", reference.upscale_bytes(rgba, "x", "jpg")),  # alpha forces PNG
    ]
    for answer, (content_type, out) in zip(answers, expected):
        assert (answer["status"], answer["type"]) == (200, content_type)
        assert answer["body"] == out.data
    assert answers[4]["headers"]["X-Upscale-Note"] == "JPEG cannot store alpha, wrote PNG"
    assert "X-Upscale-Note" not in answers[0]["headers"]


def test_the_gpu_torchserve_assigns_becomes_the_workers_only_visible_one(archive, monkeypatch, caplog):
    """The GPU is mocked: TorchServe's gpu_id reaches CUDA_VISIBLE_DEVICES; without CUDA in
    this ONNX Runtime, provider auto runs on the CPU, and says so as a warning."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with caplog.at_level("WARNING", logger="srdeploy.handlers.torchserve_handler"):
        handler, _ = load_handler(archive[1], gpu=1)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert handler.upscaler.provider in CPU_PROVIDERS
    assert any(r.levelname == "WARNING" and "gave this worker GPU 1 but the model runs on the CPU" in r.getMessage() for r in caplog.records)


def test_a_damaged_or_incomplete_archive_is_refused_at_load(archive):
    _, model_dir = archive
    model = model_dir / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(zoo.ModelError, match="sha256 .* differs"):
        load_handler(model_dir)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(zoo.ModelError, match="no manifest.json"):
        load_handler(model_dir)


# --- the archive and the server config ----------------------------------------------------


def test_archive_holds_only_the_model_manifest_config_and_entry(archive, tiny_onnx):
    done, model_dir = archive
    with zipfile.ZipFile(done.archive) as z:
        assert set(z.namelist()) == ARCHIVE_FILES
        texts = [z.read(n) for n in z.namelist()]
    for text in texts:  # nothing points back into this checkout or the build folder
        assert str(REPO).encode() not in text and str(tiny_onnx.parent).encode() not in text
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"]["sha256"] == done.model_sha256 == zoo.resolve_model(tiny_onnx).sha256
    model_config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    assert model_config["batchSize"] == 8 and model_config["minWorkers"] == model_config["maxWorkers"] == 2
    assert model_config["responseTimeout"] == done.response_timeout_s >= serve_config.MIN_RESPONSE_TIMEOUT
    assert model_config["handler"] == {"max_pixels": 48 * 48, "tile": DEFAULT_TILE, "provider": "auto", "precision": "auto"}
    entry = (model_dir / f"{ENTRY_MODULE}.py").read_text()
    assert "from srdeploy.handlers.torchserve_handler import UpscaleHandler" in entry


def test_config_properties_is_safe_by_default(archive):
    done, _ = archive
    props = dict(line.split("=", 1) for line in done.config_properties.read_text().splitlines() if line and not line.startswith("#"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    assert props["install_py_dep_per_model"] == "false"
    assert props["load_models"] == "srgan=srgan.mar"
    store = done.archive.parent
    assert props["model_store"] == store.as_posix()
    allowed = re.compile(props["allowed_urls"].replace("\\\\", "\\"))  # Java properties escape backslashes
    assert allowed.fullmatch(f"file://{store.as_posix()}/srgan.mar")
    for other in (f"file://{store.as_posix()}/sub/x.mar", f"file://{store.as_posix()}X/srgan.mar", "https://example.com/srgan.mar", f"file://{store.as_posix()}/srgan.marx"):
        assert not allowed.fullmatch(other), other
    assert done.config_properties == store.parent / "config.properties"


def test_size_limits_hold_the_worst_case_request_and_response(rng):
    """16-bit RGBA noise, the largest thing the handler reads or writes per pixel."""
    config = ServeConfig(max_pixels=40 * 30)
    upload = png.encode_png(rng.integers(0, 65536, (30, 40, 4), dtype=np.uint16))
    output = png.encode_png(rng.integers(0, 65536, (120, 160, 4), dtype=np.uint16))
    assert len(upload) <= serve_config.max_request_bytes(config)
    assert len(output) <= serve_config.max_response_bytes(config) - (1 << 20)  # without the headroom
    default = ServeConfig()
    assert serve_config.max_response_bytes(default) > 2048 * 2048 * 8  # TorchServe's 6.5 MB default is far too small


def test_ports_follow_the_base_and_threads_never_oversubscribe():
    ports = Ports(20000)
    assert (ports.inference, ports.management, ports.metrics, ports.grpc_inference, ports.grpc_management, ports.workers) == tuple(range(20000, 20006))
    with pytest.raises(ValueError):
        Ports(65530)
    assert [serve_config.engine_threads(w, cores=8) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_cgroup_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota(tmp_path) is None


def test_flops_and_timeout_come_from_the_graph(tiny_onnx):
    import onnx

    # B=1, 8 channels: head 9x9 3->8, block 2 x 3x3 8->8, body conv 3x3 8->8, upsamplers
    # 3x3 8->32 at x1 and x2 (4x the pixels), tail 9x9 8->3 at x4 (16x): multiply-adds x 2.
    expected = 2 * (8 * 3 * 81 + 2 * 8 * 8 * 9 + 8 * 8 * 9 + 32 * 8 * 9 * (1 + 4) + 3 * 8 * 81 * 16)
    assert graph.analyze(onnx.load(str(tiny_onnx)).graph).conv_flop_per_lr_pixel == expected
    slow = ServeConfig(max_pixels=4000 * 4000, batch_size=2)
    per_image = 4000 * 4000 * expected * ((DEFAULT_TILE + 2 * 6) / DEFAULT_TILE) ** 2 / serve_config.ASSUMED_CPU_FLOPS
    assert serve_config.response_timeout(slow, tiny_onnx) >= 2 * per_image
    assert serve_config.response_timeout(ServeConfig(), tiny_onnx) == serve_config.MIN_RESPONSE_TIMEOUT


def test_the_timeout_is_sized_for_the_costliest_shape_under_the_cap():
    """Full-sized windows make a ragged image under the cap run more pixels than a square."""
    from srdeploy.runtime.tiling import plan_tiles

    def window_pixels(height, width):
        return sum((r.stop - r.start) * (c.stop - c.start) for r, c in plan_tiles(height, width, 256, 24))

    cap = 512 * 512
    assert window_pixels(305, 859) > 1.9 * window_pixels(512, 512)  # within the cap: 305 x 859 = 261,995 pixels
    assert serve_config._tiled_pixels(cap, 256, 24) >= window_pixels(305, 859)


def test_property_values_are_escaped_for_java():
    assert serve_config._property_value(r"a\b") == r"a\\b"
    assert serve_config._property_value("/srv/modèles/😀") == "/srv/mod\\u00e8les/\\ud83d\\ude00"
    with pytest.raises(ValueError, match="line break"):
        serve_config._property_value("a\nb")


# --- srdeploy package ---------------------------------------------------------------------


def test_package_cli_builds_refuses_to_overwrite_and_reports_errors(tiny_onnx, tmp_path):
    store = tmp_path / "models"
    first = subprocess.run([str(SRDEPLOY), "package", "--model", str(tiny_onnx), "-o", str(store), "--name", "faces", "--port", "18500"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (store / "faces.mar").is_file() and (tmp_path / "config.properties").is_file()
    assert "inference_address=http://127.0.0.1:18500" in (tmp_path / "config.properties").read_text()
    spaced = tmp_path / "my $(touch pwned) models"  # the start line is pasted into a shell
    spaced.mkdir()
    start = subprocess.run([str(SRDEPLOY), "package", "--model", str(tiny_onnx), "-o", str(spaced / "store"), "--config", str(spaced / "config.properties")],
                           capture_output=True, text=True, timeout=120)
    assert f"start: cd '{spaced}' && torchserve" in start.stdout, start.stdout + start.stderr
    again = subprocess.run([str(SRDEPLOY), "package", "--model", str(tiny_onnx), "-o", str(store), "--name", "faces"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "faces.mar already exists; pass --force" in again.stderr
    bad = subprocess.run([str(SRDEPLOY), "package", "--model", str(tmp_path / "none.onnx"), "-o", str(store)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "model file not found" in bad.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model\n")
    garbled = subprocess.run([str(SRDEPLOY), "package", "--model", str(junk), "-o", str(tmp_path / "other")], capture_output=True, text=True, timeout=120)
    assert garbled.returncode == 2 and f"Error: {junk}: not a readable ONNX model (" in garbled.stderr and "unexpected" not in garbled.stderr
    assert not (tmp_path / "other").exists()  # refused before the store was made
    assert sorted(p.name for p in store.iterdir()) == [".srdeploy-package.lock", "faces.mar"]  # no staging left behind
    (tmp_path / "config.properties").write_text("# edited by hand\n")
    other = subprocess.run([str(SRDEPLOY), "package", "--model", str(tiny_onnx), "-o", str(store), "--name", "other"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "config.properties already exists; pass --force" in other.stderr
    assert (tmp_path / "config.properties").read_text() == "# edited by hand\n" and not (store / "other.mar").exists()
    int8 = subprocess.run([str(SRDEPLOY), "package", "--model", str(tiny_onnx), "-o", str(tmp_path / "s8"), "--precision", "int8"], capture_output=True, text=True, timeout=120)
    assert int8.returncode == 2 and "int8 needs an int8 model" in int8.stderr and not (tmp_path / "s8").exists()
    tiny_tile = subprocess.run([str(SRDEPLOY), "package", "--model", "default", "-o", str(tmp_path / "st"), "--tile", "4"], capture_output=True, text=True, timeout=120)
    assert tiny_tile.returncode == 2 and "tile 4 is smaller than this model's 24 px overlap" in tiny_tile.stderr and not (tmp_path / "st").exists()


def test_package_refuses_what_every_worker_would_refuse_and_a_failed_run_writes_nothing(tiny_onnx, tmp_path, monkeypatch):
    """Settings no server could run (an engine without that precision, sizes past
    TorchServe's Java ints), and a config file that cannot be written: no archive, no
    config, no store folder made for the run."""
    fp16 = convert_fp16(tiny_onnx, tmp_path / "model.fp16.onnx")

    def package(*args):
        return subprocess.run([str(SRDEPLOY), "package", *map(str, args)], capture_output=True, text=True, timeout=120)

    refusals = [
        ((tiny_onnx, "--provider", "cpu", "--precision", "bf16"), "provider 'cpu' has no bf16 path"),
        ((fp16, "--provider", "openvino"), "an fp16 model is for GPUs"),
        ((tiny_onnx, "--max-pixels", 16769025), "too large for TorchServe, whose size limits are Java ints; the most it can serve is 16,602,994 pixels"),
    ]
    for i, (args, message) in enumerate(refusals):
        run = package("--model", *args, "-o", tmp_path / f"store{i}")
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not (tmp_path / f"store{i}").exists()
    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package_module, "atomic_write_bytes", disk_full)
    with pytest.raises(PackageError, match=re.escape(f"cannot write {tmp_path / 'config.properties'} (No space left on device); nothing was written")):
        build_archive(tiny_onnx, tmp_path / "store")
    assert not (tmp_path / "store").exists()
    monkeypatch.undo()

    # --force over an earlier package, and the archive's move fails: the earlier config is back
    first = build_archive(tiny_onnx, tmp_path / "kept")
    before = first.config_properties.read_bytes(), first.archive.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".mar"):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(package_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        build_archive(tiny_onnx, tmp_path / "kept", force=True, config=ServeConfig(max_pixels=4096))
    assert (first.config_properties.read_bytes(), first.archive.read_bytes()) == before


def test_a_killed_runs_staging_folder_is_swept_and_a_live_run_is_waited_for(tiny_onnx, tmp_path):
    import fcntl

    store = tmp_path / "store"
    stale = store / ".faces.mar-k1ll3d"  # what a SIGKILL mid-build left (a full copy of the model)
    (stale / "files").mkdir(parents=True)
    (stale / "files" / "model.onnx").write_bytes(b"\0" * 1024)
    done = build_archive(tiny_onnx, store, "faces")
    assert done.archive.is_file() and not stale.exists()
    assert sorted(p.name for p in store.iterdir()) == [".srdeploy-package.lock", "faces.mar"]
    with open(store / ".srdeploy-package.lock", "a+b") as held:  # what a live run holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PackageError, match="another srdeploy package is writing to"):
            build_archive(tiny_onnx, store, "other", properties_path=tmp_path / "other.properties")
    assert not (store / "other.mar").exists()


def test_bad_names_and_engines_are_refused(tiny_onnx, tmp_path):
    with pytest.raises(PackageError, match="model name"):
        build_archive(tiny_onnx, tmp_path / "s", "../evil")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(zoo.ModelError, match="carry an ONNX model"):
        build_archive(engine, tmp_path / "s")
    with pytest.raises(PackageError, match=r"a\.\.\.: 201 characters; use at most 200"):
        build_archive(tiny_onnx, tmp_path / "s", "a" * 201)
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(PackageError, match="model store .*loop: a symbolic link loop"):
        build_archive(tiny_onnx, tmp_path / "loop")
    with pytest.raises(PackageError, match="--config .*loop: a symbolic link loop"):
        build_archive(tiny_onnx, tmp_path / "s", properties_path=tmp_path / "loop")
    assert not (tmp_path / "s").exists()


def test_a_model_of_another_scale_is_refused(tiny_onnx, tmp_path):
    """The server's request and response limits are sized for x4."""
    import onnx

    from srdeploy.runtime.contract import META_SCALE

    model = onnx.load(str(tiny_onnx))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, META_SCALE: "2"})
    onnx.save(model, str(tmp_path / "x2.onnx"))
    with pytest.raises(zoo.ModelError, match="x2.onnx: an x2 model; srdeploy serves x4 models"):
        build_archive(tmp_path / "x2.onnx", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_default_model_not_shipped_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path / "empty")
    with pytest.raises(zoo.ModelError, match="not shipped in this build"):
        build_archive("default", tmp_path / "store")
    assert not (tmp_path / "store").exists()  # nothing written, not even the store folder


@pytest.mark.skipif("srresnet" not in zoo.shipped_models(), reason="no default (srresnet) model is shipped in this build yet")
def test_package_default_model(tmp_path):
    done = build_archive("default", tmp_path / "store")
    unpacked = unpack(done.archive, tmp_path / "unpacked")
    assert done.model_sha256 == zoo.resolve_model("default").sha256
    handler, context = load_handler(unpacked)
    face = Image.open(REPO / "examples" / "astronaut_face.png")
    data = encoded(np.asarray(face.convert("RGB")), "PNG")
    [answer] = send(handler, context, [({"body": data}, {})])
    assert answer["status"] == 200 and Image.open(io.BytesIO(answer["body"])).size == (4 * face.width, 4 * face.height)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_package_names_the_archive_after_the_model_and_writes_its_provider(tiny_onnx, tmp_path):
    """`--model default` is served as srresnet, not as a fixed name; a file by its stem."""
    shipped = build_archive("default", tmp_path / "store", config=ServeConfig(provider="cpu"))
    assert (shipped.model_name, shipped.archive.name) == ("srresnet", "srresnet.mar")
    assert "load_models=srresnet=srresnet.mar" in shipped.config_properties.read_text()
    model_config = yaml.safe_load((unpack(shipped.archive, tmp_path / "unpacked") / "model-config.yaml").read_text())
    assert model_config["handler"]["provider"] == "cpu"
    exported = build_archive(tiny_onnx, tmp_path / "store2", properties_path=tmp_path / "tiny.properties")
    assert (exported.model_name, exported.archive.name) == ("tiny", "tiny.mar")


def test_threads_are_shared_among_the_most_workers_the_config_allows():
    # minWorkers below maxWorkers: TorchServe may run the larger number, so the cores are
    # divided by it (read first), or the workers together would oversubscribe them.
    from srdeploy.handlers.torchserve_handler import HandlerSettings

    assert HandlerSettings.from_model_config({"minWorkers": 1, "maxWorkers": 4}).workers == 4
    assert HandlerSettings.from_model_config({"minWorkers": 2}).workers == 2


def test_an_output_format_too_small_for_the_result_names_the_servers_option():
    """A client has no --format: the answer names the header and the form field instead."""
    from srdeploy.handlers.torchserve_handler import image_refusal
    from srdeploy.io import imaging

    wide = imaging.ImageInfo("request r1", "PNG", 4100, 16, has_alpha=False, depth=8, gray=False)
    try:
        imaging.check_output_size(wide, 4, "WEBP")
    except imaging.OutputTooLarge as e:
        refusal = image_refusal(e, b"\x89PNG\r\n\x1a\n", "request r1", 512 * 512)
    assert refusal.status == 400 and "--format" not in str(refusal)
    assert str(refusal) == "request r1: the x4 output (16400x64) exceeds WEBP's limit of 16383 px a side; ask for PNG (header X-Output-Format: png, or form field format=png)"
