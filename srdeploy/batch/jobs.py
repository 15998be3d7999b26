"""What a batch is made of: its settings, the jobs it plans, the result of each input and
the summary. Shared by srdeploy.batch.run (planning, the run) and srdeploy.batch.steps
(what happens to one input)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Callable, Iterable

from srdeploy.io import imaging
from srdeploy.io.files import display
from srdeploy.io.formats import READ_SUFFIXES, UNREAD_SUFFIXES
from srdeploy.runtime.upscaler import ModelOutputError

JOURNAL_NAME = "upscale-journal.jsonl"
# Picked up inside folders (files named explicitly are always tried); the unreadable ones
# too, so that they are reported rather than passed over.
FOLDER_SUFFIXES = READ_SUFFIXES | UNREAD_SUFFIXES


@dataclass(frozen=True)
class Settings:
    """What changes the bytes of an output (format, quality, PNG compression) and how the
    batch behaves."""

    format: str = "same"  # same | png | jpg | webp
    quality: int | None = None  # JPEG/WebP quality 1-100; None = 95 (JPEG) / 90 (WebP)
    recursive: bool = False
    overwrite: bool = False  # replace outputs this tool cannot prove it made from this input
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS
    png_compression: int = imaging.DEFAULT_PNG_COMPRESSION  # 0-9, as srdeploy.io.imaging.encode

    def __post_init__(self) -> None:
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f"png_compression must be a zlib level from 0 to 9, got {self.png_compression}")


@dataclass
class Result:
    input: str  # as displayed
    status: str  # ok | skipped | failed
    reason: str
    output: str | None = None  # path relative to OUT, POSIX style
    seconds: float = 0.0


@dataclass
class Job:
    source: Path | str  # a local path, or an object-store URI (srdeploy.batch.stores)
    shown: str
    output: PurePosixPath  # relative to OUT
    format: str
    note: str | None
    pixels: int  # input width x height, from the header
    index: int = 0  # its place among the batch's listed files (srdeploy.batch.run.plan): the input order
    size: int = 0  # the input file's bytes, read whole when it loads; 0 where not known (a URI)


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    journal: Path | None = None
    unentered_dirs: int = 0  # subfolders passed over without --recursive

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def line(self) -> str:
        done = self.count("ok")
        rate = done / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{done} ok, {self.count('skipped')} skipped, {self.failed} failed of {len(self.results)} "
            f"in {self.seconds:.1f} s ({rate:.2f} images/s upscaled); journal: {display(self.journal)}"
        )


def failure_reason(error: Exception, shown: str) -> str:
    """The one-line reason an input failed. ImageError texts start with the file name,
    which the batch shows separately."""
    if isinstance(error, imaging.ImageError):
        text = str(error)
        return text[len(shown) + 2 :] if text.startswith(f"{shown}: ") else text
    if isinstance(error, MemoryError):
        return "out of memory (try a smaller --tile or --max-pixels)"
    if isinstance(error, ModelOutputError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def walk_tree(tree: Iterable[tuple[str, list[str], list[str]]], recursive: bool, passed_over: Callable[[str, str], bool]) -> tuple[list[tuple[str, str]], int]:
    """The input rules of a folder, for any os.walk-style ``tree`` (top-down, ``dirs``
    pruned in place: os.walk, fsspec's walk): ``(root, name)`` of every file with an image
    suffix in order (sorted, a folder's files before its subfolders), hidden files and
    folders and those ``passed_over(root, dir)`` names (OUT; a folder already entered
    through a link) left out, and the number of subfolders not entered because
    ``recursive`` is off."""
    found: list[tuple[str, str]] = []
    unentered = 0
    for root, dirs, names in tree:
        enter = [d for d in sorted(dirs) if not d.startswith(".") and not passed_over(root, d)]
        if not recursive:
            unentered, enter = len(enter), []
        dirs[:] = enter
        found.extend((root, name) for name in sorted(names) if not name.startswith(".") and PurePath(name).suffix.lower() in FOLDER_SUFFIXES)
        if not recursive:
            break
    return found, unentered
