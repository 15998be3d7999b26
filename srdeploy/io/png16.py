"""16-bit-per-channel colour PNG, which Pillow has no image mode for.

Pillow opens a 48-bit RGB or 64-bit RGBA PNG as 8-bit "RGB"/"RGBA" and keeps only the
high byte of every sample. Its PNG decoder still does the hard part (inflate, un-filter,
de-interlace) correctly for both byte orders, so :func:`read_png16` decodes the file twice:
once with the big-endian raw mode (high bytes) and once with the same bits read as
little-endian (which yields the low bytes), and joins them. Writing is plain: the samples
go out big-endian with the PNG "Sub" filter, streamed through zlib in row blocks so a
large image never exists twice in memory.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Raw modes of 16-bit colour PNGs whose low bytes Pillow can unpack (grey+alpha cannot).
_LOW_BYTE_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}
_ROWS_PER_BLOCK = 256


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


def encode_png16(pixels: np.ndarray, icc_profile: bytes | None = None, level: int = 6) -> bytes:
    """uint16 (H, W) grey, (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA -> PNG bytes."""
    if pixels.dtype != np.uint16:
        raise TypeError(f"encode_png16 takes uint16 samples, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    out = io.BytesIO()
    out.write(PNG_SIGNATURE)
    _chunk(out, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    if icc_profile:
        _chunk(out, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
    bpp = 2 * channels  # bytes per pixel, the distance the Sub filter looks back
    compressor = zlib.compressobj(level)
    for top in range(0, height, _ROWS_PER_BLOCK):
        rows = pixels[top : top + _ROWS_PER_BLOCK].astype(">u2").reshape(-1, width * channels).view(np.uint8)
        filtered = rows.copy()
        filtered[:, bpp:] -= rows[:, :-bpp]  # Sub filter; uint8 arithmetic wraps mod 256 as PNG wants
        block = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
        block[:, 0] = 1  # filter type Sub on every row
        block[:, 1:] = filtered
        compressed = compressor.compress(block.tobytes())
        if compressed:
            _chunk(out, b"IDAT", compressed)
    _chunk(out, b"IDAT", compressor.flush())
    _chunk(out, b"IEND", b"")
    return out.getvalue()


def _chunk(out: io.BytesIO, kind: bytes, payload: bytes) -> None:
    out.write(struct.pack(">I", len(payload)))
    out.write(kind + payload)
    out.write(struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
