"""PNG: srdeploy's fast PNG writer, and the 16-bit colour PNGs Pillow cannot read.

Writing. Pillow tries all five PNG filters on every row and keeps the best, then deflates
with zlib; at a bf16 CPU's model rate that costs about as much CPU as the model itself
(docs/results.md, "PNG compression"). :func:`encode_png` filters every row with "Up" (the
byte above, which suits photographs and upscaled images) and deflates with ISA-L where the
``isal`` package is installed (a dependency wherever it has wheels), else with zlib: files
a little bigger, written several times faster. It writes 8- and 16-bit grey, grey+alpha,
RGB and RGBA, streaming row blocks so a large image never exists twice in memory. The
pixels are exactly the input's; the bytes depend on the level and on the deflate library,
never the pixels. srdeploy.io.imaging decides which levels come here (:data:`FAST_LEVELS`)
and which go to Pillow's smaller files.

Reading. Pillow opens a 48-bit RGB or 64-bit RGBA PNG as 8-bit "RGB"/"RGBA" and keeps only
the high byte of every sample. Its PNG decoder still does the hard part (inflate,
un-filter, de-interlace) correctly for both byte orders, so :func:`read_png16` decodes the
file twice: once with the big-endian raw mode (high bytes) and once with the same bits
read as little-endian (which yields the low bytes), and joins them. Pillow has no raw
mode for the low bytes of 16-bit grey+alpha, so :func:`read_png16_grey_alpha` reads that
file as the 8-bit RGBA image with the same bytes: 4 bytes a pixel in both, so the rows and
their filters are the same, and each RGBA pixel is (grey high, grey low, alpha high, alpha low).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

try:  # Intel's ISA-L (x86-64 and Arm): deflate at levels 1-3, about 4x zlib's speed here
    from isal import isal_zlib as _isal
except ImportError:
    _isal = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey+alpha, RGB, RGBA
FILTER_UP = 2
FAST_LEVELS = range(0, 4)  # 0 stores, 1-3 deflate fast; higher levels are about size (srdeploy.io.imaging)
# Raw modes of 16-bit colour PNGs whose low bytes Pillow can unpack (grey+alpha: read_png16_grey_alpha).
_LOW_BYTE_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
_BLOCK_BYTES = 1 << 20  # rows filtered and compressed at a time


def png_rawmode(im: Image.Image) -> str | None:
    """The raw mode Pillow will decode a (not yet loaded) PNG with, e.g. 'RGB;16B'."""
    if im.format != "PNG" or not im.tile:
        return None
    args = im.tile[0].args
    return args if isinstance(args, str) else (args[0] if args else None)


def is_png16_colour(im: Image.Image) -> bool:
    """True for a not yet loaded 16-bit RGB/RGBA PNG that Pillow would cut to 8 bits."""
    return png_rawmode(im) in _LOW_BYTE_RAWMODES


def read_png16(data: bytes, im: Image.Image) -> np.ndarray:
    """Full-depth samples of a 16-bit colour PNG: uint16 (H, W, 3 or 4).

    ``im`` is Pillow's still unloaded image of ``data`` (header parsed); it is loaded here.
    """
    rawmode = png_rawmode(im)
    low = Image.open(io.BytesIO(data), formats=["PNG"])
    low.tile = [tile._replace(args=_LOW_BYTE_RAWMODES[rawmode]) for tile in low.tile]
    high_bytes = np.asarray(im, dtype=np.uint16)
    low_bytes = np.asarray(low, dtype=np.uint16)
    return (high_bytes << 8) | low_bytes


def is_png16_grey_alpha(im: Image.Image) -> bool:
    """True for a not yet loaded 16-bit grey+alpha PNG (Pillow would give 8-bit samples)."""
    return png_rawmode(im) == "LA;16B"


def read_png16_grey_alpha(data: bytes) -> np.ndarray:
    """Full-depth samples of a 16-bit grey+alpha PNG: uint16 (H, W, 2), grey then alpha.

    The same IDAT data under an IHDR that says 8-bit RGBA (and no ancillary chunks, whose
    layouts depend on the colour type) decodes to the file's bytes, pixel for pixel."""
    chunks = _chunks(data)
    ihdr = bytearray(chunks[0][1])
    ihdr[8], ihdr[9] = 8, 6  # bit depth 8, colour type 6 (RGBA); size, compression, filter, interlace kept
    as_rgba = io.BytesIO()
    as_rgba.write(PNG_SIGNATURE)
    _chunk(as_rgba, b"IHDR", bytes(ihdr))
    for kind, payload in chunks:
        if kind == b"IDAT":
            _chunk(as_rgba, kind, payload)
    _chunk(as_rgba, b"IEND", b"")
    with Image.open(io.BytesIO(as_rgba.getvalue()), formats=["PNG"]) as im:
        raw = np.asarray(im, dtype=np.uint16)  # (H, W, 4): grey high, grey low, alpha high, alpha low
    return np.stack([(raw[..., 0] << 8) | raw[..., 1], (raw[..., 2] << 8) | raw[..., 3]], axis=-1)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG whose signature was checked; CRCs were
    checked by Pillow when it opened the file."""
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
        if kind == b"IEND":
            break
    return chunks


def encode_png(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 1) -> bytes:
    """uint8 or uint16 samples, (H, W) grey, (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4)
    RGBA -> PNG bytes (zlib ``level`` 0-9, the Up filter on every row)."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"encode_png takes uint8 or uint16 samples, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in COLOUR_TYPES or 0 in pixels.shape:
        raise ValueError(f"encode_png takes (H, W) or (H, W, 1-4) samples, got shape {pixels.shape}")
    height, width, channels = pixels.shape
    depth = 8 * pixels.dtype.itemsize
    out = io.BytesIO()
    out.write(PNG_SIGNATURE)
    _chunk(out, b"IHDR", struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPES[channels], 0, 0, 0))
    if icc_profile:
        _chunk(out, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
    compressor = _compressor(level)
    row_bytes = width * channels * pixels.dtype.itemsize
    rows_per_block = max(1, _BLOCK_BYTES // row_bytes)
    above = np.zeros(row_bytes, np.uint8)  # the row before the first is all zeros for Up
    for top in range(0, height, rows_per_block):
        rows = _row_bytes(pixels[top : top + rows_per_block], row_bytes)
        block = np.empty((rows.shape[0], 1 + row_bytes), np.uint8)
        block[:, 0] = FILTER_UP
        np.subtract(rows[0], above, out=block[0, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
        np.subtract(rows[1:], rows[:-1], out=block[1:, 1:])
        above = rows[-1].copy()
        compressed = compressor.compress(block)
        if compressed:
            _chunk(out, b"IDAT", compressed)
    _chunk(out, b"IDAT", compressor.flush())
    _chunk(out, b"IEND", b"")
    return out.getvalue()


def deflate_library(level: int) -> str:
    """Which library deflates at ``level``: 'isal' or 'zlib' (the bytes differ, the pixels do not)."""
    return "isal" if _isal is not None and level in FAST_LEVELS and level > 0 else "zlib"  # 0 stores: zlib


def _compressor(level: int):
    if not 0 <= level <= 9:
        raise ValueError(f"PNG compression must be a zlib level from 0 to 9, got {level}")
    return _isal.compressobj(level) if deflate_library(level) == "isal" else zlib.compressobj(level)


def _row_bytes(rows: np.ndarray, row_bytes: int) -> np.ndarray:
    """Samples -> their bytes as PNG stores them (16-bit big-endian), one row per line."""
    if rows.dtype == np.uint16:
        rows = rows.astype(">u2")
    return np.ascontiguousarray(rows).view(np.uint8).reshape(-1, row_bytes)


def _chunk(out: io.BytesIO, kind: bytes, payload: bytes) -> None:
    out.write(struct.pack(">I", len(payload)))
    out.write(kind + payload)
    out.write(struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
