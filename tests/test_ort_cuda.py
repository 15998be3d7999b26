"""The deployed path on a CUDA GPU (onnxruntime-gpu), each against the CPU: the Upscaler in
fp32 (at most 1e-4 max abs) and fp16 (at least 45 dB), `srdeploy upscale --provider cuda`
as a subprocess, and the TorchServe handler in-process on GPU 0. Skipped without a GPU
(tests/conftest.py) or without onnxruntime-gpu."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import SRDEPLOY, example_lr_faces
from PIL import Image

from srdeploy.runtime.providers import available_providers
from srdeploy.runtime.upscaler import Upscaler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in available_providers(), reason="needs onnxruntime-gpu (CUDAExecutionProvider)"),
]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """64x64 LR crops of the example images: (N, 3, 64, 64) float32 in [0, 1], and as PNG files."""
    folder = tmp_path_factory.mktemp("faces")
    crops = []
    for name, lr in example_lr_faces():
        Image.fromarray(lr).save(folder / name)
        crops.append(lr.astype(np.float32) / 255)
    return np.stack(crops).transpose(0, 3, 1, 2).copy(), folder


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(peak**2 / max(mse, 1e-20))


@pytest.fixture(scope="module")
def cpu():
    return Upscaler("default", provider="cpu")


def test_fp32_on_cuda_matches_the_cpu_engine(faces, cpu):
    gpu = Upscaler("default", provider="cuda")
    assert (gpu.provider, gpu.precision) == ("cuda", "fp32")
    batch, _ = faces
    assert np.abs(gpu.infer(batch) - cpu.infer(batch)).max() <= 1e-4


def test_the_fp16_model_on_cuda_stays_within_45_db_of_fp32(faces, cpu, tmp_path):
    from srdeploy.export.fp16 import convert_fp16

    fp16 = convert_fp16(cpu.model.path, tmp_path / "model.fp16.onnx")
    gpu = Upscaler(fp16, provider="cuda")
    assert (gpu.provider, gpu.precision) == ("cuda", "fp16")
    batch, _ = faces
    assert psnr(gpu.infer(batch), cpu.infer(batch)) >= 45.0


def test_the_cli_on_cuda_says_so_and_matches_the_cpu(faces, tmp_path):
    _, folder = faces
    runs = {}
    for provider in ("cuda", "cpu"):
        done = subprocess.run([str(SRDEPLOY), "upscale", str(folder), "-o", str(tmp_path / provider), "--provider", provider, "-q"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[provider] = done
    for path in folder.glob("*.png"):
        on_gpu, on_cpu = (np.asarray(Image.open(tmp_path / p / path.name)) for p in ("cuda", "cpu"))
        assert on_gpu.shape == on_cpu.shape == (256, 256, 3)
        assert psnr(on_gpu, on_cpu, 255.0) >= 50.0  # uint8: fp32 differences flip a rounding here and there
    journal = (tmp_path / "cuda" / "upscale-journal.jsonl").read_text()
    assert '"provider": "cuda"' in journal


def test_the_handler_runs_on_the_gpu_torchserve_assigns(faces, tmp_path):
    handler_tests = pytest.importorskip("test_handler")  # needs torchserve's Python package
    from srdeploy.handlers.config import ServeConfig
    from srdeploy.handlers.package import build_archive

    done = build_archive("default", tmp_path / "store", config=ServeConfig(provider="cuda"))
    handler, context = handler_tests.load_handler(handler_tests.unpack(done.archive, tmp_path / "unpacked"), gpu=0)
    assert handler.upscaler.provider == "cuda"
    _, folder = faces
    data = sorted(folder.glob("*.png"))[0].read_bytes()
    (answer,) = handler_tests.send(handler, context, [({"body": data}, {"Content-Type": "image/png"})])
    assert answer["status"] == 200
    expected = Upscaler("default", provider="cuda").upscale_bytes(data, "x", "png")
    assert answer["body"] == expected.data  # the same engine and settings: the CLI's bytes
