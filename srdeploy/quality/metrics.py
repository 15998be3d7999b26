"""Quality metrics under the SRGAN paper's protocol.

PSNR and SSIM are computed on the BT.601 luma (Y, the [16, 235] range of MATLAB's
rgb2ycbcr, kept unrounded as BasicSR keeps it) after removing ``border`` pixels on each
side, with both images as uint8 (SR rounded first). A grey reference (Set14's bridge) is
scored on its own values against the SR's grey (the BT.601 full-range luma srdeploy writes
for a grey input), as the MATLAB scripts behind the published Set14 tables score a
one-channel image; mapped into [16, 235] it would read 1.3 dB high. SSIM is
scikit-image's implementation with the Gaussian window of Wang et al. 2004 (11x11,
sigma 1.5). RGB PSNR is reported beside them, on the same crop. Higher is better for all
three.

PSNR and SSIM reward the blur that averages plausible textures, which is why the SRGAN
paper judged its adversarial models by eye. The HF ratio puts a number on that: the energy
of the luma's Laplacian (its finest detail) in SR over HR's, on the same crop. 1 is HR's
amount of fine detail; bicubic lands far below it; above 1 is more than HR has (noise,
ringing, invented texture). It says how much detail, not whether it is the right detail:
read it beside PSNR, never alone.
"""

from __future__ import annotations

import numpy as np

from srdeploy import GREY_LUMA

BORDER = 4  # pixels removed on each side before scoring: the scale, as in the SR literature


def protocol(border: int = BORDER) -> str:
    """The scoring protocol in one line, with the border used."""
    return f"PSNR/SSIM on BT.601 Y (a grey image on its own values), {border}-px border removed, SR rounded to uint8; SSIM: Gaussian 11x11, sigma 1.5"


PROTOCOL = protocol()


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float64 luma in [16, 235] (BT.601, MATLAB's rgb2ycbcr
    coefficients, unrounded)."""
    rgb = rgb.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> the grey image srdeploy writes for it: BT.601 full-range luma,
    rounded (float64)."""
    return np.rint(rgb.astype(np.float64) @ np.array(GREY_LUMA))


def _as_rgb_uint8(img: np.ndarray, name: str) -> np.ndarray:
    if img.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (round SR before measuring), got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must be (H, W, 3) RGB, got shape {img.shape}")
    return img


SSIM_WINDOW = 11  # the Gaussian window's side at sigma 1.5, as scikit-image sizes it (Wang et al. 2004)


def smallest_side(border: int = BORDER) -> int:
    """The smallest HR side ``evaluate_pair`` can score: the border on both sides plus
    SSIM's window."""
    return 2 * border + SSIM_WINDOW


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:-border, border:-border] if border else a


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def _rgb_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Both images as uint8 (H, W, 3) of one shape, else TypeError/ValueError naming them."""
    a, b = _as_rgb_uint8(a, names[0]), _as_rgb_uint8(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {a.shape} and {names[1]} {b.shape} differ in shape")
    return a, b


def psnr_y(a: np.ndarray, b: np.ndarray, border: int = BORDER) -> float:
    """PSNR on BT.601 Y between two uint8 RGB images, ``border`` pixels removed (no SSIM,
    so no scikit-image: the export extra uses this)."""
    a, b = _rgb_pair(a, b, ("a", "b"))
    return psnr(_crop(rgb_to_y(a), border), _crop(rgb_to_y(b), border))


def laplacian_energy(y: np.ndarray) -> float:
    """Mean square of the 4-neighbour Laplacian of a luma plane, over the pixels that have
    all four neighbours."""
    y = y.astype(np.float64)
    lap = y[1:-1, :-2] + y[1:-1, 2:] + y[:-2, 1:-1] + y[2:, 1:-1] - 4.0 * y[1:-1, 1:-1]
    return float(np.mean(lap**2))


def hf_ratio(sr_y: np.ndarray, hr_y: np.ndarray) -> float:
    """SR's Laplacian energy over HR's (module docstring); a flat HR scores 1 against a
    flat SR and inf against anything else."""
    sr_energy, hr_energy = laplacian_energy(sr_y), laplacian_energy(hr_y)
    if hr_energy == 0.0:
        return 1.0 if sr_energy == 0.0 else float("inf")
    return sr_energy / hr_energy


def evaluate_pair(sr: np.ndarray, hr: np.ndarray, border: int = BORDER) -> dict[str, float]:
    """PSNR-Y, SSIM-Y, RGB PSNR and the HF ratio of one uint8 SR image against its HR
    reference: (H, W, 3) RGB, or (H, W) for a grey one, scored on its own values (module
    docstring)."""
    from skimage.metrics import structural_similarity

    grey = hr.ndim == 2
    sr, hr = _rgb_pair(sr, hr, ("sr", "hr"))
    h, w = hr.shape[0] - 2 * border, hr.shape[1] - 2 * border
    if min(hr.shape[:2]) < smallest_side(border):
        raise ValueError(f"a border of {border} px leaves {max(w, 0)}x{max(h, 0)} of a {hr.shape[1]}x{hr.shape[0]} image; "
                         f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window needs at least {SSIM_WINDOW} pixels a side (lower --border)")
    if grey:
        sr_y, hr_y = _crop(grey_of(sr), border), _crop(hr[..., 0].astype(np.float64), border)
    else:
        sr_y, hr_y = _crop(rgb_to_y(sr), border), _crop(rgb_to_y(hr), border)
    ssim = structural_similarity(
        sr_y, hr_y, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return {
        "psnr_y": psnr(sr_y, hr_y),
        "ssim_y": float(ssim),
        "psnr_rgb": psnr(_crop(sr, border), _crop(hr, border)),
        "hf_ratio": hf_ratio(sr_y, hr_y),
    }
