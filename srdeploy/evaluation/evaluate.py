"""``srdeploy evaluate``: bicubic and every model on one set of HR images, under the quality
protocol of srdeploy.quality.metrics, as the seed's Table 1 (rows bicubic + models; PSNR-Y,
SSIM-Y, RGB PSNR and the gain over bicubic), with the HF ratio beside them: how much of
HR's fine detail each output has, which PSNR does not see.

LR inputs are made from the HR images with srdeploy.quality.degrade.downscale, the degradation
training uses, or read from a folder of precomputed LR images (the MATLAB-bicubic
``LR_bicubic_x4`` of the Set5/Set14 benchmarks) so benchmark numbers are comparable to
published ones. Models are training checkpoints / state_dicts run whole-image in PyTorch,
or exported ONNX models and the shipped names run through srdeploy.runtime.upscaler.Upscaler,
the runtime every user gets. torch is imported only when a checkpoint is evaluated.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from srdeploy import SCALE
from srdeploy.io import imaging
from srdeploy.io.files import display
from srdeploy.io.folders import list_images
from srdeploy.io.imaging import ImageError
from srdeploy.io.formats import READ_SUFFIXES
from srdeploy.quality.degrade import DOWNSAMPLE_METHODS, crop_to_multiple, downscale, upscale_bicubic
from srdeploy.quality.metrics import BORDER, evaluate_pair, smallest_side
from srdeploy.runtime import zoo

BICUBIC = "bicubic"
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "hf_ratio")


@dataclass(frozen=True)
class TestImage:
    """One HR reference and where its LR input comes from (None: made by downscaling)."""

    name: str  # path relative to the data folder, e.g. "10310.jpg"
    hr_path: Path
    lr_path: Path | None = None


@dataclass
class SRModel:
    name: str
    source: str  # what was loaded, for the report
    upscale: Callable[[np.ndarray], np.ndarray]  # uint8 LR (h, w, 3) -> uint8 SR (4h, 4w, 3)


@dataclass
class Evaluation:
    """Per-image metrics of bicubic and each model, in model order (bicubic first)."""

    models: list[str]
    degradation: str  # how LR was made, in words
    border: int
    per_image: list[dict] = field(default_factory=list)  # {"image", "model", *METRICS, "seconds"}
    figure_rows: list[list[tuple[np.ndarray, str]]] = field(default_factory=list)
    cropped: int = 0  # HR images cropped to a multiple of the scale
    left_out: list[str] = field(default_factory=list)  # "path: reason" of images that could not be scored

    @property
    def image_count(self) -> int:
        return len({r["image"] for r in self.per_image})

    def table(self) -> list[dict]:
        """Mean of each metric over images (the usual average of per-image values), per
        model, with the gain over the bicubic row."""
        rows = []
        for model in self.models:
            recs = [r for r in self.per_image if r["model"] == model]
            row = {"model": model, **{m: float(np.mean([r[m] for r in recs])) for m in METRICS}}
            row["seconds_per_image"] = float(np.mean([r["seconds"] for r in recs]))
            rows.append(row)
        for row in rows:
            for m in METRICS:
                row[f"gain_{m}"] = row[m] - rows[0][m]
        return rows


# --- images ------------------------------------------------------------------------


def find_test_images(
    data_dir: str | Path, list_file: str | Path | None = None, lr_dir: str | Path | None = None, limit: int | None = None
) -> list[TestImage]:
    """HR images under ``data_dir`` (recursive, sorted), or those named in ``list_file``
    (one per line, relative path with or without extension: the ``test.txt`` lists name
    ``25531`` for ``25531.jpg``), paired with same-named LR images in ``lr_dir`` if given."""
    root = Path(data_dir)
    paths = list_images(root, list_file)[:limit]
    images = [TestImage(p.relative_to(root).as_posix(), p) for p in paths]
    return [TestImage(i.name, i.hr_path, _find_lr(Path(lr_dir), i.name)) for i in images] if lr_dir else images


def _find_lr(lr_dir: Path, name: str) -> Path:
    """The LR image for HR ``name``: the same relative path, or the same stem with another
    image suffix (benchmark LR sets are PNG even where HR is not)."""
    exact = lr_dir / name
    if exact.is_file():
        return exact
    for suffix in sorted(READ_SUFFIXES):
        candidate = exact.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no LR image for {name} in {lr_dir} (looked for {exact.name} and other suffixes)")


class UnreadableImage(ValueError):
    """An image file that cannot be decoded: left out of the evaluation, and said so."""


def read_rgb_and_grey(path: Path) -> tuple[Image.Image, bool]:
    """The image as every stage reads it (srdeploy.io.imaging.read_rgb: upright, 8-bit
    RGB), and whether the file is grey."""
    try:
        return imaging.read_rgb_and_grey(path)
    except ImageError as e:
        raise UnreadableImage(str(e)) from None
    except Exception as e:  # the last guard: one bad file is left out, not the run
        raise UnreadableImage(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def load_lr_hr(image: TestImage, downsample: str = "bicubic") -> tuple[Image.Image, Image.Image, bool, bool]:
    """(LR, HR, whether HR was cropped to a multiple of the scale, whether HR is grey)."""
    hr, grey = read_rgb_and_grey(image.hr_path)
    cropped = crop_to_multiple(hr, SCALE)
    was_cropped = cropped.size != hr.size
    if image.lr_path is None:
        return downscale(cropped, SCALE, downsample), cropped, was_cropped, grey
    lr, _ = read_rgb_and_grey(image.lr_path)
    expected = (cropped.width // SCALE, cropped.height // SCALE)
    if lr.size != expected:
        raise ValueError(
            f"{image.lr_path}: LR is {lr.width}x{lr.height}, expected {expected[0]}x{expected[1]} "
            f"(HR {image.hr_path} cropped to {cropped.width}x{cropped.height}, / {SCALE})"
        )
    return lr, cropped, was_cropped, grey


def describe_degradation(images: Sequence[TestImage], downsample: str) -> str:
    lr_dirs = sorted({str(i.lr_path.parent) for i in images if i.lr_path is not None})
    if lr_dirs:
        where = lr_dirs[0] if len(lr_dirs) == 1 else os.path.commonpath(lr_dirs)
        return f"LR = precomputed x{SCALE} images from {where}"
    return f"LR = HR downscaled x{SCALE} with PIL {downsample} (antialiased; srdeploy.quality.degrade.downscale)"


# --- models ------------------------------------------------------------------------


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounded to nearest (the protocol measures rounded SR)."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def resolve_device(device: str) -> str:
    """auto|cpu|cuda -> cpu|cuda; asking for CUDA without a visible GPU is an error, not a
    silent CPU run whose timings would be mislabelled."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU")
    return device


def is_runtime_model(spec: str) -> bool:
    return spec in zoo.NAMES or spec.lower().endswith(".onnx")


def check_model_names(names: Sequence[str]) -> None:
    """ValueError unless every model's name, and bicubic's, is its own: they key the tables."""
    names = [BICUBIC, *names]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique (got {names}); give each model its own --name")


def default_model_names(specs: Sequence[str]) -> list[str]:
    """Row names: the shipped name or the file stem; "parent/stem" where stems collide
    (run1/best.pt and run2/best.pt)."""
    stems = [s if s in zoo.NAMES else Path(s).stem for s in specs]
    return [
        f"{Path(spec).parent.name}/{stem}" if stems.count(stem) > 1 and spec not in zoo.NAMES else stem
        for spec, stem in zip(specs, stems)
    ]


def _checkpoint_model(path: Path, name: str, device: str) -> SRModel:
    import torch

    from srdeploy.training.checkpoint import load_generator

    generator, meta = load_generator(path, map_location="cpu")
    if generator.scale != SCALE:
        raise ValueError(f"{path}: generator scale is x{generator.scale}; evaluate measures x{SCALE}")
    generator = generator.to(device)
    step = f", step {meta['step']}" if "step" in meta else ""

    def upscale(lr: np.ndarray) -> np.ndarray:
        x = torch.tensor(lr, device=device).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, h, w)
        with torch.inference_mode():
            y = generator(x)  # (1, 3, 4h, 4w) in [-1, 1]
        return to_uint8(((y[0] + 1.0) / 2.0).permute(1, 2, 0).float().cpu().numpy())

    return SRModel(name, f"{path} (PyTorch, {generator.arch()}{step}, {device})", upscale)


def _runtime_model(spec: str, name: str, provider: str, precision: str) -> SRModel:
    """Through the runtime's Upscaler with its default tiling, so the numbers are those of
    the bytes ``srdeploy upscale`` writes (tiles overlap by the receptive radius: the same
    output as untiled)."""
    from srdeploy.runtime.upscaler import Upscaler

    upscaler = Upscaler(spec, provider=provider, precision=precision)
    if upscaler.scale != SCALE:
        raise ValueError(f"{spec}: model scale is x{upscaler.scale}; evaluate measures x{SCALE}")
    info = upscaler.describe()

    def upscale(lr: np.ndarray) -> np.ndarray:
        return to_uint8(upscaler.upscale_array(lr.astype(np.float32) / 255.0))

    where = f"{info['provider']} {info['precision']}, tile {info['tile']}, overlap {info['overlap']}"
    return SRModel(name, f"{spec} (srdeploy.runtime.upscaler, {where}, sha256 {info['model_sha256'][:12]})", upscale)


def load_model(spec: str, name: str | None = None, device: str = "cpu", provider: str = "auto", precision: str = "auto") -> SRModel:
    """A checkpoint/state_dict ``.pt`` path (run in PyTorch on ``device``), an ``.onnx``
    path or a shipped model name (run by the Upscaler on ``provider`` at ``precision``).
    Raises ValueError/FileNotFoundError naming the model and the reason."""
    name = name or default_model_names([spec])[0]
    if name == BICUBIC:
        raise ValueError(f"{spec}: the name {BICUBIC!r} is taken by the baseline row; give this model another --name")
    if is_runtime_model(spec):
        return _runtime_model(spec, name, provider, precision)
    path = Path(spec)
    if path.is_dir():  # a run folder, or an export's
        raise FileNotFoundError(f"{spec} is a folder; give a model file in it, such as {path / 'last.pt'} or {path / zoo.MODEL_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {spec} (a .pt checkpoint, an .onnx file or one of {zoo.NAMES})")
    return _checkpoint_model(path, name, resolve_device(device))


# --- the evaluation loop -----------------------------------------------------------


def _nearest_up(lr: np.ndarray) -> np.ndarray:
    return lr.repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def evaluate(
    images: Sequence[TestImage],
    models: Sequence[SRModel] = (),
    downsample: str = "bicubic",
    border: int = BORDER,
    figure_count: int = 4,
    progress: bool = False,
) -> Evaluation:
    """Bicubic and every model on every image. Only the first ``figure_count`` images'
    outputs are kept (for the comparison figure); the rest are measured and dropped. An
    image that cannot be decoded, or is too small to score, is left out and named in
    ``left_out``; ValueError when none is left."""
    from tqdm import tqdm

    if downsample not in DOWNSAMPLE_METHODS:
        raise ValueError(f"unknown downsample method {downsample!r}; use one of {sorted(DOWNSAMPLE_METHODS)}")
    names = [BICUBIC] + [m.name for m in models]
    check_model_names(names[1:])
    result = Evaluation(models=names, degradation=describe_degradation(images, downsample), border=border)
    for image in tqdm(images, desc="evaluate", unit="img", disable=not progress):
        try:
            lr_img, hr_img, cropped, grey = load_lr_hr(image, downsample)
        except UnreadableImage as e:  # one bad file in a folder of hundreds: all of them are named at the end
            result.left_out.append(str(e))
            continue
        if min(hr_img.size) < smallest_side(border):  # before any model runs on it
            result.left_out.append(f"{image.hr_path}: too small to score ({hr_img.width}x{hr_img.height} after cropping to a "
                                   f"multiple of {SCALE}; a border of {border} px and SSIM's window need {smallest_side(border)} a side)")
            continue
        result.cropped += cropped
        lr, hr = np.asarray(lr_img), np.asarray(hr_img)
        reference = hr[..., 0] if grey else hr  # a grey HR is scored on its own values (srdeploy.quality.metrics)
        panels = [(_nearest_up(lr), f"{display(image.name)}\nLR (nearest x{SCALE})")]
        outputs = [(BICUBIC, lambda _: np.asarray(upscale_bicubic(lr_img, SCALE)))]
        outputs += [(m.name, m.upscale) for m in models]
        for name, upscale in outputs:
            start = time.perf_counter()
            try:
                sr = upscale(lr)
            except Exception as e:
                raise RuntimeError(f"{name} failed on {image.hr_path}: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - start
            if sr.shape != hr.shape:
                raise ValueError(f"{name} returned {sr.shape} for {image.hr_path}; expected {hr.shape}")
            try:
                scores = evaluate_pair(sr, reference, border)
            except ValueError as e:
                raise ValueError(f"{image.hr_path}: {e}") from None
            result.per_image.append({"image": image.name, "model": name, **scores, "seconds": seconds})
            panels.append((sr, f"{name}\n{scores['psnr_y']:.2f} dB, HF {scores['hf_ratio']:.2f}"))
        if len(result.figure_rows) < figure_count:
            result.figure_rows.append(panels + [(hr, "HR\nHF 1.00")])
    if not result.per_image:
        raise ValueError(f"none of the {len(images)} images could be scored: " + "; ".join(result.left_out[:3]) + (" ..." if len(result.left_out) > 3 else ""))
    return result
