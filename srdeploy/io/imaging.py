"""Image files <-> pixel arrays for the runtime, with every check done before decoding.

One path for the CLI and the TorchServe handler, so the same bytes in give the same bytes
out: :func:`decode` (bytes + a name for messages -> :class:`Picture`) and :func:`encode`
(Picture -> PNG/JPEG/WebP/TIFF/BMP bytes).

A Picture keeps what the file meant, not Pillow's mode zoo: colour as grey (H, W) or RGB
(H, W, 3), an optional alpha plane, 8- or 16-bit samples, upright (EXIF orientation
applied), the ICC profile to carry over. Palette, bilevel, CMYK, YCbCr and premultiplied
modes are converted on the way in; 16-bit grey and 16-bit colour PNGs keep all 16 bits.

Every failure is an :class:`ImageError` whose text names the file and the reason.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

from srdeploy.io import png
from srdeploy.io.formats import READ_FORMATS, SUFFIXES
from srdeploy.io.files import read_regular
from srdeploy.io.image_guard import DEFAULT_MAX_PIXELS, ImageError, TooManyPixels, most_file_bytes, open_checked, sniff, why

__all__ = [
    "READ_FORMATS", "DEFAULT_MAX_PIXELS", "DEFAULT_PNG_COMPRESSION", "ImageError", "TooManyPixels", "ImageInfo", "Picture", "probe", "decode", "read_rgb", "read_rgb_and_grey", "encode",
    "choose_format", "check_output_size", "OutputTooLarge", "output_suffix", "picture_from_pil", "picture_to_pil", "orient", "sniff",
]

# Formats srdeploy writes, and the largest side each can store (JPEG: libjpeg's
# JPEG_MAX_DIMENSION, below the format's 65,535).
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500, "PNG": 2**31 - 1, "TIFF": 2**31 - 1, "BMP": 2**31 - 1}
KEEPS_ALPHA = {"PNG", "WEBP", "TIFF"}
DEFAULT_QUALITY = {"JPEG": 95, "WEBP": 90}
# The output formats a user chooses from (``--format``, the demo's menu, the handler's
# header): the input's own, or one of the three srdeploy recommends for photos.
OUTPUT_CHOICES = ("same", "png", "jpg", "webp")
QUALITY_DEFAULTS_TEXT = f"{DEFAULT_QUALITY['JPEG']} JPEG, {DEFAULT_QUALITY['WEBP']} WebP"
# PNG compression, 0-9; the pixels are the same at every level. 0 stores; 1-3 are
# srdeploy's fast writer (srdeploy.io.png: one filter, ISA-L or zlib at that level); 4-9
# are Pillow's per-row filter search and zlib at that level, for the smallest files. 1
# encodes a face several times faster than 4, a little bigger (docs/results.md, "PNG
# compression").
DEFAULT_PNG_COMPRESSION = 1


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's own decompression-bomb guard (89 Mpx) to ``max_pixels`` where it is
    lower: the caller's cap, checked before decoding (image_guard), is the one that rules."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels (size as stored, before any
    EXIF rotation)."""

    name: str
    format: str  # Pillow's name: PNG, JPEG, MPO, WEBP, BMP, TIFF, GIF
    width: int
    height: int
    has_alpha: bool
    depth: int  # bits per sample kept: 8 or 16
    gray: bool


@dataclass
class Picture:
    """Decoded pixels: ``color`` uint8/uint16 (H, W) grey or (H, W, 3) RGB; ``alpha`` None
    or (H, W) of the same dtype; values span the dtype's full range."""

    color: np.ndarray
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    source_format: str = "PNG"

    @property
    def gray(self) -> bool:
        return self.color.ndim == 2

    @property
    def depth(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return self.color.shape[1], self.color.shape[0]


def probe(source: bytes | os.PathLike, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header checks only (format, frames, pixel cap); raises ImageError. ``source`` is
    the file's bytes or its path (then only the header is read)."""
    with open_checked(source, name, max_pixels) as im:
        return _info(im, name)


def decode(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode one still image from ``data``; ``name`` (a path or upload name) is for messages."""
    with open_checked(data, name, max_pixels) as im:
        info = _info(im, name)
        try:
            if png.is_png16_colour(im):
                samples = png.read_png16(data, im)  # (H, W, 3|4) uint16
                alpha = samples[..., 3] if samples.shape[2] == 4 else key_alpha(samples, im.info.get("transparency"))
                pic = Picture(samples[..., :3], alpha, im.info.get("icc_profile"))
            elif png.is_png16_grey_alpha(im):  # Pillow would give 8-bit RGBA
                samples = png.read_png16_grey_alpha(data)
                pic = Picture(np.ascontiguousarray(samples[..., 0]), np.ascontiguousarray(samples[..., 1]), im.info.get("icc_profile"))
            else:
                im.load()
                pic = picture_from_pil(im, name)
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except ImageError:
            raise
        except Exception as e:  # Pillow reports bad data as OSError, SyntaxError, ValueError, struct.error...
            raise ImageError(f"{name}: corrupt or truncated {info.format} data ({why(e)})") from None
    pic.source_format = "JPEG" if info.format == "MPO" else info.format
    return orient(pic, orientation)


def picture_from_pil(im: Image.Image, name: str = "image") -> Picture:
    """Any loaded Pillow image -> Picture (modes converted, nothing oriented)."""
    icc = im.info.get("icc_profile")
    if im.mode in ("La", "RGBa"):  # premultiplied alpha: undo it first
        im = im.convert(im.mode[:-1] + "A")
    mode = im.mode
    if mode == "CMYK":
        return Picture(np.asarray(_cmyk_to_srgb(im, icc)), None, None)  # now sRGB: the CMYK profile no longer applies
    if mode == "F":
        raise ImageError(f"{name}: 32-bit floating-point pixels are not supported")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(im)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported")
        grey = values.astype(np.uint16)
        return Picture(grey, key_alpha(grey, im.info.get("transparency")), icc)
    gray = mode in ("1", "L", "LA", "La") or (mode == "P" and _palette_is_gray(im))
    alpha = im.has_transparency_data
    target = "RGBA" if alpha else ("L" if gray else "RGB")  # Pillow applies palette/tRNS transparency on the way to RGBA
    try:
        pixels = np.asarray(im if im.mode == target else im.convert(target))
    except ValueError as e:
        raise ImageError(f"{name}: pixel mode {mode} is not supported ({e})") from None
    if alpha:
        color = pixels[..., 0] if gray else pixels[..., :3]
        return Picture(np.ascontiguousarray(color), np.ascontiguousarray(pixels[..., 3]), icc)
    return Picture(pixels, None, icc)


def key_alpha(samples: np.ndarray, key: int | tuple[int, ...] | None) -> np.ndarray | None:
    """The alpha a PNG's tRNS colour key stands for (None without one): clear where a pixel
    equals the key, opaque elsewhere. Pillow applies it at 8 bits only."""
    if key is None:
        return None
    hit = samples == np.asarray(key, dtype=samples.dtype)
    if samples.ndim == 3:
        hit = hit.all(axis=-1)
    return np.where(hit, 0, np.iinfo(samples.dtype).max).astype(samples.dtype)


def picture_to_pil(pic: Picture) -> Image.Image:
    """Picture -> Pillow image: L, LA, RGB, RGBA or I;16 (16-bit colour has no Pillow mode)."""
    if pic.depth == 16:
        if pic.gray and pic.alpha is None:
            img = Image.fromarray(pic.color)  # uint16 (H, W) -> I;16
        else:
            raise ValueError("Pillow has no mode for 16-bit colour or 16-bit grey+alpha; use encode()")
    elif pic.alpha is None:
        img = Image.fromarray(pic.color)  # uint8 (H, W) -> L, (H, W, 3) -> RGB
    else:
        stacked = np.dstack([pic.color, pic.alpha])
        img = Image.fromarray(stacked)  # (H, W, 2) -> LA, (H, W, 4) -> RGBA
    if pic.icc_profile:
        img.info["icc_profile"] = pic.icc_profile
    return img


def orient(pic: Picture, orientation: int) -> Picture:
    """Apply an EXIF orientation (1-8) so the picture is upright; others are ignored."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    if orientation not in ops:
        return pic
    turn = ops[orientation]
    alpha = None if pic.alpha is None else np.ascontiguousarray(turn(pic.alpha))
    return Picture(np.ascontiguousarray(turn(pic.color)), alpha, pic.icc_profile, pic.source_format)


def choose_format(requested: str, info: ImageInfo | Picture) -> tuple[str, str | None]:
    """Output format for ``requested`` ('same', 'png', 'jpg', 'webp'; also tiff, bmp or
    Pillow's names) -> (Pillow format name, note).

    Alpha forces a format that keeps it, and so does 16-bit depth (PNG; TIFF for grey):
    the note says why the output is not the requested format.
    """
    source = info.format if isinstance(info, ImageInfo) else info.source_format
    has_alpha = info.has_alpha if isinstance(info, ImageInfo) else info.alpha is not None
    if requested == "same":
        fmt = {"MPO": "JPEG", "GIF": "PNG"}.get(source, source)
        note = "GIF input written as PNG" if source == "GIF" else None
    else:
        fmt = {"jpg": "JPEG", "tif": "TIFF"}.get(requested.lower(), requested.upper())
        note = None
        if fmt not in MAX_SIDE:
            raise ValueError(f"unknown output format {requested!r}: use {', '.join(OUTPUT_CHOICES[:-1])} or {OUTPUT_CHOICES[-1]}")
    lacks = []
    if has_alpha and fmt not in KEEPS_ALPHA:
        lacks.append("alpha")
    if info.depth == 16 and fmt not in ("PNG", "TIFF"):
        lacks.append("16-bit samples")
    elif info.depth == 16 and fmt == "TIFF" and (has_alpha or not info.gray):
        lacks.append("16-bit colour or alpha (as Pillow writes it)")
    if lacks:
        return "PNG", f"{fmt} cannot store {' and '.join(lacks)}, wrote PNG"
    return fmt, note


class OutputTooLarge(ImageError):
    """An upscaled image larger than its output format stores. ``reason`` is the message
    without the remedy, which each surface words for its own controls (the CLI's ends in
    ``choose --format png``)."""

    def __init__(self, reason: str, remedy: str = "choose --format png"):
        super().__init__(f"{reason}; {remedy}")
        self.reason, self.remedy = reason, remedy

    def __reduce__(self):  # Ray pickles a worker's exception: rebuild it from both parts
        return type(self), (self.reason, self.remedy)


def check_output_size(info: ImageInfo, scale: int, fmt: str) -> None:
    """Raise OutputTooLarge when the upscaled image would exceed what ``fmt`` can store."""
    limit = MAX_SIDE[fmt]
    if max(info.width, info.height) * scale > limit:
        raise OutputTooLarge(f"{info.name}: the x{scale} output ({info.width * scale}x{info.height * scale}) exceeds {fmt}'s limit of {limit} px a side")


def encode(pic: Picture, fmt: str, quality: int | None = None, png_compression: int = DEFAULT_PNG_COMPRESSION) -> bytes:
    """Picture -> file bytes in ``fmt`` (PNG, JPEG, WEBP, TIFF, BMP), ICC profile carried.
    ``quality`` applies to JPEG/WebP, ``png_compression`` (0-9, see DEFAULT_PNG_COMPRESSION) to PNG."""
    if not 0 <= png_compression <= 9:
        raise ValueError(f"png_compression must be a zlib level from 0 to 9, got {png_compression}")
    if fmt == "PNG" and (png_compression in png.FAST_LEVELS or pic.depth == 16):  # Pillow has no 16-bit colour
        planes = pic.color if pic.alpha is None else np.dstack([pic.color, pic.alpha])
        return png.encode_png(planes, pic.icc_profile, png_compression)
    if pic.depth == 16 and fmt not in ("PNG", "TIFF"):
        pic = to_8bit(pic)  # explicit callers only: choose_format never picks this
    img = picture_to_pil(pic)
    options: dict = {"icc_profile": pic.icc_profile} if pic.icc_profile else {}
    if fmt == "PNG":
        options.update(compress_level=png_compression)
    elif fmt == "JPEG":
        q = quality or DEFAULT_QUALITY["JPEG"]
        options.update(quality=q, subsampling=0 if q >= 90 else 2)  # 4:4:4 keeps the detail SR adds
    elif fmt == "WEBP":
        options.update(quality=quality or DEFAULT_QUALITY["WEBP"])
        if img.mode in ("L", "LA") and (pic.icc_profile or b"")[16:20] == b"GRAY":  # the header's colour space
            options.pop("icc_profile")  # WebP stores grey as RGB, which a grey profile cannot describe
    elif fmt == "TIFF":
        options.update(compression="tiff_adobe_deflate")
    elif fmt == "BMP":
        options.pop("icc_profile", None)
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def read_rgb(path: str | os.PathLike, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """An image file as a model sees an HR image: upright (EXIF orientation), 8-bit RGB
    (16-bit samples scaled, not clipped; grey spread to three channels; alpha dropped).
    Training, evaluation, int8 calibration, parity and bench all read their images here,
    so a phone photo or a 16-bit scan means the same to each as to ``srdeploy upscale``.
    ``max_pixels`` defaults to Pillow's own decompression-bomb limit (none where a caller
    switched it off): HR photos may be far larger than upscale's input cap. Raises
    ImageError naming the file as ``name``."""
    return read_rgb_and_grey(path, name, max_pixels)[0]


def read_rgb_and_grey(path: str | os.PathLike, name: str | None = None, max_pixels: int | None = None) -> tuple[Image.Image, bool]:
    """:func:`read_rgb`, and whether the file is grey (evaluation scores a grey reference
    on its own values: srdeploy.quality.metrics)."""
    name = name or os.fspath(path)
    max_pixels = max_pixels or Image.MAX_IMAGE_PIXELS or 2**62
    try:
        data = read_regular(path, limit=most_file_bytes(max_pixels))
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        pic = decode(data, name, max_pixels)
    except TooManyPixels as e:  # its text names upscale's --max-pixels, which this caller has not
        size = f"{e.width}x{e.height} ({e.pixels:,} pixels)" if e.width else f"{'more than ' if e.at_least else ''}{e.pixels:,} pixels"
        raise ImageError(f"{name}: {size}, over the cap of {max_pixels:,} pixels; not decoded") from None
    if pic.depth == 16:
        pic = to_8bit(pic)
    color = np.repeat(pic.color[..., None], 3, axis=2) if pic.gray else pic.color
    return Image.fromarray(np.ascontiguousarray(color)), pic.gray


def to_8bit(pic: Picture) -> Picture:
    def cut(a: np.ndarray) -> np.ndarray:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)

    return Picture(cut(pic.color), None if pic.alpha is None else cut(pic.alpha), pic.icc_profile, pic.source_format)


def output_suffix(fmt: str, input_suffix: str) -> str:
    """Keep the input's own spelling (.JPG, .jpeg, .tiff) when it names ``fmt``."""
    return input_suffix if input_suffix.lower() in SUFFIXES[fmt] else SUFFIXES[fmt][0]


def _info(im: Image.Image, name: str) -> ImageInfo:
    # No EXIF here: Pillow loads a whole PNG to look for a trailing eXIf chunk.
    w, h = im.size
    depth = 16 if im.mode.startswith("I;16") or im.mode == "I" or png.is_png16_colour(im) or png.is_png16_grey_alpha(im) else 8
    gray = im.mode in ("1", "L", "LA", "La", "I", "F") or im.mode.startswith("I;16") or png.is_png16_grey_alpha(im)
    return ImageInfo(name, im.format, w, h, bool(im.has_transparency_data), depth, gray)


def _palette_is_gray(im: Image.Image) -> bool:
    palette = im.getpalette("RGB") or []
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb == rgb[:, :1]).all())


def _cmyk_to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Through the embedded CMYK profile when there is one (colour-managed), else Pillow's
    naive formula (the best guess without a profile)."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to the naive conversion below
    return im.convert("RGB")
