"""TensorRT: the missing-TensorRT message and profiles here; engine parity on a GPU."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from srdeploy.export import parity
from srdeploy.runtime import tensorrt, tiling
from srdeploy.runtime.tensorrt import TensorRTUnavailable, TileProfile, require_tensorrt

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_missing_tensorrt_says_what_and_how():
    with pytest.raises(TensorRTUnavailable) as err:
        require_tensorrt()
    message = str(err.value)
    assert "`tensorrt` Python package" in message and "not installed" in message
    assert "pip install 'srdeploy[tensorrt]'" in message and "NVIDIA GPU" in message


def test_tensorrt_without_a_gpu_says_so(monkeypatch):
    """tensorrt importable but no CUDA device: only the GPU is mocked away (and, where
    tensorrt is absent, a bare module stands in so the import succeeds)."""
    if not HAS_TENSORRT:
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.99-test"))
    monkeypatch.setattr(tensorrt, "cuda_device_count", lambda: 0)
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT .* is installed but the CUDA runtime sees no GPU"):
        require_tensorrt()


def test_profile_for_the_runtime_tiles():
    profile = TileProfile.for_tiles(tile=128, overlap=24, max_batch=4)
    assert profile.as_dict() == {"min": [1, 3, 1, 1], "opt": [1, 3, 176, 176], "max": [4, 3, 176, 176]}
    assert profile.accepts((2, 3, 37, 53)) and profile.accepts((4, 3, 176, 176))
    assert not profile.accepts((5, 3, 64, 64)) and not profile.accepts((1, 3, 177, 64))
    # Every window the tiler makes for a thin image: clamped to the image, so 10 rows high.
    windows = {(r.stop - r.start, c.stop - c.start) for r, c in tiling.plan_tiles(10, 300, 128, 24)}
    assert windows == {(10, 176)} and all(profile.accepts((1, 3, h, w)) for h, w in windows)


@pytest.mark.parametrize(
    "shapes, reason",
    [
        (((1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 176, 176)), "min <= opt <= max"),
        (((1, 1, 16, 16), (1, 1, 64, 64), (1, 1, 64, 64)), r"not \(N, 3, H, W\)"),
        (((1, 3, 16), (1, 3, 64, 64), (1, 3, 64, 64)), r"not \(N, 3, H, W\)"),
    ],
)
def test_profile_validation(shapes, reason):
    with pytest.raises(ValueError, match=reason):
        TileProfile(*shapes)


@pytest.mark.gpu
def test_engine_parity_against_onnxruntime_fp32(tiny_onnx, tmp_path):
    """fp32 and fp16 engines vs ORT fp32, on batches within the default tile profile."""
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    from srdeploy.export.fp16 import convert_fp16
    from srdeploy.export.tensorrt_engine import build_engine
    from srdeploy.runtime.tensorrt import EngineRunner

    fp16_onnx = convert_fp16(tiny_onnx, tmp_path / "model.fp16.onnx")
    cache = tmp_path / "timing.cache"
    engines = {
        "fp32": build_engine(tiny_onnx, tmp_path / "model.fp32.engine", timing_cache=cache),
        "fp16": build_engine(fp16_onnx, tmp_path / "model.fp16.engine", timing_cache=cache),
    }
    assert cache.stat().st_size > 0
    batches = parity.parity_batches()
    ort32 = parity.run_backend(parity.runtime_backend(tiny_onnx), batches)
    for precision, path in engines.items():
        limits = parity.FP32_LIMITS if precision == "fp32" else parity.FP16_LIMITS
        row = parity.compare(f"tensorrt {precision}", parity.run_backend(EngineRunner(path), batches), "onnxruntime fp32", ort32, limits)
        assert row.ok, row.failures
