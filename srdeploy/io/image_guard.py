"""Opening untrusted image files: nothing is decoded before it passes the checks.

Format allowlist (only those Pillow plugins parse the header), a sniff of the first bytes
so that a wrong or missing format gets a message that says what the file is, single
frames only, and a pixel cap checked on the header's size before any pixel is decoded,
with Pillow's decompression-bomb warning turned into a refusal. libtiff's own messages
are kept off stderr (srdeploy.io.libtiff).
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from typing import BinaryIO

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from srdeploy.io import libtiff
from srdeploy.io.files import open_regular
from srdeploy.io.formats import READ_FORMATS
from srdeploy.io.streams import about_file

libtiff.silence()  # a bad TIFF's reason is its one line here, not libtiff's own print

# A square image at the cap upscales x4 to 16380 px a side, inside WebP's 16383 limit;
# larger sides are also checked per output format (see imaging.MAX_SIDE).
DEFAULT_MAX_PIXELS = 4095 * 4095
# A progressive JPEG is decoded one scan at a time, each a pass over the whole image:
# encoders write about 10; 200,000 scans in 2.4 MB took 7.5 s to decode 512x512 pixels.
MOST_JPEG_SCANS = 500


_WARNINGS_SWAP = threading.Lock()


def most_file_bytes(pixels: int) -> int:
    """The most bytes an image file of ``pixels`` pixels needs: 32 a pixel (float64 RGBA
    stored uncompressed, the widest sample a TIFF holds) and 64 MiB of metadata (ICC,
    EXIF, XMP, text). What a larger file holds beyond that is not an image's, and reading
    it whole could take the memory of the process."""
    return 32 * pixels + (64 << 20)


class ImageError(ValueError):
    """An input that cannot be upscaled; the message names the file and the reason."""


class TooManyPixels(ImageError):
    """An image whose header declares more pixels than the cap: ``width`` x ``height``, or
    ``pixels`` alone when Pillow's own guard refused it before its size was at hand, which
    is a lower bound (``at_least``) where Pillow's message does not state the count."""

    def __init__(self, message: str, pixels: int, width: int | None = None, height: int | None = None, at_least: bool = False):
        super().__init__(message)
        self.pixels, self.width, self.height, self.at_least = pixels, width, height, at_least

    def __reduce__(self):
        # Ray and multiprocessing pickle the exceptions their workers raise; the default
        # rebuilds from ``args`` (the message alone), which this signature refuses.
        return type(self), (str(self), self.pixels, self.width, self.height, self.at_least)


def _declared_pixels(bomb: Exception) -> int | None:
    """The pixel count Pillow's decompression-bomb message states, if it does."""
    found = re.search(r"\((\d+) pixels\)", str(bomb))
    return int(found.group(1)) if found else None


class open_checked:
    """Context manager: Pillow's lazily opened (header-only) image of ``source`` (bytes or
    a path), after every check that needs no decoding; raises ImageError."""

    def __init__(self, source: bytes | os.PathLike, name: str, max_pixels: int):
        self.source, self.name, self.max_pixels = source, name, max_pixels

    def __enter__(self) -> Image.Image:
        self.naming = about_file(self.name)  # Pillow's warnings while the file is open are about it
        self.naming.__enter__()
        try:
            return self._open()
        except BaseException:
            self.naming.__exit__(None, None, None)
            raise

    def _open(self) -> Image.Image:
        name = self.name
        if isinstance(self.source, bytes):
            stream: BinaryIO = io.BytesIO(self.source)
        else:
            try:
                stream = open_regular(self.source)
            except OSError as e:
                raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
        self.stream = stream
        try:
            return self._enter(stream)
        except BaseException:
            stream.close()
            raise

    def _enter(self, stream: BinaryIO) -> Image.Image:
        name = self.name
        try:
            head = stream.read(64)
            stream.seek(0)
        except OSError as e:  # EIO from a failing disk, or a file that cannot be read from the start
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
        if not head:
            raise ImageError(f"{name}: empty file (0 bytes)")
        kind = sniff(head)
        if kind == "text":
            raise ImageError(f"{name}: not an image (the file holds text)")
        if kind not in (None, *READ_FORMATS):
            raise ImageError(f"{name}: {kind} is not a supported input format (supported: {', '.join(READ_FORMATS)})")
        try:
            # Pillow warns about a "decompression bomb" and carries on; here it is a refusal.
            # catch_warnings swaps a process-wide filter list: threads doing it at once
            # would restore each other's copies and leave the filter on for good.
            with _WARNINGS_SWAP, warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self.im = Image.open(stream, formats=READ_FORMATS)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            # Past Pillow's guard, which allow_pixels keeps at or above the cap (where a
            # caller did not raise it, it is the cap in effect): said as the cap's own refusal.
            cap = min(self.max_pixels, Image.MAX_IMAGE_PIXELS or self.max_pixels)
            declared = _declared_pixels(e)
            amount = f"{declared:,} pixels" if declared else f"more than {cap:,} pixels"
            raise TooManyPixels(f"{name}: its header declares {amount}, over the input cap of {cap:,} pixels (--max-pixels); not decoded",
                                declared or cap, at_least=declared is None) from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not a readable image ({kind or 'unrecognised content'}; supported: {', '.join(READ_FORMATS)})") from None
        except Exception as e:
            if "MAX_TEXT_CHUNK" in str(e) or "MAX_TEXT_MEMORY" in str(e):  # a valid file whose metadata Pillow will not inflate
                raise ImageError(f"{name}: its metadata (an ICC profile or text chunk) is larger than Pillow reads "
                                 f"({PngImagePlugin.MAX_TEXT_CHUNK:,} bytes a chunk); save it without that metadata") from None
            raise ImageError(f"{name}: corrupt {kind or 'image'} header ({why(e)})") from None
        try:
            self._check(self.im)
        except BaseException:
            self.im.close()
            raise
        return self.im

    def _check(self, im: Image.Image) -> None:
        w, h = im.size
        # Checked here too: catch_warnings is process-wide, so a concurrent thread may have
        # reset the filter above; this cap does not depend on it.
        if w * h > self.max_pixels:
            raise TooManyPixels(
                f"{self.name}: {w}x{h} ({w * h:,} pixels) exceeds the input cap of {self.max_pixels:,} pixels (--max-pixels); not decoded",
                w * h, w, h,
            )
        if w < 1 or h < 1:
            raise ImageError(f"{self.name}: image has no pixels ({w}x{h})")
        try:
            # is_animated looks at the second frame's header only. n_frames walks them all, and
            # for a TIFF Pillow checks each page against every earlier one: a 4.7 MB file of
            # 60,000 one-pixel pages took 45 s to count (the security review's repro).
            frames = ""
            if im.format != "MPO" and getattr(im, "is_animated", False):  # counted where it is cheap (GIF, WebP)
                frames = "several pages" if im.format == "TIFF" else f"{im.n_frames} frames"
        except Exception as e:
            raise ImageError(f"{self.name}: corrupt {im.format} frame table ({why(e)})") from None
        if im.format == "JPEG" and im.info.get("progressive"):
            scans = _jpeg_scans(self.stream)
            if scans > MOST_JPEG_SCANS:
                raise ImageError(f"{self.name}: progressive JPEG of {scans:,} scans (at most {MOST_JPEG_SCANS} are read; "
                                 "encoders write about 10): each scan costs a pass over the whole image")
        bits = im.tag_v2.get(258, 8) if im.format == "TIFF" else 8  # BitsPerSample: one value, or one per sample
        depth = max(bits) if isinstance(bits, tuple) else bits
        if depth > 8 and im.mode in ("RGB", "RGBA", "RGBX", "CMYK", "LA"):
            # Pillow reads 16-bit colour TIFF samples as 8-bit ones: the output would lose its depth quietly.
            raise ImageError(f"{self.name}: {depth}-bit colour TIFF, which Pillow reads only at 8 bits; save it as a 16-bit PNG to keep its depth")
        if frames:
            raise ImageError(f"{self.name}: {im.format} with {frames}; only still, single images are supported")

    def __exit__(self, *exc) -> None:
        try:
            self.im.close()
            self.stream.close()
        finally:
            self.naming.__exit__(None, None, None)


def _jpeg_scans(stream: BinaryIO) -> int:
    """Start-of-scan markers in a JPEG. Entropy-coded data stuffs every 0xFF byte with a
    0x00, so FF DA is a marker wherever it is (an EXIF thumbnail's scans count too)."""
    at = stream.tell()
    try:
        stream.seek(0)
        count, tail = 0, b""
        while chunk := stream.read(1 << 20):
            count += (tail + chunk).count(b"\xff\xda")
            tail = chunk[-1:]
        return count
    finally:
        stream.seek(at)


def sniff(head: bytes) -> str | None:
    """Name the file type from its first bytes, for error messages; None if unknown."""
    magic = [
        (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
        (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"), (b"BM", "BMP"),
        (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"%PDF", "PDF"), (b"qoif", "QOI"), (b"\xff\x0a", "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"DDS ", "DDS"), (b"icns", "ICNS"), (b"PK\x03\x04", "ZIP archive"),
    ]
    for prefix, kind in magic:
        if head.startswith(prefix):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "AVIF" if brand in (b"avif", b"avis") else "HEIC" if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"hevc") else "ISO media"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PNM"
    text = head.decode("utf-8", "ignore")  # "ignore": the 64-byte cut may split a character
    if b"\x00" in head or len(text) < len(head) - 3 or not all(c.isprintable() or c.isspace() for c in text):
        return None
    return "text"


def why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
