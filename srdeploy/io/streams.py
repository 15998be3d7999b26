"""The process's standard streams: one whose reader has left, native code's stderr, and
which file a warning is about.

:class:`PipeSafe` keeps a closed pipe (``srdeploy upscale in/ -o out/ 2>&1 | head``) from
ending or hanging a command. :func:`native_stderr_to` catches what C++ libraries write to
file descriptor 2, which Python's own redirection never sees: ONNX Runtime's log of a GPU
provider that cannot load, Ray's start-up notice. :func:`about_file` names the file a
thread is reading, so that a warning Pillow raises there ("Corrupt EXIF data") can say
which of a batch's files it is about (srdeploy.cli shows warnings).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator


class PipeSafe:
    """A standard stream that may stop taking text: its reader left (``| head``), it is a
    full disk (``> /dev/full``), or it was closed before the start (``>&-``: Python's
    stream is None then). The first write that fails points the stream's descriptor at
    /dev/null, and the command goes on writing into it: raising instead would end a batch
    with a traceback, or, in one of its threads, leave tqdm's lock held and hang it. The
    journal keeps every line the reader did not take."""

    def __init__(self, stream):
        self._stream = stream if stream is not None else open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for the process's life)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._to_devnull()

    def __getattr__(self, name: str):  # fileno, isatty, encoding, ...: the stream's own
        return getattr(self._stream, name)

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)


@contextlib.contextmanager
def native_stderr_to(sink: io.StringIO) -> Iterator[None]:
    """While the block runs, what is written to file descriptor 2 (by native code, and by
    this process's own sys.stderr) goes to ``sink`` instead of the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sink.write(captured.read().decode(errors="replace"))


_reading = threading.local()


@contextlib.contextmanager
def about_file(name: str) -> Iterator[None]:
    """Warnings raised on this thread while the block runs are about the file ``name``."""
    previous = getattr(_reading, "name", None)
    _reading.name = name
    try:
        yield
    finally:
        _reading.name = previous


def file_being_read() -> str | None:
    """The file this thread reads now (see :func:`about_file`), if any."""
    return getattr(_reading, "name", None)
