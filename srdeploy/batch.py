"""Upscale files and folders into a mirrored tree, losing nothing.

Every input ends as ``ok``, ``skipped`` or ``failed`` with a one-line reason, printed and
appended to the JSONL journal ``OUT/upscale-journal.jsonl``. One bad file never stops the
batch. Inputs are only read.

Crash safety: an output is written to a hidden temp file beside it and fsynced; then its
``ok`` record (with the output's sha256) is appended to the journal; then the temp file
is renamed over the output (os.replace, atomic). A run killed at any point leaves each
output either absent or complete. On the next run an output counts as done only if the
journal's last ok record for it matches the file's sha256 *and* the same input content,
model and settings; anything else is redone. Temp files a killed run left are removed
when the next run starts (it holds a lock on OUT, so none of them is live).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from srdeploy import imaging
from srdeploy.journal import Journal, display
from srdeploy.upscaler import Upscaler

JOURNAL_NAME = "upscale-journal.jsonl"
TMP_SUFFIX = ".srdeploy-tmp"
# Suffixes picked up inside folders (files named explicitly are always tried). The
# unsupported ones are listed so that they are reported rather than silently passed over.
IMAGE_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".gif",
    ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".psd", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
}


@dataclass(frozen=True)
class Settings:
    """What changes the bytes of an output (format, quality) and how the batch behaves."""

    format: str = "same"  # same | png | jpg | webp
    quality: int | None = None  # JPEG/WebP quality 1-100; None = 95 (JPEG) / 90 (WebP)
    recursive: bool = False
    overwrite: bool = False  # replace outputs this tool cannot prove it made from this input
    max_pixels: int = imaging.DEFAULT_MAX_PIXELS


@dataclass
class Result:
    input: str  # as displayed
    status: str  # ok | skipped | failed
    reason: str
    output: str | None = None  # path relative to OUT, POSIX style
    seconds: float = 0.0


@dataclass
class Job:
    source: Path
    shown: str
    output: PurePosixPath  # relative to OUT
    format: str
    note: str | None


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


def collect(inputs: list[Path], recursive: bool, out_dir: Path) -> tuple[list[tuple[Path, PurePosixPath]], list[Result], int]:
    """Inputs -> (files with their place under OUT, failures for missing inputs, number of
    subfolders not entered because --recursive was not given). Folder contents land
    directly under OUT (``photos/a/b.png`` -> ``OUT/a/b.png``); files by their name."""
    files: list[tuple[Path, PurePosixPath]] = []
    failures: list[Result] = []
    skipped_dirs = 0
    out_real = out_dir.resolve()
    for given in inputs:
        if given.is_dir():
            for path in _walk(given, recursive, out_real):
                files.append((path, PurePosixPath(path.relative_to(given).as_posix())))
            if not recursive:
                skipped_dirs += sum(1 for p in given.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() != out_real)
        elif given.is_file():
            files.append((given, PurePosixPath(given.name)))
        else:
            failures.append(Result(display(given), "failed", "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for path, rel in files:  # the same file named twice (or inside a folder also given) counts once
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            unique.append((path, rel))
    return unique, failures, skipped_dirs


def _walk(folder: Path, recursive: bool, out_real: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".") and (root_path / d).resolve() != out_real)
        for name in sorted(names):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(root_path / name)
        if not recursive:
            break
    return found


def plan(files: list[tuple[Path, PurePosixPath]], settings: Settings, scale: int) -> tuple[list[Job], list[Result]]:
    """Read each header, pick the output format and name, and refuse name collisions
    (the first input in order keeps the name; nothing is overwritten)."""
    jobs: list[Job] = []
    failures: list[Result] = []
    claimed: dict[str, str] = {}
    for path, rel in files:
        shown = display(path)
        try:
            info = imaging.probe(path, shown, settings.max_pixels)
            fmt, note = imaging.choose_format(settings.format, info)
            imaging.check_output_size(info, scale, fmt)
        except imaging.ImageError as e:
            failures.append(Result(shown, "failed", _reason(e, shown)))
            continue
        output = rel.with_suffix(imaging.output_suffix(fmt, rel.suffix))
        # Case- and Unicode-normalisation-insensitive, as macOS and Windows file systems are.
        key = unicodedata.normalize("NFC", str(output)).casefold()
        if key in claimed:
            failures.append(Result(shown, "failed", f"output name {output} is already taken by {claimed[key]}; rename one of them", str(output)))
            continue
        claimed[key] = shown
        jobs.append(Job(path, shown, output, fmt, note))
    return jobs, failures


def run_batch(
    upscaler: Upscaler,
    inputs: list[Path],
    out_dir: Path,
    settings: Settings = Settings(),
    report: Callable[[Result], None] | None = None,
    progress: bool = False,
) -> Summary:
    """Upscale ``inputs`` (files and folders) into ``out_dir``; ``report`` is called once
    per input as it finishes. Returns the summary; nothing raises for a bad input (only for
    an unusable OUT: ValueError when it is an input folder, RuntimeError when locked)."""
    from tqdm import tqdm

    start = time.perf_counter()
    if any(given.is_dir() and given.resolve() == out_dir.resolve() for given in inputs):
        raise ValueError(f"the output folder {display(out_dir)} is also an input folder; choose another -o")
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(out_dir / JOURNAL_NAME)
    summary = Summary(journal=journal.path)

    def record(result: Result, **extra) -> None:
        summary.results.append(result)
        journal.append({"input": result.input, "status": result.status, "reason": result.reason, "output": result.output, "seconds": round(result.seconds, 3), **extra})
        if report:
            report(result)

    with journal.lock():
        for stale in out_dir.rglob(f".*{TMP_SUFFIX}"):  # left by a killed run; the lock says none is live
            stale.unlink(missing_ok=True)
        journal.append({"event": "run", "settings": _settings_record(settings), **upscaler.describe()})
        files, failures, summary.unentered_dirs = collect(inputs, settings.recursive, out_dir)
        jobs, refused = plan(files, settings, upscaler.scale)
        for result in failures + refused:
            record(result)
        with tqdm(total=len(jobs), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            for job in jobs:
                result, extra = _process(upscaler, job, out_dir, settings, journal)
                record(result, **extra)
                bar.update()
    summary.seconds = time.perf_counter() - start
    return summary


def _process(upscaler: Upscaler, job: Job, out_dir: Path, settings: Settings, journal: Journal) -> tuple[Result, dict]:
    t0 = time.perf_counter()
    target = out_dir / job.output
    source = str(job.source.resolve())

    def result(status: str, reason: str) -> Result:
        return Result(job.shown, status, reason, str(job.output), time.perf_counter() - t0)

    try:
        if target.resolve() == job.source.resolve():
            return result("failed", "the output would replace the input; choose another -o"), {}
        data = job.source.read_bytes()
    except OSError as e:
        return result("failed", f"cannot read ({e.strerror or e})"), {}
    key = {"source": source, "input_sha256": hashlib.sha256(data).hexdigest(), "model_sha256": upscaler.model.sha256, "format": job.format, "quality": settings.quality}
    replacing = ""
    if target.exists():
        made = journal.last_ok(str(job.output))
        ours = made is not None and made.get("output_sha256") == _sha256_file(target)
        if ours and all(made.get(k) == v for k, v in key.items()):
            return result("skipped", "already done (same input, model and settings)"), key
        if ours and made.get("source") == source:
            replacing = " (replaced: input, model or settings changed)"
        elif not settings.overwrite:
            whose = f"made from {made.get('input')}" if ours else "not made by srdeploy from this input"
            return result("skipped", f"output exists ({whose}); --overwrite replaces it"), key
    try:
        encoded = upscaler.upscale_bytes(data, job.shown, job.format, settings.quality, settings.max_pixels)
        if encoded.format != job.format:
            return result("failed", f"format changed from {job.format} to {encoded.format} after decoding; nothing written"), key
        tmp = _stage(target, encoded.data)
        try:
            output_sha = hashlib.sha256(encoded.data).hexdigest()
            journal.append({"input": job.shown, "status": "writing", "output": str(job.output), "output_sha256": output_sha, **key})
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except imaging.ImageError as e:
        return result("failed", _reason(e, job.shown)), key
    except MemoryError:
        return result("failed", "out of memory (try a smaller --tile or --max-pixels)"), key
    except Exception as e:  # one file must not end the batch; the reason names the cause
        return result("failed", f"{type(e).__name__}: {e}"), key
    note = f"; {job.note}" if job.note else ""
    extra = {**key, "output_sha256": output_sha, "size": [encoded.width, encoded.height]}
    return result("ok", f"{encoded.width}x{encoded.height} {job.format}{note}{replacing}"), extra


def _stage(target: Path, data: bytes) -> Path:
    """Write ``data`` to a fsynced temp file beside ``target`` and return its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    # os.open with 0o666 lets the umask decide the mode, as for any file the user writes
    # (tempfile.mkstemp would make every output private, 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sha256_file(path: Path) -> str | None:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def _reason(error: Exception, shown: str) -> str:
    """ImageError texts start with the file name; the batch shows the name separately."""
    text = str(error)
    return text[len(shown) + 2 :] if text.startswith(f"{shown}: ") else text


def _settings_record(settings: Settings) -> dict:
    return {"format": settings.format, "quality": settings.quality, "recursive": settings.recursive, "overwrite": settings.overwrite, "max_pixels": settings.max_pixels}
