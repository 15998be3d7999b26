"""Files that appear whole or not at all, and their sha256: the one way srdeploy writes.

A file is written to a hidden temp file beside its target (same folder, so same file
system), flushed and fsynced, and only then renamed over the target with os.replace,
which is atomic on POSIX and Windows: a reader, or a run killed at any moment, sees the
old file or the new one, never a truncated one; the folder is fsynced after the rename,
so the new file is there after a power cut too. The batch splits the two halves: it
stages an output, journals it, then renames it (srdeploy.batch.steps); a rename a power
cut undoes there leaves the fsynced temp file, and the rerun redoes that output.

Temp files are named ``.<target name>.<random>.srdeploy-tmp``, so a folder's leftovers
from a killed writer can be found (the batch removes those of its own outputs); a target
name too long for that is cut and told apart by a hash (:func:`temp_stem`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

TMP_SUFFIX = ".srdeploy-tmp"
TOKEN_LENGTH = 8  # hex digits of the random part of a temp file's name
NAME_MAX = 255  # bytes in a file name, on the file systems srdeploy writes to (ext4, xfs, APFS, NTFS)
_ROOM = NAME_MAX - len(".") - len(".") - TOKEN_LENGTH - len(TMP_SUFFIX)  # for the target's name


def temp_stem(name: str) -> str:
    """What a temp file for a target called ``name`` is named up to its random part: the
    name after a dot, or, where that would pass NAME_MAX (a name of 233-255 bytes that is
    itself fine), the name cut to fit with a hash of it, so two long names stay apart."""
    raw = os.fsencode(name)
    if len(raw) <= _ROOM:
        return f".{name}"
    digest = hashlib.sha256(raw).hexdigest()[:8]
    return f".{os.fsdecode(raw[: _ROOM - 1 - len(digest)])}~{digest}"


def temp_path(target: Path) -> Path:
    """A fresh temp file name beside ``target``."""
    return target.parent / f"{temp_stem(target.name)}.{secrets.token_hex(TOKEN_LENGTH // 2)}{TMP_SUFFIX}"


def temp_files_of(folder: Path, names: set[str]) -> list[Path]:
    """The temp files in ``folder`` that stand for a target named in ``names`` (none when
    the folder cannot be listed: a link loop, no permission; writing there fails alone)."""
    stems = {temp_stem(name) for name in names}
    tail = 1 + TOKEN_LENGTH + len(TMP_SUFFIX)  # ".<random>.srdeploy-tmp"
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.name.endswith(TMP_SUFFIX) and e.name[:-tail] in stems and e.name[-tail] == "."]
    except OSError:
        return []


@contextlib.contextmanager
def staged(target: str | os.PathLike) -> Iterator[tuple[BinaryIO, Path]]:
    """Yield ``(file, temp path)`` for a new temp file beside ``target``; on a clean exit
    it is fsynced and closed (and left for the caller to rename), on an error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    # os.open with 0o666 lets the umask decide the mode, as for any file the user writes
    # (tempfile.mkstemp would make it private, 0o600, and TorchServe could not read a model).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stage_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """``data`` in a fsynced temp file beside ``target``; returns its path (rename it with
    os.replace once the caller may)."""
    with staged(target) as (f, tmp):
        f.write(data)
    return tmp


@contextlib.contextmanager
def atomic_writer(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``target``'s new content into; it replaces ``target`` when
    the block ends without an error (for writers that stream: torch.save)."""
    _refuse_special(target)
    with staged(target) as (f, tmp):
        yield f
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(Path(target).parent)


def _refuse_special(target: str | os.PathLike) -> None:
    """OSError when ``target`` is there and is neither a regular file nor a symbolic link."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise OSError(errno.EEXIST, f"not a regular file: {_file_kind(mode)}; it is not replaced", os.fspath(target))


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it outlives a power cut (POSIX; elsewhere, and
    on file systems that refuse it, the rename is atomic but its durability is the OS's)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Replace ``target`` with ``data`` atomically (see the module docstring). An OSError
    where something other than a regular file (or a link) has that name: a rename would
    replace a device such as /dev/null, or a named pipe, with a file."""
    with atomic_writer(target) as f:
        f.write(data)
    return Path(target)


def open_regular(path: str | os.PathLike, append: bool = False) -> BinaryIO:
    """``path`` opened for reading (or, ``append``, created if need be and opened for
    unbuffered appends), refusing anything but a regular file with an OSError whose
    strerror says what it is: a FIFO would block its reader or writer forever and a device
    may never end. Opened non-blocking, so that a FIFO is refused rather than waited on.
    A file opened to append (a journal, a lock) is never reached through a symbolic link:
    whoever could place one would have srdeploy write into the file it points to."""
    if append:
        try:
            mode = os.lstat(path).st_mode  # a FIFO without a reader fails a non-blocking open with ENXIO: say what it is
        except FileNotFoundError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise OSError(0, f"not a regular file: {_file_kind(mode)}", os.fspath(path))
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)) if append else os.O_RDONLY
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0), 0o666)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(0, f"not a regular file: {_file_kind(mode)}", os.fspath(path))
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "ab", buffering=0) if append else os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class FileTooLarge(OSError):
    """A file holds more bytes than the reader's limit; none were kept."""


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`); FileTooLarge past ``limit``
    bytes, found by reading one byte more (the file may have grown since it was listed)."""
    with open_regular(path) as f:
        if limit is None:
            data = f.read()
        else:  # read(n) allocates n bytes up front: ask for no more than the file holds, plus one
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(limit, size) + 1)
            if size < len(data) <= limit:  # it grew since: read on, up to the limit
                data += f.read(limit + 1 - len(data))
    if limit is not None and len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"more than {limit:,} bytes", os.fspath(path))
    return data


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a regular file (anything else is refused: see :func:`open_regular`)."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: Path, name: str, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``: an advisory lock on the file ``folder/name``,
    made if missing and left behind empty. Raises FolderBusy(``busy``) when another process
    holds it, OSError when the file cannot be opened. The OS releases it if the process
    dies. Without advisory locks (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open_regular(Path(folder) / name, append=True) as handle:  # never through a symbolic link
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(busy) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_folder(folder: Path) -> bool:
    """``folder`` and its parents, made where missing; whether this call made ``folder``.
    Raises OSError whose strerror says why not: a file (or a link loop) in the way, a name
    under a file, no permission."""
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # "File exists" of a folder that does exist would puzzle
        raise OSError(e.errno, "it exists and is not a folder", e.filename) from None
    return made


def display(path: os.PathLike | str | None) -> str:
    """A path as printable text, even when its name is not valid UTF-8. Shown text passes
    through unchanged: under an ASCII locale (LC_ALL=C without UTF-8 mode) a name already
    shown holds characters the file system encoding cannot take back to bytes."""
    name = os.fspath(path or "")
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")
