import pytest
import torch

from srdeploy.training.models import Discriminator, Generator, count_parameters


def test_generator_shapes_and_range():
    g = Generator(num_blocks=2, channels=16, scale=4).eval()
    x = torch.rand(3, 3, 13, 17)
    with torch.no_grad():
        y = g(x)
    assert y.shape == (3, 3, 52, 68)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_generator_scale_parameter(scale):
    g = Generator(num_blocks=1, channels=8, scale=scale).eval()
    assert g(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8 * scale, 8 * scale)


def test_generator_rejects_bad_scale():
    with pytest.raises(ValueError, match="power of two"):
        Generator(scale=3)


def test_seed_generator_parameter_count():
    # B=8, 64 filters: head 9x9 conv (3->64) + PReLU, 8 blocks of 2x(conv3x3+BN)+PReLU,
    # conv3x3+BN, two (conv3x3 64->256 + PReLU) upsamplers, 9x9 tail (64->3).
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    head = conv(3, 64, 9) + 64
    block = 2 * (conv(64, 64, 3) + 2 * 64) + 64
    body_tail = conv(64, 64, 3) + 2 * 64
    up = conv(64, 256, 3) + 64
    tail = conv(64, 3, 9)
    expected = head + 8 * block + body_tail + 2 * up + tail
    assert count_parameters(Generator()) == expected == 957_251


def test_receptive_radius_covers_the_real_dependence():
    # Perturb one LR pixel; output pixels further than the stated radius must not move.
    torch.manual_seed(0)
    g = Generator(num_blocks=2, channels=8).eval()
    x = torch.rand(1, 3, 41, 41)
    x2 = x.clone()
    x2[..., 20, 20] += 0.5
    with torch.no_grad():
        diff = (g(x) - g(x2)).abs().amax(dim=(0, 1))  # (164, 164)
    rows = torch.nonzero(diff.amax(dim=1) > 0).flatten()
    reach = max(abs(rows.min().item() // 4 - 20), abs(rows.max().item() // 4 - 20))
    assert 0 < reach <= g.receptive_radius


def test_discriminator_logits_for_paper_and_seed_sizes():
    d = Discriminator().eval()
    for size in (96, 256):
        out = d(torch.rand(2, 3, size, size) * 2 - 1)
        assert out.shape == (2,)
        assert torch.isfinite(out).all()
    # Adaptive pooling keeps the dense layer at the paper's 512*6*6 inputs, not 512*16*16.
    assert d.classifier[1].in_features == 512 * 6 * 6
    assert count_parameters(d) < 30_000_000
