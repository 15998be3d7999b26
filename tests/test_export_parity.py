"""Parity metrics and the table: each bound fails when it should and names what failed."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest

from srdeploy.export import parity


@pytest.fixture
def reference(rng):
    return [rng.uniform(0.2, 0.8, (2, 3, 8, 12)).astype(np.float32), rng.uniform(0.2, 0.8, (1, 3, 4, 4)).astype(np.float32)]


def test_identical_outputs_pass_with_infinite_psnr(reference):
    row = parity.compare("same", [r.copy() for r in reference], "ref", reference, parity.FP32_LIMITS)
    assert row.ok and row.max_abs == 0 and row.mean_abs == 0 and math.isinf(row.psnr)
    assert row.as_dict()["psnr_db"] == "inf"  # JSON-safe


def test_metrics_are_pooled_over_batches(reference):
    shifted = [reference[0] + 1e-3, reference[1] + 4e-3]
    row = parity.compare("shifted", shifted, "ref", reference, parity.Limits())
    n0, n1 = reference[0].size, reference[1].size
    assert row.max_abs == pytest.approx(4e-3, rel=1e-3)
    assert row.mean_abs == pytest.approx((n0 * 1e-3 + n1 * 4e-3) / (n0 + n1), rel=1e-3)
    assert row.psnr == pytest.approx(10 * math.log10((n0 + n1) / (n0 * 1e-6 + n1 * 16e-6)), rel=1e-3)


def test_max_abs_bound(reference):
    near = [r + 5e-5 for r in reference]
    far = [r + 2e-4 for r in reference]
    assert parity.compare("near", near, "ref", reference, parity.FP32_LIMITS).ok
    row = parity.compare("model.far.onnx", far, "torch fp32", reference, parity.FP32_LIMITS)
    assert row.failures == ["model.far.onnx: max abs error 0.0002 > 0.0001 vs torch fp32"]


def test_psnr_bound(reference):
    row = parity.compare("model.fp16.onnx", [r + 0.01 for r in reference], "onnxruntime fp32", reference, parity.FP16_LIMITS)
    assert row.psnr == pytest.approx(40.0, abs=0.01)
    assert row.failures == ["model.fp16.onnx: PSNR 40.00 dB < 45 dB vs onnxruntime fp32"]


def test_nan_inf_are_counted_and_fail(reference):
    bad = [r + 1e-3 for r in reference]
    bad[0][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    row = parity.compare("nan.engine", bad, "ref", reference, parity.FP16_LIMITS)
    assert row.nonfinite == 3 and row.failures == ["nan.engine: 3 NaN/Inf values"]
    assert row.max_abs == pytest.approx(1e-3, rel=1e-3) and row.psnr == pytest.approx(60.0, abs=0.01)  # finite part
    own = parity.reference_row("torch fp32", bad)
    assert own.nonfinite == 3 and not own.ok


def test_collapsed_outputs_fail_even_with_good_psnr_bounds_off(reference):
    collapsed = [np.zeros_like(reference[0]), np.ones_like(reference[1])]
    row = parity.compare("flat", collapsed, "ref", reference, parity.Limits())
    assert row.collapsed == 3 and row.failures == ["flat: 3 output images collapsed to flat black/white"]
    # A flat reference (e.g. a black frame mapped to black) is not a collapse.
    assert parity.compare("flat", collapsed, "ref", collapsed, parity.Limits()).collapsed == 0


def test_shape_mismatch_is_a_failure(reference):
    row = parity.compare("cropped", [reference[0][..., :-1], reference[1]], "ref", reference, parity.Limits())
    assert not row.ok and "output shape" in row.failures[0]


def test_table_lists_every_backend_and_result(reference):
    rows = [
        parity.reference_row("torch fp32", reference),
        parity.compare("onnxruntime fp32 (model.onnx)", reference, "torch fp32", reference, parity.FP32_LIMITS),
        parity.compare("onnxruntime fp16 (model.fp16.onnx)", [r + 0.01 for r in reference], "onnxruntime fp32", reference, parity.FP16_LIMITS),
    ]
    table = parity.format_table(rows).splitlines()
    assert table[0].split()[:3] == ["backend", "vs", "max"] and len(table) == 5
    assert table[2].startswith("torch fp32") and table[2].endswith("ok")
    assert "inf" in table[3] and table[3].endswith("ok")
    assert "40.00" in table[4] and table[4].endswith("FAIL")


def test_image_folder_batch(tmp_path):
    from PIL import Image

    Image.new("L", (96, 60), 128).save(tmp_path / "grey.png")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "red.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    name, batch = parity.parity_batches(images_dir=tmp_path)[-1]
    assert name == "images" and batch.shape == (2, 3, 64, 64) and batch.dtype == np.float32
    assert np.allclose(batch[0], 128 / 255)  # greyscale -> RGB
    (tmp_path / "a_folder.png").mkdir()  # not a file: passed over
    assert parity.parity_batches(images_dir=tmp_path)[-1][1].shape == (2, 3, 64, 64)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: not an image \(the file holds text\) \(a parity input\)"):
        parity.parity_batches(images_dir=tmp_path)
    (tmp_path / "broken.png").unlink()
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"junk")  # 400 Mpx
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ValueError, match=r"bomb\.png: .*pixels.* \(a parity input\)"):
        parity.parity_batches(images_dir=tmp_path)
    with pytest.raises(ValueError, match=r"empty: no images \(.*\.png"):
        parity.parity_batches(images_dir=tmp_path / "empty")
