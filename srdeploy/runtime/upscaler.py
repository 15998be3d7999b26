"""The one Upscaler: a model, the provider that runs it, and tiling.

Shared by ``srdeploy upscale``, ``srdeploy evaluate`` and the TorchServe handler, so the
same input gives the same output everywhere::

    up = Upscaler("default", provider="auto", tile=256)
    sr = up.upscale_array(lr)                       # float32 (H, W, 3) in [0, 1] -> (4H, 4W, 3)
    img = up.upscale_image(Image.open(path))        # any mode; alpha, grey, 16-bit grey kept
    out = up.upscale_bytes(data, "a.png", "same")   # file bytes -> file bytes (CLI and handler)
    # the same in three steps (the batch overlaps them on threads): decode, upscale_picture, encode

Immutable after construction and safe to share between threads (ONNX Runtime sessions
are; GPU I/O buffers are per thread). Providers: ``cpu``, ``cuda`` and ``tensorrt`` map to
ONNX Runtime execution providers, ``openvino`` to OpenVINO's CPU plugin; ``auto`` picks
CUDA when it works, else the fastest engine and precision this CPU has within the quality
contract (srdeploy.runtime.engines), and says which. An explicitly requested provider that
cannot start is an error, never a quiet CPU run. ``.engine`` files run through TensorRT
directly (srdeploy.runtime.tensorrt; srdeploy.export.tensorrt_engine builds them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from srdeploy import GREY_LUMA
from srdeploy.io import imaging
from srdeploy.io.imaging import Picture
from srdeploy.runtime import contract, cpu_graph, engines, openvino_engine, tiling
from srdeploy.runtime.cpus import available_cpus, cpu_info
from srdeploy.runtime.engines import Engine, ProviderError
from srdeploy.runtime.providers import OrtRunner, available_providers, open_engine, open_session, select_provider
from srdeploy.runtime.zoo import ModelError, ModelRef, resolve_model

__all__ = ["Upscaler", "Decoded", "Encoded", "ProviderError", "ModelError", "ModelOutputError", "DEFAULT_TILE"]

# LR pixels a side; windows add the overlap. Larger tiles recompute less overlap and run
# faster, smaller ones bound memory tighter: 256 keeps a 2048x2048 input under 2 GiB.
# The trade-off, measured: docs/results.md, "Tiling and memory".
DEFAULT_TILE = 256
LUMA = np.array(GREY_LUMA, dtype=np.float32)


class ModelOutputError(RuntimeError):
    """The model computed values that are not numbers: the model is broken, not the input."""


@dataclass(frozen=True)
class Decoded:
    """One input ready for the model: its pixels and the output format chosen for them."""

    picture: Picture
    format: str  # Pillow's name: PNG, JPEG, WEBP, TIFF, BMP
    note: str | None  # why the format differs from the one asked for


@dataclass(frozen=True)
class Encoded:
    """One upscaled file: its bytes, format, and a note when the format had to change."""

    data: bytes
    format: str
    note: str | None
    width: int
    height: int


class Upscaler:
    """Model + provider + tiling; see the module docstring.

    ``model``: default|srresnet|srgan|path (.onnx/.engine) or a resolved ModelRef.
    ``tile``: LR core tile side (windows add the receptive radius on each side); 0 or
    None runs each image whole, which only the CPU allows. ``threads``: CPU threads for
    the session (default: the CPUs this process may use).
    """

    provider: str  # cpu | openvino | cuda | tensorrt: what actually runs the model
    scale: int  # 4 for the shipped generators
    overlap: int  # LR pixels of context around each tile: the model's receptive radius, rounded up

    def __init__(
        self, model: str | os.PathLike | ModelRef = "default", provider: str = "auto", tile: int | None = DEFAULT_TILE,
        threads: int | None = None, precision: str = "auto",
    ):
        self.model = model if isinstance(model, ModelRef) else resolve_model(model)
        self.threads = threads or available_cpus()
        self.engine_why: str | None = None  # Engine.why: what "auto" decided, or what an explicit choice costs
        if tile is not None and tile < 0:
            raise ValueError(f"tile must be >= 0 (0 = untiled), got {tile}")
        self.tile = tile or None
        if self.model.kind == "engine":
            self._start_engine(provider, precision)
        else:
            self._start_onnx(provider, precision)
            problem = tiling.tile_problem(self.tile or 0, self.overlap)
            if problem:
                raise ValueError(problem)

    # --- public API ---------------------------------------------------------------

    def upscale_array(self, rgb: np.ndarray) -> np.ndarray:
        """float32 (H, W, 3) RGB in [0, 1] -> float32 (sH, sW, 3) in [0, 1]."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"upscale_array takes an (H, W, 3) RGB array, got shape {rgb.shape}")
        return tiling.upscale_tiled(self._run, rgb.astype(np.float32, copy=False), self.scale, self.tile, self.overlap)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The engine alone on float32 (N, 3, h, w) in [0, 1] -> (N, 3, sh, sw), untiled:
        what parity checks compare across engines."""
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def upscale_picture(self, pic: Picture) -> Picture:
        """Colour through the model; grey goes in as RGB and comes out as BT.601 luma;
        alpha is upscaled bicubically on its own and re-attached; depth is kept."""
        peak = 65535.0 if pic.depth == 16 else 255.0
        dtype = np.uint16 if pic.depth == 16 else np.uint8
        color = pic.color.astype(np.float32) / peak
        if pic.gray:
            color = np.repeat(color[..., None], 3, axis=2)  # (H, W, 3)

        def finish(core: np.ndarray) -> np.ndarray:  # float32 (h, w, 3) in [0, 1]
            # One temporary, worked in place (clip(x * peak, 0, peak) is exactly clip(x, 0, 1)
            # * peak): a chain of fresh arrays costs several times the arithmetic when the
            # allocator hands back unmapped pages (docs/results.md, "Batch throughput at 100 faces/s").
            values = (core @ LUMA) * peak if pic.gray else core * peak
            np.clip(values, 0.0, peak, out=values)
            np.rint(values, out=values)
            try:
                with np.errstate(invalid="raise"):  # NaN cast to an integer: the cast itself reports it, with no extra pass over the pixels
                    return values.astype(dtype)
            except FloatingPointError:
                raise ModelOutputError("the model's output holds NaN values (not a number), so no image was written; the model is broken") from None

        out = tiling.upscale_tiled(self._run, color, self.scale, self.tile, self.overlap, finish)
        alpha = None if pic.alpha is None else _resize_alpha(pic.alpha, self.scale)
        return Picture(out, alpha, pic.icc_profile, pic.source_format)

    def upscale_image(self, img: Image.Image) -> Image.Image:
        """Any Pillow image -> upscaled Pillow image (EXIF orientation applied, mode kept:
        L, LA, RGB, RGBA, I;16; palette, CMYK and others come back as RGB/RGBA, a palette of
        grey entries only as L/LA). Pillow opens
        a 16-bit colour PNG as 8-bit RGB: upscale_bytes keeps all 16 bits of one."""
        pic = imaging.picture_from_pil(img, getattr(img, "filename", "") or "image")
        pic = imaging.orient(pic, img.getexif().get(0x0112, 1))
        return imaging.picture_to_pil(self.upscale_picture(pic))

    def upscale_bytes(
        self, data: bytes, name: str, format: str = "same", quality: int | None = None,
        max_pixels: int = imaging.DEFAULT_MAX_PIXELS, png_compression: int = imaging.DEFAULT_PNG_COMPRESSION,
    ) -> Encoded:
        """Image file bytes -> upscaled file bytes; ``format`` is same|png|jpg|webp.
        Raises imaging.ImageError (naming ``name``) for input it cannot take.

        The same as :meth:`decode`, :meth:`upscale_picture`, :meth:`encode` in turn, which
        the batch runs on different threads to overlap them."""
        decoded = self.decode(data, name, format, max_pixels)
        return self.encode(self.upscale_picture(decoded.picture), decoded.format, decoded.note, quality, png_compression)

    def decode(self, data: bytes, name: str, format: str = "same", max_pixels: int = imaging.DEFAULT_MAX_PIXELS) -> Decoded:
        """Image file bytes -> the picture and the output format for it (header checks
        first: pixel cap, format, and that the x``scale`` output fits the format)."""
        info = imaging.probe(data, name, max_pixels)
        fmt, note = imaging.choose_format(format, info)
        imaging.check_output_size(info, self.scale, fmt)
        return Decoded(imaging.decode(data, name, max_pixels), fmt, note)

    @staticmethod
    def encode(
        upscaled: Picture, format: str, note: str | None = None, quality: int | None = None,
        png_compression: int = imaging.DEFAULT_PNG_COMPRESSION,
    ) -> Encoded:
        """An upscaled picture -> file bytes in the ``format`` :meth:`decode` chose (with its note)."""
        width, height = upscaled.size
        return Encoded(imaging.encode(upscaled, format, quality, png_compression), format, note, width, height)

    def describe(self) -> dict[str, Any]:
        """What produced an output: for journals and logs."""
        return {
            "model": self.model.name, "model_sha256": self.model.sha256, "provider": self.provider, "precision": self.precision,
            "scale": self.scale, "tile": self.tile or 0, "overlap": self.overlap, "threads": self.threads, "engine_choice": self.engine_why,
        }

    # --- start-up -----------------------------------------------------------------

    def _start_onnx(self, provider: str, precision: str) -> None:
        path = self.model.path
        try:
            info = contract.validate_onnx_model(path)
        except (ValueError, FileNotFoundError) as e:
            raise ModelError(str(e)) from None
        self.overlap = tiling.overlap_of_file(path)
        window = self.tile + 2 * self.overlap if self.tile else None
        model_precision = info["precision"] or "fp32"
        gpu_note = None
        if provider in ("auto", *engines.GPU_PROVIDERS) and precision in ("auto", "fp32") and model_precision != "int8":
            gpu = select_provider(provider, available_providers())  # auto: cuda when listed, else cpu
            if gpu != "cpu":
                try:
                    session = self._open(gpu, window)
                except ProviderError as e:
                    if provider != "auto":
                        raise
                    gpu_note = f"auto: CUDA did not start ({e})"
                else:
                    self.engine = Engine(gpu, model_precision, "auto: CUDA is usable" if provider == "auto" else None)
                    self._run = OrtRunner(session, info["scale"] or 4, "cuda")
                    self._finish_start(info)
                    return
        cpu = cpu_info()
        openvino = openvino_engine.available()
        bf16 = openvino_engine.native_bf16()
        self.engine = engines.resolve(provider, precision, model_precision, cpu, openvino, bf16, info["int8_engine"] or "cpu")
        if gpu_note:
            self.engine = Engine(self.engine.provider, self.engine.precision, f"{gpu_note}; {self.engine.why.removeprefix('auto: ')}")
        if self.engine.provider == "openvino":
            rewrites = cpu_graph.OPENVINO_REWRITES.get(self.engine.precision)
            graph = cpu_graph.optimized_bytes(path, rewrites) if rewrites else None  # int8 graphs come rewritten
            try:
                self._run = openvino_engine.OpenVinoRunner(graph or path, self.engine.precision, self.threads, bf16)
            except ValueError as e:
                raise ModelError(f"{path}: {e}") from None
        elif self.engine.provider == "cpu":
            if not available_providers():
                raise ProviderError("ONNX Runtime is not installed: pip install 'srdeploy[cpu]'")
            self._run = OrtRunner(self._open("cpu", window), info["scale"] or 4, "cpu")
        else:  # cuda / tensorrt asked with a precision only the CPU has
            raise ProviderError(f"provider {self.engine.provider!r} cannot run {self.engine.precision}")
        self._finish_start(info)

    def _finish_start(self, info: dict[str, Any]) -> None:
        self.provider, self.precision, self.engine_why = self.engine.provider, self.engine.precision, self.engine.why
        self.scale = _upscaling(info["scale"] or _probe_scale(self._run), self.model.path)
        if isinstance(self._run, OrtRunner):
            self._run.scale = self.scale

    def _open(self, provider: str, window: int | None) -> Any:
        try:
            return open_session(self.model.path, provider, self.threads, window)
        except ValueError as e:
            raise ModelError(str(e)) from None

    def _start_engine(self, requested: str, precision: str) -> None:
        if requested not in ("auto", "tensorrt"):
            raise ProviderError(f"{self.model.path} is a TensorRT engine: it runs only with --provider tensorrt (or auto), on an NVIDIA GPU")
        built, self.overlap, why = _engine_build(self.model)
        if built == "unknown" and precision != "auto":  # no manifest to say: the user's word is recorded
            built = precision
        if precision not in ("auto", built):
            raise ProviderError(f"{self.model.path} is a TensorRT engine built for {built}: its precision was fixed when it was built")
        self._run = open_engine(self.model.path)
        self.engine = Engine("tensorrt", built, why)
        self.provider, self.precision, self.engine_why = "tensorrt", built, why
        self.tile = max(1, self._run.max_side - 2 * self.overlap)  # the engine's profile fixes the window
        self.scale = _upscaling(_probe_scale(self._run), self.model.path)


def _engine_build(model: ModelRef) -> tuple[str, int, str | None]:
    """(precision, tile overlap, note) of a TensorRT engine: the precision export's manifest
    records for it and its generator's receptive radius. An engine without its manifest
    runs with tiling's fallback overlap, and the note says so."""
    manifest = model.manifest or {}
    entry = manifest.get("models", {}).get(model.path.name, {})
    radius = manifest.get("receptive_radius_lr")
    if isinstance(entry.get("precision"), str) and isinstance(radius, (int, float)):
        return entry["precision"], math.ceil(radius), None
    return "unknown", tiling.FALLBACK_OVERLAP, (
        f"no {contract.MANIFEST_NAME} from srdeploy export beside the engine: precision unknown, tiles overlap by "
        f"{tiling.FALLBACK_OVERLAP} px (enough for up to 12 residual blocks)"
    )


def _upscaling(scale: int, path: Any) -> int:
    """The model's scale, refused when it does not enlarge (x1, or smaller outputs): a
    wrong file given as --model would otherwise "upscale" every image to its own size."""
    if scale < 2:
        raise ModelError(f"{path}: the model makes images {'the size of' if scale == 1 else 'smaller than'} its inputs (x{scale}), not an upscaling model")
    return scale


def _probe_scale(run: Any) -> int:
    """Scale of a model whose file does not state it: run one small input."""
    side = 16
    return int(run(np.zeros((1, 3, side, side), np.float32)).shape[2] // side)


def _resize_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic x``scale`` of an alpha plane, same dtype (8-bit through Pillow's L, 16-bit
    through F so no precision is lost)."""
    h, w = alpha.shape
    size = (w * scale, h * scale)
    if alpha.dtype == np.uint8:
        return np.asarray(Image.fromarray(alpha).resize(size, Image.Resampling.BICUBIC))
    up = np.asarray(Image.fromarray(alpha.astype(np.float32)).resize(size, Image.Resampling.BICUBIC))
    return np.rint(np.clip(up, 0, 65535)).astype(np.uint16)
