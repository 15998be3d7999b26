"""INT8 export: calibration inputs, the QDQ graph, its quality against fp32, the runtime on
it, and the CLI's --int8/--calibration handling."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXAMPLES, REPO, SRDEPLOY
from onnx import numpy_helper
from PIL import Image

from srdeploy.export.calibration import CalibrationReader, load_calibration
from srdeploy.export.int8 import MIN_PSNR_Y, quality_vs_fp32, quantize_int8, quantize_int8_for_openvino
from srdeploy.runtime import contract, graph
from srdeploy.runtime.manifest import verify_manifest

SHIPPED = REPO / "srdeploy" / "models" / "srresnet"


def smooth_images(folder: Path, count: int, side: int = 128, seed: int = 0) -> Path:
    """``count`` RGB images with photo-like statistics: smooth colour fields and a few edges."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC)).copy()
        img[side // 3 :, : side // 2] //= 2  # a hard edge
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    return folder


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SRDEPLOY), "export", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_calibration_inputs_are_the_evaluation_degradation(tmp_path):
    from srdeploy.quality.degrade import downscale

    folder = smooth_images(tmp_path / "hr", 5, side=256)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bmp_bomb = b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 40000, 40000, 1, 24, 0, 0, 0, 0, 0, 0)
    (folder / "bomb.bmp").write_bytes(bmp_bomb)  # a header claiming 1.6 Gpx: refused, not decoded
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        cal = load_calibration(folder, limit=3, check=2)
    assert cal.lr.shape == (3, 3, 64, 64) and cal.lr.dtype == np.float32
    assert cal.files == ["img00.png", "img01.png", "img02.png"] and cal.available == 7
    assert cal.check_files == ["img03.png", "img04.png"] and cal.check_held_out  # the broken ones skipped
    assert [line.split(": ")[0] for line in cal.skipped] == ["bomb.bmp", "broken.png"]
    # A 256x256 HR image's LR is exactly evaluation's: downscale x4 of the image, /255.
    expected = np.asarray(downscale(Image.open(folder / "img00.png").convert("RGB")), np.float32).transpose(2, 0, 1) / 255
    np.testing.assert_array_equal(cal.lr[0], expected)
    # No image beyond the limit: the check reuses the last calibration images, and says so.
    small = load_calibration(smooth_images(tmp_path / "few", 3), limit=5, check=2)
    assert len(small.files) == 3 and small.check_files == ["img01.png", "img02.png"] and not small.check_held_out

    reader = CalibrationReader(cal.lr, "lr", batch=2)
    assert len(reader) == 2 and [b["lr"].shape[0] for b in iter(reader.get_next, None)] == [2, 1]
    reader.set_range(1, 2)
    assert reader.get_next()["lr"].shape[0] == 1 and reader.get_next() is None


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_calibration_folder_is_named(tmp_path, case):
    folder = tmp_path / "cal"
    if case != "missing":
        folder.mkdir()
    if case == "unreadable":
        (folder / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=str(folder)), pytest.warns(UserWarning) if case == "unreadable" else contextlib.nullcontext():
        load_calibration(folder, limit=4)


def test_int8_graph_is_qdq_per_channel_and_keeps_the_contract(tiny_onnx, tmp_path):
    cal = load_calibration(smooth_images(tmp_path / "hr", 6), limit=4)
    dst = tmp_path / "tiny.int8.onnx"
    info = quantize_int8(tiny_onnx, dst, cal, method="minmax")

    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    fp32 = onnx.load(str(tiny_onnx))
    kept = {k["node"]: k["op"] for k in info["fp32_nodes"]}
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    assert convs[0].name in kept  # the head reads the image
    assert sorted(list(kept.values())[1:5]) == ["Add", "Conv", "Conv", "Relu"]  # the head's PReLU, as depthwise convs
    assert list(kept.values())[5:] == ["Slice", "DepthToSpace", "Tanh", "Add", "Mul", "Clip"]  # after the tail conv
    # B=1: 2 block convs, body tail, 2 upsamplers and the padded tail, plus 2 depthwise convs
    # for each of the 3 PReLUs after the head's (block, two upsamplers): no fp32 PRelu between.
    assert info["quantized_convs"] == len(convs) - 1 + 2 * 3 == 12
    assert info["graph_rewrites"][-1] == "tail conv padded to 16 output channels"
    assert "PRelu" not in {n.op_type for n in model.graph.node}

    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        if conv.name in kept:  # fp32 weights straight from an initializer
            assert inits[conv.input[1]].data_type == onnx.TensorProto.FLOAT
            continue
        weight_dq = dq[conv.input[1]]
        weight, scale = inits[weight_dq.input[0]], numpy_helper.to_array(inits[weight_dq.input[1]])
        assert weight.data_type == onnx.TensorProto.INT8
        assert scale.shape == (weight.dims[0],)  # one scale per output channel
        depthwise = any(a.name == "group" and a.i > 1 for a in conv.attribute)
        assert depthwise or len(np.unique(scale)) > 1  # (an untrained PReLU's slopes are all 0.25)
        assert np.abs(numpy_helper.to_array(weight)).max() <= 64  # 7-bit (reduce_range)
        assert conv.input[0] in {n.output[0] for n in dq.values()}  # the activation comes through DQ too

    described = contract.validate_onnx_model(dst)
    assert described["precision"] == "int8" and described["scale"] == 4
    before = contract.validate_onnx_model(tiny_onnx)
    assert (described["input_shape"], described["output_shape"]) == (before["input_shape"], before["output_shape"])
    # The one graph walk reads the QDQ graph: tiling and the server's timeout need no guess.
    reach, fp32_reach = graph.analyze(model.graph), graph.analyze(fp32.graph)
    assert reach is not None and reach.receptive_radius >= fp32_reach.receptive_radius
    assert reach.conv_flop_per_lr_pixel > fp32_reach.conv_flop_per_lr_pixel  # + depthwise PReLUs, padded sub-pixel tail


def test_int8_fuses_to_qlinearconv_in_onnxruntime(tiny_onnx, tmp_path):
    """What makes int8 fast: ORT turns the QDQ pairs into integer kernels."""
    import onnxruntime as ort

    dst = tmp_path / "t.int8.onnx"
    quantize_int8(tiny_onnx, dst, load_calibration(smooth_images(tmp_path / "hr", 4), limit=4), "minmax")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 12  # every quantised conv fused
    assert ops.count("Conv") == 3  # the fp32 head and its PReLU's two depthwise convs (ReLU and Add fused in)
    assert ops.count("QLinearAdd") == 3 + 1 + 1  # the other 3 PReLUs' sums, the block's skip, the global skip
    assert "PRelu" not in ops and ops.count("DequantizeLinear") == 1  # uint8 from the head's output to the tail's


def test_upscaler_runs_int8_with_tiling_read_off_the_qdq_graph(tiny_onnx, tmp_path, rng):
    import math

    from srdeploy.runtime.upscaler import Upscaler

    cal = load_calibration(smooth_images(tmp_path / "hr", 4), limit=4)
    dst = tmp_path / "tiny.int8.onnx"
    quantize_int8(tiny_onnx, dst, cal, "minmax")
    fp32 = Upscaler(tiny_onnx, provider="cpu", tile=16)
    up = Upscaler(dst, provider="cpu", tile=16)
    assert up.overlap == fp32.overlap == math.ceil(4 + 2 + 1 + 1.5 + 1)  # B=1 radius 9.5, not the fallback
    lr = rng.random((45, 37, 3), dtype=np.float32)
    tiled, whole = up.upscale_array(lr), Upscaler(dst, provider="cpu", tile=0).upscale_array(lr)
    assert tiled.shape == (180, 148, 3) and 0 <= tiled.min() and tiled.max() <= 1
    np.testing.assert_allclose(tiled, whole, atol=1e-4)  # static ranges: a window sees what the whole image sees


def example_calibration(tmp_path: Path):
    """The shipped example images as a calibration set: three to calibrate, coffee.png held out."""
    folder = tmp_path / "examples"
    folder.mkdir()
    for p in sorted(EXAMPLES.glob("*")):
        if p.suffix in (".png", ".jpg"):
            (folder / p.name).write_bytes(p.read_bytes())
    return load_calibration(folder, limit=3, check=1)


@pytest.mark.slow
def test_int8_of_the_shipped_model_stays_close_to_fp32_and_a_broken_one_does_not(tmp_path):
    """The real B=8 generator calibrated on three examples, checked on the fourth;
    calibrating on black frames (every activation range collapsed) must fail the bound."""
    cal = example_calibration(tmp_path)
    assert cal.check_held_out and cal.check_files == ["coffee.png"]
    good = tmp_path / "good.int8.onnx"
    quantize_int8(SHIPPED / "model.onnx", good, cal)
    quality = quality_vs_fp32(SHIPPED / "model.onnx", good, cal)
    assert quality["ok"], quality["failures"]
    assert quality["natural_images"]["psnr_y_db_min"] >= 40.0  # measured 49.5 dB; the bound is 35

    black = type(cal)(cal.folder, np.zeros_like(cal.lr), cal.files, cal.check_lr, cal.check_files, True, [], cal.available)
    broken = tmp_path / "broken.int8.onnx"
    quantize_int8(SHIPPED / "model.onnx", broken, black, "minmax")
    quality = quality_vs_fp32(SHIPPED / "model.onnx", broken, black)
    assert not quality["ok"] and quality["natural_images"]["psnr_y_db_min"] < MIN_PSNR_Y
    assert any(f.startswith("broken.int8.onnx: PSNR-Y ") and "coffee.png" in f for f in quality["failures"])


def test_int8_for_openvino_is_nncf_keeps_the_head_in_float_and_says_its_engine(tmp_path):
    """The NNCF path on the real B=8 generator: within the same bound as the default file,
    tagged for OpenVINO, which auto then runs it on; the default file is tagged for ORT."""
    pytest.importorskip("nncf")
    from srdeploy.runtime.upscaler import Upscaler

    cal = example_calibration(tmp_path)
    dst = tmp_path / "ov.int8.onnx"
    info = quantize_int8_for_openvino(SHIPPED / "model.onnx", dst, cal)
    assert info["engine"] == "openvino" and info["tool"].startswith("nncf.quantize") and info["graph_rewrites"]
    model = onnx.load(str(dst))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weight_dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert [k["node"] for k in info["fp32_nodes"]] == [convs[0].name]
    assert convs[0].input[1] not in weight_dq and convs[-1].input[1] in weight_dq  # the head stays float, the tail is int8
    assert info["quantized_convs"] == len(convs) - 1
    described = contract.validate_onnx_model(dst)
    assert described["precision"] == "int8" and described["int8_engine"] == "openvino"
    quality = quality_vs_fp32(SHIPPED / "model.onnx", dst, cal)
    assert quality["ok"], quality["failures"]
    assert quality["engine"] == "openvino int8"  # checked on the engine upscale runs it on
    assert Upscaler(dst).engine.provider == "openvino"

    ort_file = tmp_path / "ort.int8.onnx"
    quantize_int8(SHIPPED / "model.onnx", ort_file, cal, "minmax")
    assert contract.validate_onnx_model(ort_file)["int8_engine"] == "cpu" and Upscaler(ort_file).engine.provider == "cpu"


def test_int8_needs_calibration_and_calibration_needs_int8(tmp_path):
    proc = run_export(SHIPPED / "generator.pt", "-o", tmp_path / "out", "--int8")
    assert proc.returncode == 2 and "--int8 needs --calibration DIR" in proc.stderr
    proc = run_export(SHIPPED / "generator.pt", "-o", tmp_path / "out", "--calibration", tmp_path)
    assert proc.returncode == 2 and "--calibration is used only with --int8" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--int8-engine", "openvino"], "--int8-engine is used only with --int8"),
    (["--calibration-limit", "5"], "--calibration-limit is used only with --int8"),
    (["--tile", "64"], "--tile is used only with --tensorrt"),
    (["--images", str(EXAMPLES)], "--images is used only with --check or --int8"),
])
def test_an_option_without_the_one_it_serves_is_refused_not_ignored(tmp_path, args, message):
    proc = run_export(SHIPPED / "generator.pt", "-o", tmp_path / "out", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_int8_for_openvino_without_nncf_says_which_extra_before_writing(tmp_path):
    block = "import sys; sys.modules['nncf'] = None\nfrom srdeploy.cli import run; run()\n"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", block, "export", str(SHIPPED / "generator.pt"), "-o", str(out), "--int8", "--int8-engine", "openvino",
                           "--calibration", str(EXAMPLES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "NNCF, which is not installed: pip install 'srdeploy[export]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_calibration_folder_fails_before_writing_anything(tmp_path, make):
    folder = tmp_path / "calib"
    if make == "empty":
        folder.mkdir()
    out = tmp_path / "out"
    proc = run_export(SHIPPED / "generator.pt", "-o", out, "--int8", "--calibration", folder)
    assert proc.returncode == 2  # refused before anything is written, as a usage error
    assert str(folder) in proc.stderr and ("does not exist" in proc.stderr if make == "missing" else "holds no images" in proc.stderr)
    assert not (out / "model.int8.onnx").exists() and not out.exists()  # refused before the export began


def test_an_images_folder_without_images_is_refused_before_writing_anything(tmp_path):
    folder = tmp_path / "parity"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    proc = run_export(SHIPPED / "generator.pt", "-o", tmp_path / "out", "--check", "--images", folder)
    assert proc.returncode == 2 and f"Error: {folder}: no images" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_int8_writes_model_manifest_entry_and_upscales(tiny_generator, tmp_path):
    import torch

    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_generator.state_dict(), ckpt)
    folder = smooth_images(tmp_path / "calib", 7)
    out = tmp_path / "export"
    proc = run_export(ckpt, "-o", out, "--int8", "--calibration", folder, "--calibration-limit", "5", "--check")
    assert proc.returncode == 0, proc.stderr
    assert "int8: calibrated on 5 images" in proc.stdout and "held out from calibration" in proc.stdout
    for engine in ("onnxruntime", "openvino"):  # the int8 file on both CPU engines
        int8_row = next(line for line in proc.stdout.splitlines() if line.startswith(f"{engine} int8 (model.int8.onnx)"))
        assert int8_row.endswith("ok")

    manifest = verify_manifest(out)
    assert sorted(manifest["files"]) == ["generator.pt", "model.int8.onnx", "model.onnx"]
    entry = manifest["models"]["model.int8.onnx"]
    assert entry["precision"] == "int8" and entry["io_dtype"] == "float32" and entry["built_from"] == "model.onnx"
    assert entry["calibration"]["folder"] == str(folder) and entry["calibration"]["images"] == 5
    assert entry["calibration"]["method"] == "percentile 99.9999" and entry["calibration"]["limit"] == 5
    assert entry["quantization"]["format"] == "QDQ" and entry["quantization"]["quantized_convs"] == 12
    fp32_ops = [k["op"] for k in entry["quantization"]["fp32_nodes"]]
    assert fp32_ops[0] == "Conv" and sorted(fp32_ops[1:5]) == ["Add", "Conv", "Conv", "Relu"]  # head, its PReLU
    assert fp32_ops[5:] == ["Slice", "DepthToSpace", "Tanh", "Add", "Mul", "Clip"]  # after the tail conv
    parity = entry["parity"]
    assert parity["ok"] and parity["natural_images"]["images"] == ["img05.png", "img06.png"]
    assert parity["natural_images"]["min_psnr_y_db"] == 35.0 and parity["parity_inputs"]["psnr_db"] > 0
    assert set(manifest["export_seconds"]) == {"onnx fp32", "onnx int8", "int8 quality", "parity"}

    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    Image.fromarray(np.full((20, 24, 3), 120, np.uint8)).save(lr_dir / "face.png")
    up = subprocess.run([str(SRDEPLOY), "upscale", lr_dir, "-o", tmp_path / "up", "--model", out / "model.int8.onnx", "--provider", "cpu"], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert Image.open(tmp_path / "up" / "face.png").size == (96, 80)
