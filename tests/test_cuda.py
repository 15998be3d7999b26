"""The generator on a CUDA GPU through PyTorch: fp32 agrees with the CPU, and the half
precisions used for training (bf16 autocast) and fast inference (fp16) stay close to fp32.
Skipped without a GPU (tests/conftest.py)."""

import numpy as np
import pytest
import torch
from conftest import REPO, example_lr_faces

from srdeploy.training.models import Generator

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trained():
    """The shipped default's weights (realistic activations), else a seeded random init."""
    torch.manual_seed(0)
    g = Generator().eval()
    weights = REPO / "srdeploy/models/srresnet/generator.pt"
    if weights.is_file():
        g.load_state_dict(torch.load(weights, weights_only=True))
    return g


@pytest.fixture(scope="module")
def faces():
    """64x64 LR crops of the example images, (N, 3, 64, 64) in [0, 1]."""
    crops = [lr.astype(np.float32) / 255 for _, lr in example_lr_faces(4)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """On the [0, 1] output scale of tensors in [-1, 1]."""
    mse = torch.mean(((a.float() - b.float()) / 2) ** 2).item()
    return 10 * np.log10(1 / max(mse, 1e-20))


def test_fp32_on_cuda_matches_the_cpu(trained, faces):
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions are a different precision
    try:
        with torch.inference_mode():
            cpu = trained(faces)
            gpu = Generator().eval().cuda()
            gpu.load_state_dict(trained.state_dict())
            cuda = gpu.to(memory_format=torch.channels_last)(faces.cuda().to(memory_format=torch.channels_last)).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = True
    assert torch.abs(cuda - cpu).max().item() / 2 <= 1e-4


@pytest.mark.parametrize("dtype,bound_db", [(torch.float16, 45.0), (torch.bfloat16, 35.0)])
def test_half_precision_stays_close_to_fp32(trained, faces, dtype, bound_db):
    g = Generator().eval().cuda()
    g.load_state_dict(trained.state_dict())
    x = faces.cuda()
    with torch.inference_mode():
        ref = g(x)
        cast = Generator().eval().cuda()
        cast.load_state_dict(trained.state_dict())
        half = cast.to(dtype=dtype, memory_format=torch.channels_last)(x.to(dtype).to(memory_format=torch.channels_last))
        with torch.autocast("cuda", dtype=dtype):
            auto = g(x)
    assert torch.isfinite(half).all() and torch.isfinite(auto).all()
    assert psnr(half, ref) >= bound_db, f"{dtype} weights+activations: {psnr(half, ref):.1f} dB vs fp32"
    assert psnr(auto, ref) >= bound_db, f"{dtype} autocast: {psnr(auto, ref):.1f} dB vs fp32"
