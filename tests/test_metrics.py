"""The quality metric pinned against values derived by hand and an independent SSIM.

Everything here follows from the protocol in srdeploy.quality.metrics: BT.601 luma in [16, 235]
(Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, coefficients summing to 219), a border
crop, uint8 inputs, and Wang et al.'s SSIM with an 11x11 Gaussian window of sigma 1.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from srdeploy.quality.metrics import evaluate_pair, hf_ratio, laplacian_energy, psnr, rgb_to_y

LUMA_GAIN = 219.0 / 255.0  # dY per unit change of R, G and B together
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # Wang et al.'s constants for data range 255


def _smooth_image(rng, h=48, w=40, lo=30, hi=200) -> np.ndarray:
    """A gradient plus noise, kept inside [lo, hi] so offsets never clip."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = lo + (hi - lo) * (0.5 + 0.25 * np.sin(xx / 5.0) * np.cos(yy / 7.0))
    img = base[..., None] + np.array([0.0, 10.0, -10.0]) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.round(img), lo, hi).astype(np.uint8)


def test_luma_of_primaries_matches_bt601():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-9)


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_uniform_offset_gives_the_derived_psnr(rng, offset):
    hr = _smooth_image(rng)
    sr = (hr.astype(np.int16) + offset).astype(np.uint8)
    scores = evaluate_pair(sr, hr)
    # Every pixel's luma moves by offset * 219/255, so MSE_Y = (offset * 219/255)^2.
    assert scores["psnr_y"] == pytest.approx(20 * math.log10(255 / (offset * LUMA_GAIN)), abs=1e-9)
    assert scores["psnr_rgb"] == pytest.approx(20 * math.log10(255 / offset), abs=1e-9)
    # A shift leaves the structure intact: SSIM drops only through the luminance term.
    assert 0.99 < scores["ssim_y"] < 1.0


def test_identical_images_are_perfect(rng):
    hr = _smooth_image(rng)
    scores = evaluate_pair(hr.copy(), hr)
    assert scores["psnr_y"] == math.inf and scores["psnr_rgb"] == math.inf
    assert scores["ssim_y"] == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_flat_images_has_the_closed_form():
    # Flat images have no variance, so SSIM = luminance term = (2 a b + C1) / (a^2 + b^2 + C1).
    hr = np.full((32, 32, 3), 100, np.uint8)
    sr = np.full((32, 32, 3), 120, np.uint8)
    a, b = 16 + 100 * LUMA_GAIN, 16 + 120 * LUMA_GAIN
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert evaluate_pair(sr, hr)["ssim_y"] == pytest.approx(expected, rel=1e-9)


def _ssim_direct(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, radius: int = 5) -> float:
    """Wang et al. 2004 straight from the formula: an explicit normalised 11x11 Gaussian
    window slid over every position where it fits (no padding), population statistics."""
    t = np.arange(-radius, radius + 1)
    window = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    window /= window.sum()

    def local_mean(img):
        patches = np.lib.stride_tricks.sliding_window_view(img, window.shape)  # (H-10, W-10, 11, 11)
        return np.einsum("ijkl,kl->ij", patches, window)

    mx, my = local_mean(x), local_mean(y)
    vx, vy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2
    cov = local_mean(x * y) - mx * my
    ssim_map = (2 * mx * my + C1) * (2 * cov + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    return float(ssim_map.mean())


def test_ssim_matches_an_independent_computation(rng):
    hr = _smooth_image(rng, 56, 60)
    sr = np.clip(hr.astype(np.int16) + rng.integers(-25, 26, hr.shape), 0, 255).astype(np.uint8)
    border = 4
    expected = _ssim_direct(rgb_to_y(sr)[border:-border, border:-border], rgb_to_y(hr)[border:-border, border:-border])
    got = evaluate_pair(sr, hr, border=border)["ssim_y"]
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.3 < got < 0.95  # the noise is visible but the structure survives


def test_ssim_ranks_a_better_reconstruction_higher(rng):
    hr = _smooth_image(rng)
    noise = rng.normal(0, 1, hr.shape)
    mild = np.clip(np.round(hr + 4 * noise), 0, 255).astype(np.uint8)
    heavy = np.clip(np.round(hr + 20 * noise), 0, 255).astype(np.uint8)
    assert evaluate_pair(mild, hr)["ssim_y"] > evaluate_pair(heavy, hr)["ssim_y"]


def test_border_crop_removes_exactly_the_frame(rng):
    hr = _smooth_image(rng, 40, 40)
    sr = hr.copy()
    frame = np.ones(hr.shape[:2], bool)
    frame[4:-4, 4:-4] = False
    sr[frame] = 255 - sr[frame]  # wreck only the outer 4 pixels
    assert evaluate_pair(sr, hr, border=4)["psnr_y"] == math.inf
    assert evaluate_pair(sr, hr, border=4)["ssim_y"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_pair(sr, hr, border=3)["psnr_y"] < 40
    assert evaluate_pair(sr, hr, border=0)["psnr_y"] < evaluate_pair(sr, hr, border=3)["psnr_y"]


@pytest.mark.parametrize("border", [0, 2, 4])
def test_psnr_averages_over_the_cropped_area(rng, border):
    hr = _smooth_image(rng, 32, 32)
    sr = hr.copy()
    sr[16, 16] += 10  # one interior pixel, all channels
    pixels = (32 - 2 * border) ** 2
    mse_y = (10 * LUMA_GAIN) ** 2 / pixels
    assert evaluate_pair(sr, hr, border=border)["psnr_y"] == pytest.approx(10 * math.log10(255**2 / mse_y), abs=1e-9)


def test_inputs_must_be_uint8(rng):
    hr = _smooth_image(rng)
    with pytest.raises(TypeError, match="uint8"):
        evaluate_pair(hr.astype(np.float32) / 255, hr)
    with pytest.raises(TypeError, match="uint8"):
        evaluate_pair(hr, hr.astype(np.float64))


def test_shape_mismatch_is_an_error(rng):
    hr = _smooth_image(rng, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        evaluate_pair(hr[:28], hr)


def test_a_grey_reference_is_scored_on_its_own_values_against_the_srs_grey(rng):
    """As the MATLAB scripts behind the published Set14 tables score a one-channel image:
    not mapped into [16, 235], where every difference shrinks by 219/255 (+1.32 dB)."""
    gray_hr = _smooth_image(rng)[..., 0]
    gray_sr = np.clip(gray_hr.astype(np.int16) + rng.integers(-8, 9, gray_hr.shape), 0, 255).astype(np.uint8)
    sr_rgb = np.stack([gray_sr] * 3, axis=2)
    scores = evaluate_pair(sr_rgb, gray_hr)
    mse = np.mean((gray_sr[4:-4, 4:-4].astype(np.float64) - gray_hr[4:-4, 4:-4]) ** 2)
    assert scores["psnr_y"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    as_colour = evaluate_pair(sr_rgb, np.stack([gray_hr] * 3, axis=2))
    assert as_colour["psnr_y"] - scores["psnr_y"] == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    assert scores["psnr_rgb"] == as_colour["psnr_rgb"]  # RGB PSNR is of the pixels as RGB either way
    # A colour SR against a grey reference is scored on the grey srdeploy writes for it.
    tinted = sr_rgb.astype(np.int16) + np.array([6, -3, 0])
    tinted = np.clip(tinted, 0, 255).astype(np.uint8)
    luma = np.rint(tinted @ np.array([0.299, 0.587, 0.114]))
    mse = np.mean((luma[4:-4, 4:-4] - gray_hr[4:-4, 4:-4]) ** 2)
    assert evaluate_pair(tinted, gray_hr)["psnr_y"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_psnr_helper():
    a = np.zeros((4, 4))
    assert psnr(a, a + 255.0) == pytest.approx(0.0)
    assert psnr(a, a + 1.0) == pytest.approx(20 * math.log10(255))


def test_a_border_that_leaves_less_than_the_ssim_window_says_so(rng):
    hr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    assert evaluate_pair(hr, hr, border=10)["ssim_y"] == pytest.approx(1.0)  # 12 x 20 left: enough
    with pytest.raises(ValueError, match=r"a border of 11 px leaves 18x10 of a 40x32 image; SSIM's 11x11 window needs at least 11"):
        evaluate_pair(hr, hr, border=11)


def test_laplacian_energy_of_a_checkerboard_is_16():
    # Each pixel of a 0/1 checkerboard differs from all four neighbours: the Laplacian is +-4.
    board = (np.indices((9, 12)).sum(axis=0) % 2).astype(np.float64)
    assert laplacian_energy(board) == 16.0
    assert laplacian_energy(np.full((9, 12), 7.0)) == 0.0
    ramp = np.add.outer(np.arange(9.0), 3 * np.arange(12.0))  # linear: no second derivative
    assert laplacian_energy(ramp) == 0.0


def test_hf_ratio_is_1_for_hr_below_for_blur_above_for_noise(rng):
    from PIL import Image

    from srdeploy.quality.degrade import downscale, upscale_bicubic

    hr = _smooth_image(rng, 64, 64)
    bicubic = np.asarray(upscale_bicubic(downscale(Image.fromarray(hr), 4), 4))
    noisy = np.clip(hr.astype(np.int16) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    assert evaluate_pair(hr.copy(), hr)["hf_ratio"] == 1.0
    assert evaluate_pair(bicubic, hr)["hf_ratio"] < 0.2  # the blur PSNR forgives
    assert evaluate_pair(noisy, hr)["hf_ratio"] > 1.5  # more than HR has
    # Scored on the same border crop as PSNR: a frame of noise outside it changes nothing.
    framed = hr.copy()
    framed[:4] = noisy[:4]
    assert evaluate_pair(framed, hr)["hf_ratio"] == 1.0


def test_hf_ratio_of_a_flat_reference():
    flat = np.full((8, 8), 50.0)
    assert hf_ratio(flat, flat) == 1.0
    assert hf_ratio(flat + np.eye(8), flat) == math.inf
