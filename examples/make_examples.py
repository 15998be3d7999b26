"""Regenerate the example inputs in this folder from scikit-image's sample photos.

    python examples/make_examples.py

Each is a public-domain or CC0 photo (see LICENSE.md), cropped and downscaled with
Pillow's antialiased bicubic filter to the low resolution the 4x models expect. Needs
scikit-image (the `train` extra), which ships the photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent

# name -> (loader, crop (top, bottom, left, right) in source pixels, LR size (w, h), how to save)
EXAMPLES = {
    "astronaut_face.png": (data.astronaut, (16, 240, 136, 360), (64, 64), {}),
    "chelsea_cat.jpg": (data.chelsea, (0, 300, 0, 451), (112, 75), {"quality": 92}),
    "coffee.png": (data.coffee, (0, 400, 0, 600), (120, 80), {}),
    "camera_gray.png": (data.camera, (0, 512, 0, 512), (96, 96), {}),
}


def make(name: str) -> Path:
    load, (top, bottom, left, right), size, options = EXAMPLES[name]
    pixels: np.ndarray = load()[top:bottom, left:right]
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
    path = HERE / name
    image.save(path, **options)
    return path


if __name__ == "__main__":
    for name in EXAMPLES:
        print(make(name))
