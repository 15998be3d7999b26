"""Keep libtiff's own messages off the process's stderr.

Pillow decodes compressed TIFFs (LZW, Deflate, JPEG-in-TIFF) through libtiff, whose default
error and warning handlers print to file descriptor 2 ("tempfile.tif: Using code not yet
in table.", "JPEGLib: Unsupported marker type 0xb8."): lines that no srdeploy code wrote,
between a batch's result lines, and on a server's console for every bad upload. Pillow
does not replace them, and reports the failure itself (a decoder error, which
image_guard turns into the file's one-line reason). So srdeploy sets both handlers to
none, once, on the libtiff that Pillow loaded.

The library is found by the name the process mapped it under (Linux, /proc/self/maps);
where that cannot be read, libtiff keeps its handlers and its messages.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

_silenced = False


def silence() -> None:
    """Turn off libtiff's printing in this process (idempotent; a no-op where Pillow's
    libtiff cannot be found)."""
    global _silenced
    if _silenced:
        return
    _silenced = True
    from PIL import _imaging  # noqa: F401  (maps the libtiff Pillow is linked with)

    for path in _mapped("libtiff"):
        try:
            lib = ctypes.CDLL(path)  # the mapped library itself: dlopen of a loaded path adds a reference
            for setter in (lib.TIFFSetErrorHandler, lib.TIFFSetWarningHandler):
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)
        except (OSError, AttributeError):  # not loadable, or not libtiff's API: leave it as it is
            continue


def _mapped(stem: str) -> list[str]:
    """Paths of the shared libraries this process has mapped whose name starts with ``stem``."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {parts[5] for parts in (line.split(maxsplit=5) for line in lines) if len(parts) == 6}
    return sorted(p for p in paths if Path(p).name.startswith(stem) and ".so" in Path(p).name)
