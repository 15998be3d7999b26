"""Image formats and their file suffixes: the one table that decoding, encoding and every
scan of a folder (the batch, training data, evaluation, calibration) read."""

from __future__ import annotations

# Pillow format name -> file suffixes; the first is the one srdeploy writes. These are
# the Pillow plugins tried when a file is opened: nothing else is parsed. MPO (multi-
# picture JPEG from phone cameras) comes through the JPEG plugin as its primary picture.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jpe"),
    "WEBP": (".webp",),
    "BMP": (".bmp", ".dib"),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
}
READ_FORMATS = tuple(SUFFIXES)
READ_SUFFIXES = frozenset(s for suffixes in SUFFIXES.values() for s in suffixes)
# Image files srdeploy cannot read. The batch still picks them up inside folders, so that
# they are reported as failed with the reason rather than silently passed over.
UNREAD_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".psd", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi"})


def is_image_name(name: str) -> bool:
    """Whether a file name has the suffix of an image format srdeploy reads."""
    return "." in name and "." + name.rsplit(".", 1)[1].lower() in READ_SUFFIXES
