"""Calibration inputs for INT8 quantisation: HR images -> the LR inputs the model serves.

Static quantisation fixes every activation's range from the values seen here, so the
inputs must look like production inputs: each HR image is centre-cropped to a square,
brought to ``side * scale`` pixels and degraded with the project's one degradation
(``srdeploy.quality.degrade.downscale``, bicubic x4 with antialias), exactly as evaluation makes
its LR inputs. CelebA-HQ 256x256 faces need no resize: their LR is the evaluation LR.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from srdeploy import SCALE
from srdeploy.io.folders import scan_images
from srdeploy.io.formats import READ_SUFFIXES
from srdeploy.io.image_guard import DEFAULT_MAX_PIXELS, ImageError
from srdeploy.io.imaging import read_rgb
from srdeploy.quality.degrade import downscale

LR_SIDE = 64  # the size the shipped models were trained on and are served at (64x64 -> 256x256)
CHECK_IMAGES = 8  # natural images the int8 quality bound is checked on, held out when the folder has them
DEGRADATION = "centre square, resized to side*scale if needed (Pillow bicubic), then srdeploy.quality.degrade.downscale bicubic x4 with antialias"


@dataclass(frozen=True)
class CalibrationSet:
    """LR inputs for calibration and where they came from."""

    folder: Path
    lr: np.ndarray  # float32 (N, 3, side, side) in [0, 1]
    files: list[str]  # names of the images used, in order
    check_lr: np.ndarray  # float32 (M, 3, side, side): the quality check's inputs
    check_files: list[str]
    check_held_out: bool  # True: images after the calibration ones; False: the last calibration images
    skipped: list[str]  # unreadable images, "name: reason"
    available: int  # images in the folder (the limit may have taken fewer)

    def describe(self) -> dict:
        return {
            "folder": str(self.folder),
            "images": len(self.files),
            "available": self.available,
            "skipped": self.skipped,
            "first": self.files[0],
            "last": self.files[-1],
            "lr_shape": list(self.lr.shape[1:]),
            "degradation": DEGRADATION,
        }


def load_calibration(folder: str | Path, limit: int, check: int = CHECK_IMAGES, side: int = LR_SIDE, scale: int = SCALE) -> CalibrationSet:
    """The first ``limit`` readable images of ``folder`` (recursive, sorted by path) as LR,
    and ``check`` more for the quality check: the images after those when the folder has
    them (held out), else the last calibration images (in-sample, and marked so).

    Raises ValueError naming ``folder`` when it is missing, holds no images, or none of
    them can be read; unreadable images are otherwise skipped with a warning (one bad
    file should not stop an export) and listed in the result.
    """
    folder = Path(folder)
    if limit < 1:
        raise ValueError(f"calibration limit must be >= 1, got {limit}")
    if not folder.is_dir():
        raise ValueError(f"calibration folder not found: {folder}")
    paths = scan_images(folder)
    if not paths:
        raise ValueError(f"calibration folder {folder} holds no images ({', '.join(sorted(READ_SUFFIXES))})")
    inputs, files, skipped = [], [], []
    for path in paths:
        if len(inputs) == limit + check:
            break
        try:
            inputs.append(lr_input(path, side, scale, name=str(path.relative_to(folder))))
        except (OSError, ValueError, SyntaxError) as e:  # ours (ImageError) and Pillow's for truncated/corrupt data
            skipped.append(str(e) if isinstance(e, ImageError) else f"{path.relative_to(folder)}: {e}")  # ImageError names the file
            continue
        files.append(path.relative_to(folder).as_posix())
    if skipped:
        warnings.warn(f"calibration: skipped {len(skipped)} unreadable images in {folder}, e.g. {skipped[0]}", stacklevel=2)
    if not inputs:
        raise ValueError(f"calibration folder {folder}: none of its {len(paths)} images could be read (e.g. {skipped[0]})")
    held_out = len(inputs) > limit
    calib = min(limit, len(inputs))
    check_at = calib if held_out else max(0, calib - check)
    return CalibrationSet(
        folder, np.stack(inputs[:calib]), files[:calib], np.stack(inputs[check_at:]), files[check_at:], held_out, skipped, len(paths)
    )


def lr_input(path: Path, side: int = LR_SIDE, scale: int = SCALE, name: str | None = None) -> np.ndarray:
    """One HR image file -> float32 (3, side, side) LR in [0, 1]. Raises ImageError (a
    ValueError naming the file as ``name``, default its path) for what the header checks
    refuse, a bomb included."""
    rgb = read_rgb(path, name, DEFAULT_MAX_PIXELS)
    w, h = rgb.size
    s = min(w, h)
    hr = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != side * scale:
        hr = hr.resize((side * scale, side * scale), Image.Resampling.BICUBIC)
    lr = downscale(hr, scale)  # (side, side), uint8 like a real input
    return np.asarray(lr, dtype=np.float32).transpose(2, 0, 1) / 255.0


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over an (N, 3, H, W) array.

    Yields batches of ``batch`` images. ``set_range``/``__len__`` (in batches) let
    quantize_static collect one batch at a time (its ``CalibStridedMinMax`` option):
    without that, ORT keeps every intermediate tensor of every batch in memory before
    reducing them, about 70 MB per 64x64 input for the B=8 generator.
    """

    def __init__(self, lr: np.ndarray, input_name: str, batch: int = 8):
        self.lr, self.input_name, self.batch = lr, input_name, batch
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.lr) // self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._stop = start_index, end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._stop:
            return None
        i = self._next * self.batch
        self._next += 1
        return {self.input_name: self.lr[i : i + self.batch]}
