"""The Upscaler: providers (and their errors), the shipped-model mechanism with its sha256
check, every image mode through the model, byte-identical output, thread safety, and
parity with the PyTorch generator."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx_toy import build_toy_sr
from PIL import Image

from srdeploy.io import imaging
from srdeploy.runtime import tiling, zoo
from srdeploy.runtime.manifest import write_manifest
from srdeploy.runtime.providers import EXECUTION_PROVIDERS, OrtRunner, ProviderError, select_provider
from srdeploy.runtime.upscaler import LUMA, Upscaler
from srdeploy.runtime.zoo import ModelError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_sr(tmp_path_factory.mktemp("toy") / "toy.onnx")


@pytest.fixture(scope="module")
def up(toy):
    return Upscaler(toy, provider="cpu", tile=16)


# --- providers -----------------------------------------------------------------------


def test_select_provider_auto_prefers_a_working_gpu_and_never_tensorrt():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_provider("auto", cpu_only) == "cpu"
    assert select_provider("auto", gpu) == "cuda"
    assert select_provider("tensorrt", gpu) == "tensorrt"
    assert select_provider("cpu", gpu) == "cpu"


@pytest.mark.parametrize("requested,hint", [("cuda", "srdeploy[gpu]"), ("tensorrt", "srdeploy[gpu,tensorrt]")])
def test_missing_provider_is_an_error_naming_the_available_ones_and_the_fix(requested, hint):
    with pytest.raises(ProviderError) as caught:
        select_provider(requested, ["CPUExecutionProvider"])
    text = str(caught.value)
    assert f"provider '{requested}'" in text and "available: CPUExecutionProvider" in text and hint in text


def test_unknown_provider_is_refused(toy):
    with pytest.raises(ProviderError, match="unknown ONNX Runtime provider 'gpu'"):
        select_provider("gpu", ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="unknown provider 'gpu': use one of auto, cpu, openvino, cuda, tensorrt"):
        Upscaler(toy, provider="gpu")


def test_requesting_cuda_here_fails_instead_of_running_on_cpu(toy):
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        Upscaler(toy, provider="cuda")


def test_a_listed_gpu_provider_that_cannot_start_is_caught(toy, monkeypatch):
    """ONNX Runtime quietly drops a provider it cannot start; the Upscaler must notice."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning), pytest.raises(ProviderError, match="failed to start"):
        Upscaler(toy, provider="cuda")
    with pytest.warns(UserWarning):
        auto = Upscaler(toy, provider="auto")
    assert auto.provider in ("cpu", "openvino") and auto.engine_why.startswith("auto: CUDA did not start (") and "failed to start" in auto.engine_why


ORT_LOAD_FAILURE = (  # what onnxruntime-gpu 1.31 logged on this CPU-only machine, NVIDIA's CUDA wheels installed
    "\x1b[1;31m2026-12-07 02:11:34.107 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] ... FAIL : Failed to load library "
    "/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: libcuda.so.1: cannot open "
    "shared object file: No such file or directory\n\x1b[m\n"
)


def test_a_gpu_provider_that_cannot_load_says_why_in_one_line(toy, monkeypatch, capfd):
    """The GPU itself is simulated: a session whose CUDA provider's library did not load, as
    ONNX Runtime reports it (logged on stderr, the session left on the CPU). The user gets
    one line naming the missing library, not ONNX Runtime's log, and stdout stays clean of
    what preloading the CUDA libraries printed."""
    real_session = ort.InferenceSession

    def session_without_cuda(model, sess_options=None, providers=None):
        os.write(2, ORT_LOAD_FAILURE.encode())
        return real_session(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda: print("Failed to load libcudnn.so.9: no such file"), raising=False)
    monkeypatch.setattr(ort, "InferenceSession", session_without_cuda)
    with pytest.raises(ProviderError) as refused:
        Upscaler(toy, provider="cuda")
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message
    assert "libonnxruntime_providers_cuda.so did not load: libcuda.so.1: cannot open shared object file" in message
    assert "Failed to load libcudnn.so.9: no such file" in message and "NVIDIA GPU and driver" in message
    auto = Upscaler(toy, provider="auto")  # falls back, and says why
    assert "libcuda.so.1" in auto.engine_why
    out, err = capfd.readouterr()
    assert out == "" and "onnxruntime" not in err


def test_untiled_is_cpu_only(toy, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="untiled"):
        Upscaler(toy, provider="cuda", tile=0)


def test_engine_files_need_tensorrt(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(ProviderError, match="runs only with --provider tensorrt"):
        Upscaler(engine, provider="cpu")
    with pytest.raises(ProviderError, match="model.engine: .*(TensorRT|tensorrt|GPU)"):
        Upscaler(engine, provider="auto")


def test_cpu_session_settings(up):
    assert up.provider == "cpu" and up.scale == 4 and up.overlap == 3  # ceil(2.75), read off the graph
    assert up.threads >= 1
    assert up.describe()["model_sha256"] == up.model.sha256


def test_io_binding_path_gives_the_plain_run_result(up, rng):
    """The GPU path's buffer binding, exercised on the CPU device."""
    batch = rng.random((1, 3, 21, 17), dtype=np.float32)
    runner = OrtRunner(up._run.session, up.scale, device="cpu", io_binding=True)
    first, second = runner(batch), runner(rng.random((1, 3, 21, 17), dtype=np.float32))
    assert np.array_equal(first, up._run(batch))
    assert not np.array_equal(first, second)  # the bound input buffer really is refilled


def test_io_binding_keeps_buffers_for_a_few_window_shapes_only(up, rng):
    """Each bound shape holds a window's input and output on the device: a batch of many
    image sizes (or a server running for weeks) must not keep one per size forever."""
    runner = OrtRunner(up._run.session, up.scale, device="cpu", io_binding=True)
    sides = range(5, 5 + tiling.SHAPES_KEPT + 4)
    for side in sides:
        batch = rng.random((1, 3, side, side + 1), dtype=np.float32)
        assert np.array_equal(runner(batch), up._run(batch))
    kept = runner._local.bindings
    assert [shape[2] for shape in kept] == list(sides)[-tiling.SHAPES_KEPT:]  # the newest, oldest first


class FakeEngine:
    """Stands in for a TensorRT engine on its GPU (neither is here): nearest x4, 200-px windows."""

    max_side = 200

    def __call__(self, lr):
        return lr.repeat(4, axis=2).repeat(4, axis=3)


def test_an_engine_runs_at_the_precision_and_overlap_its_manifest_records(tmp_path, monkeypatch):
    import srdeploy.runtime.upscaler as upscaler_module

    monkeypatch.setattr(upscaler_module, "open_engine", lambda path: FakeEngine())
    engine = tmp_path / "model.fp16.engine"  # export's name: no model.fp16.onnx beside it to read a radius from
    engine.write_bytes(b"serialised engine")
    write_manifest(tmp_path, {"models": {engine.name: {"format": "tensorrt", "precision": "fp16", "built_from": "model.fp16.onnx"}},
                              "receptive_radius_lr": 40}, files=[engine.name])
    up = Upscaler(engine, provider="tensorrt")
    assert (up.provider, up.precision, up.overlap, up.tile, up.engine_why) == ("tensorrt", "fp16", 40, 200 - 2 * 40, None)
    assert up.describe()["precision"] == "fp16"  # what the journal keys outputs by
    with pytest.raises(ProviderError, match="built for fp16"):
        Upscaler(engine, provider="tensorrt", precision="fp32")

    (tmp_path / "manifest.json").unlink()  # moved away from its export: said, not guessed silently
    up = Upscaler(engine, provider="tensorrt")
    assert (up.precision, up.overlap) == ("unknown", tiling.FALLBACK_OVERLAP) and "no manifest.json" in up.engine_why
    assert Upscaler(engine, provider="tensorrt", precision="fp16").precision == "fp16"  # the user's word, where no manifest says


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_match_cpu(toy, provider, rng):
    import onnxruntime as ort

    from srdeploy.runtime.providers import EXECUTION_PROVIDERS

    if EXECUTION_PROVIDERS[provider] not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no {EXECUTION_PROVIDERS[provider]} (pip install 'srdeploy[gpu]')")
    lr = rng.random((150, 170, 3), dtype=np.float32)
    cpu = Upscaler(toy, provider="cpu", tile=64).upscale_array(lr)
    gpu = Upscaler(toy, provider=provider, tile=64)
    assert gpu.provider == provider
    assert np.abs(gpu.upscale_array(lr) - cpu).max() <= 1e-3


# --- the shipped models --------------------------------------------------------------


@pytest.fixture
def fake_models_dir(tmp_path, toy, monkeypatch):
    """A package-data folder like the release's: models/srresnet/{model.onnx, manifest.json}."""
    folder = tmp_path / "models" / "srresnet"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(toy.read_bytes())
    write_manifest(folder, {"name": "srresnet", "scale": 4, "note": "toy model for tests"})
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path / "models")
    return folder


def test_default_resolves_to_the_shipped_srresnet_after_its_sha256_check(fake_models_dir):
    ref = zoo.resolve_model("default")
    assert ref.name == "srresnet" and ref.path == fake_models_dir / "model.onnx"
    assert ref.manifest["note"] == "toy model for tests"
    assert zoo.shipped_models() == ["srresnet"]
    assert Upscaler("default", provider="cpu").model.sha256 == ref.sha256


def test_a_damaged_shipped_model_is_refused(fake_models_dir):
    with open(fake_models_dir / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"shipped model 'srresnet' failed its integrity check: .*sha256 .* differs"):
        zoo.resolve_model("default")


def test_a_name_not_shipped_says_so(fake_models_dir):
    with pytest.raises(ModelError, match=r"model 'srgan' is not shipped in this build .* shipped models: srresnet"):
        zoo.resolve_model("srgan")


def test_this_build_default_model(monkeypatch):
    """default is the shipped srresnet, checked against its manifest; a build without it
    says it is not shipped."""
    if "srresnet" in zoo.shipped_models():
        default, srresnet = zoo.resolve_model("default"), zoo.resolve_model("srresnet")
        assert default.path == srresnet.path and default.sha256 == srresnet.sha256 and default.manifest is not None
        assert default.manifest["shipped"]["name"] == "srresnet"
    else:
        with pytest.raises(ModelError, match=r"model 'srresnet' \(default = srresnet\) is not shipped"):
            zoo.resolve_model("default")


def test_model_paths(tmp_path, toy):
    with pytest.raises(ModelError, match="unknown model 'esrgan'"):
        zoo.resolve_model("esrgan")
    with pytest.raises(ModelError, match="model file not found"):
        zoo.resolve_model(tmp_path / "absent.onnx")
    (tmp_path / "exported").mkdir()  # what `srdeploy export -o exported` made
    with pytest.raises(ModelError, match="exported is a folder, not a model file: name the .onnx or .engine file inside it"):
        zoo.resolve_model(tmp_path / "exported")
    with pytest.raises(ModelError, match=r"last.pt is a training checkpoint; export it first \(srdeploy export .*last.pt -o DIR\) and pass DIR/model.onnx"):
        zoo.resolve_model(tmp_path / "last.pt")
    copy = tmp_path / "mine.onnx"
    copy.write_bytes(toy.read_bytes())
    assert zoo.resolve_model(copy).manifest is None  # no manifest beside it: used as given
    write_manifest(tmp_path, {}, files=["mine.onnx"])
    assert zoo.resolve_model(copy).manifest is not None
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["mine.onnx"]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="differs from 0000"):
        zoo.resolve_model(copy)
    if Path("/proc/self/mem").exists():  # a file every read of which fails (EIO), even for root
        (tmp_path / "eio.onnx").symlink_to("/proc/self/mem")
        with pytest.raises(ModelError, match=r"eio.onnx: cannot read \(Input/output error\)"):
            zoo.resolve_model(tmp_path / "eio.onnx")
        (tmp_path / "manifest.json").unlink()
        (tmp_path / "manifest.json").symlink_to("/proc/self/mem")
        with pytest.raises(ModelError, match=r"mine.onnx: the manifest beside it cannot be read: .*manifest.json \(Input/output error\)"):
            zoo.resolve_model(copy)


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"definitely not protobuf")
    with pytest.raises(ModelError, match="bogus.onnx: not a readable ONNX model"):
        Upscaler(bogus, provider="cpu")


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_a_model_that_does_not_enlarge_is_refused(tmp_path, provider):
    """A wrong file given as --model (here lr -> sr unchanged) would "upscale" every image
    to its own size and report it done."""
    import onnx
    from onnx import TensorProto, helper

    if provider == "openvino":
        pytest.importorskip("openvino")
    io_ = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 3, "h", "w"]) for name in ("lr", "sr")]
    graph = helper.make_graph([helper.make_node("Identity", ["lr"], ["sr"])], "same_size", io_[:1], io_[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "same_size.onnx")
    with pytest.raises(ModelError, match=r"same_size.onnx: the model makes images the size of its inputs \(x1\), not an upscaling model"):
        Upscaler(tmp_path / "same_size.onnx", provider=provider)


# --- pixels --------------------------------------------------------------------------


def test_upscale_array_shape_range_and_tiling(up, toy, rng):
    lr = rng.random((45, 61, 3), dtype=np.float32)
    sr = up.upscale_array(lr)
    assert sr.shape == (180, 244, 3) and sr.dtype == np.float32
    assert 0.0 <= sr.min() and sr.max() <= 1.0
    whole = Upscaler(toy, provider="cpu", tile=0).upscale_array(lr)
    assert np.abs(sr - whole).max() <= 1e-4
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        up.upscale_array(lr[..., 0])


def _quantise(x):
    return np.rint(x * 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16"])
def test_every_mode_through_the_model(up, mode, rng):
    rgba = rng.integers(0, 256, (19, 23, 4), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (19, 23)).astype(np.uint16))
    elif mode in ("P", "CMYK"):
        img = Image.fromarray(rgba[..., :3]).convert(mode)
    else:
        img = Image.fromarray(rgba).convert(mode)
    out = up.upscale_image(img)
    expected_mode = {"P": "RGB", "CMYK": "RGB"}.get(mode, mode)
    assert out.mode == expected_mode and out.size == (92, 76)
    pic = imaging.picture_from_pil(img)
    peak = 65535.0 if mode == "I;16" else 255.0
    colour = pic.color.astype(np.float32) / peak
    sr = up.upscale_array(np.repeat(colour[..., None], 3, 2) if pic.gray else colour)
    if pic.gray:
        sr = sr @ np.array([0.299, 0.587, 0.114], np.float32)
    expected = np.rint(sr * peak).astype(np.uint16 if mode == "I;16" else np.uint8)
    got = np.asarray(out)
    if pic.gray:
        got_colour = got if got.ndim == 2 else got[..., 0]  # L / I;16, or LA's grey plane
    else:
        got_colour = got[..., :3]
    assert np.array_equal(got_colour, expected)
    if pic.alpha is not None:  # alpha: bicubic on its own, not through the model
        alpha = np.asarray(Image.fromarray(pic.alpha).resize((92, 76), Image.Resampling.BICUBIC))
        assert np.array_equal(got[..., -1], alpha)


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_outputs_outside_0_1_are_clamped_before_quantising(tmp_path, provider, mode, rng):
    """A model that overshoots [0, 1] (outside the contract) still gives the rounded,
    clamped values: rint(clip(sr, 0, 1) * peak), grey from the clamped luma of its RGB."""
    if provider == "openvino":
        pytest.importorskip("openvino")
    up = Upscaler(build_toy_sr(tmp_path / "overshoot.onnx", overshoot=True), provider=provider, tile=8)
    peak, dtype = (65535.0, np.uint16) if mode == "I;16" else (255.0, np.uint8)
    values = rng.integers(0, int(peak) + 1, (13, 17) if mode in ("L", "I;16") else (13, 17, 3)).astype(dtype)
    pic = imaging.Picture(values, None, None)
    colour = values.astype(np.float32) / peak
    sr = up.upscale_array(np.repeat(colour[..., None], 3, 2) if pic.gray else colour)
    assert sr.min() < -0.1 and sr.max() > 1.1  # the model does leave [0, 1]
    expected = np.rint(np.clip(sr @ LUMA if pic.gray else sr, 0.0, 1.0) * peak).astype(dtype)
    got = up.upscale_picture(pic).color
    assert got.dtype == dtype and np.array_equal(got, expected)


def test_16bit_colour_is_upscaled_at_16_bits(up, rng):
    from srdeploy.io import png

    values = rng.integers(0, 65536, (12, 10, 3)).astype(np.uint16)
    out = imaging.decode(up.upscale_bytes(png.encode_png(values), "c16.png").data, "out")
    assert out.depth == 16 and out.color.shape == (48, 40, 3)
    expected = np.rint(up.upscale_array(values.astype(np.float32) / 65535) * 65535).astype(np.uint16)
    assert np.array_equal(out.color, expected)
    assert len(np.unique(out.color & 0xFF)) > 200  # low bytes carry information


def test_exif_orientation_is_applied_before_upscaling(up, rng):
    img = Image.fromarray(rng.integers(0, 256, (10, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    out = up.upscale_bytes(buf.getvalue(), "rotated.png")
    assert (out.width, out.height) == (40, 64)
    assert Image.open(io.BytesIO(buf.getvalue())).getexif().get(0x0112) == 6  # input bytes untouched


def test_same_input_same_bytes_across_instances_and_threads(toy, rng):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (70, 90, 4), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    first = Upscaler(toy, provider="cpu", tile=16)
    reference = first.upscale_bytes(data, "a.png", "webp", 80).data
    assert Upscaler(toy, provider="cpu", tile=16).upscale_bytes(data, "a.png", "webp", 80).data == reference
    results: list[bytes] = []

    def work():
        results.append(first.upscale_bytes(data, "a.png", "webp", 80).data)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [reference] * 4


def test_bad_bytes_raise_image_errors_naming_the_upload(up):
    with pytest.raises(imaging.ImageError, match="upload-7: not an image"):
        up.upscale_bytes(b"GET / HTTP/1.1\r\n", "upload-7")


def test_matches_the_pytorch_generator(tiny_onnx, tiny_generator, rng):
    """End to end against the model it was exported from (tiles, layout transposes, range)."""
    import torch

    lr = rng.random((41, 58, 3), dtype=np.float32)
    sr = Upscaler(tiny_onnx, provider="cpu", tile=12).upscale_array(lr)
    with torch.no_grad():
        reference = ((tiny_generator(torch.from_numpy(lr.transpose(2, 0, 1)[None].copy())) + 1) / 2).clamp(0, 1)
    assert np.abs(sr - reference[0].numpy().transpose(1, 2, 0)).max() <= 1e-4


def test_provider_names_cover_the_cli_choices():
    assert set(EXECUTION_PROVIDERS) == {"cpu", "cuda", "tensorrt"}


def test_a_tile_smaller_than_the_overlap_is_refused(toy):
    """The output would be the same, at many times the work: --tile 1 ran for minutes."""
    assert Upscaler(toy, provider="cpu", tile=3).tile == 3  # the toy's overlap
    with pytest.raises(ValueError, match="tile 2 is smaller than this model's 3 px overlap: each tile would run a 8 px window, 16x its pixels"):
        Upscaler(toy, provider="cpu", tile=2)
