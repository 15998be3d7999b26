"""The degradation that makes LR inputs from HR images, shared by training and evaluation.

Both stages must produce the same LR from the same HR image, so there is exactly one
implementation. Pillow's resampling filters are antialiased when they shrink (the support
grows with the scale factor), which is the "bicubic with antialias" of the quality
protocol; ``bilinear`` reproduces the seed's recipe. The LR stays uint8, as real inputs
are.
"""

from __future__ import annotations

from PIL import Image

DOWNSAMPLE_METHODS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


def check_divisible(size: tuple[int, int], scale: int, what: str = "image") -> None:
    w, h = size
    if w % scale or h % scale:
        raise ValueError(f"{what} size {w}x{h} is not divisible by the scale {scale}")


def downscale(hr: Image.Image, scale: int = 4, method: str = "bicubic") -> Image.Image:
    """HR (W, H) -> LR (W/scale, H/scale), same mode. W and H must divide by ``scale``."""
    if method not in DOWNSAMPLE_METHODS:
        raise ValueError(f"unknown downsample method {method!r}; use one of {sorted(DOWNSAMPLE_METHODS)}")
    check_divisible(hr.size, scale, "HR image")
    w, h = hr.size
    return hr.resize((w // scale, h // scale), DOWNSAMPLE_METHODS[method])


def upscale_bicubic(lr: Image.Image, scale: int = 4) -> Image.Image:
    """The bicubic baseline every model is reported against."""
    w, h = lr.size
    return lr.resize((w * scale, h * scale), Image.Resampling.BICUBIC)


def crop_to_multiple(img: Image.Image, scale: int = 4) -> Image.Image:
    """Crop the bottom/right so both sides divide by ``scale`` (the benchmark convention)."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))
