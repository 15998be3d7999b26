"""Upscale files and folders into a mirrored tree, losing nothing.

Every input ends as ``ok``, ``skipped`` or ``failed`` with a one-line reason, printed and
appended to the JSONL journal ``OUT/upscale-journal.jsonl``. One bad file never stops the
batch. Inputs are only read.

Throughput: inputs go through srdeploy.batch.pipeline. Worker threads read and decode the next
inputs and encode and stage finished outputs while the model runs on the calling thread;
one commit thread journals and renames outputs, and reports results, strictly in input
order. At most a few inputs (and a bounded number of output pixels) are in flight; an
input too large for that budget runs alone. Results and journal records appear in input
order; a result's ``seconds`` run from reading its input to its commit, so they overlap.

Crash safety: an output is written to a hidden temp file beside it and fsynced; then a
``writing`` record (with the output's sha256) is appended to the journal and fsynced; then
the temp file is renamed over the output (os.replace, atomic), and the ``ok`` record
follows (fsynced with the other records when the run ends: the ``writing`` record
already vouches for the file). A run killed at any point leaves each output either
absent or complete. On the next run an output counts as done only if the newest journal
record that vouches for the file's sha256 names the same input content, model and
settings; anything else is redone.
The temp files a killed run left for this batch's outputs are removed when the next run
starts (it holds a lock on OUT, so none of them is live; other writers' temp files in
OUT's subfolders are left alone). A run stopped by Ctrl-C or an error it cannot go on from
(an unwritable journal) finishes the commit under way and removes the temp files of the
outputs it did not commit before it raises.
"""

from __future__ import annotations

import errno
import os
import sys
import time
import unicodedata
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from srdeploy.batch import pipeline
from srdeploy.batch.jobs import JOURNAL_NAME, Job, Result, Settings, Summary, failure_reason, walk_tree
from srdeploy.batch.journal import Journal
from srdeploy.batch.steps import Folder, InputSteps, Place, source_identity
from srdeploy.io import imaging
from srdeploy.io.files import display, make_folder, sha256_file
from srdeploy.io.formats import READ_SUFFIXES
from srdeploy.runtime.upscaler import Upscaler

# In flight at once (workers, inputs, pixels: pipeline.Limits). Two worker threads: one
# decodes ahead while the other encodes, each mostly in Pillow/ISA-L code that releases the
# GIL; why these limits: docs/results.md, "Batch throughput".
LIMITS = pipeline.Limits()
BUDGET_BYTES_PER_PIXEL = 3  # the budget's pixels are 8-bit RGB: an input file's bytes count at that rate


def collect(inputs: list[Path | str], recursive: bool, out_dir: Path | str) -> tuple[list[tuple[Path | str, PurePosixPath]], list[tuple[int, Result]], int]:
    """Inputs -> (files with their place under OUT, results decided now, number of
    subfolders not entered because --recursive was not given). Folder contents land
    directly under OUT (``photos/a/b.png`` -> ``OUT/a/b.png``); files by their name. An
    input given as an object-store URI (a str; srdeploy.batch.stores) is listed by the
    same rules, its objects named by URI. Decided now: inputs that are missing or cannot be
    looked at (failed), and a file met a second time under another name (skipped: a
    link to it, or a file inside a folder also given; its output is made once). Each
    comes with its place in the input order: the number of files listed before it."""
    files: list[tuple[Path | str, PurePosixPath]] = []
    decided: list[tuple[int, Result]] = []
    skipped_dirs = 0
    seen: dict[Path | str, Path | str] = {}  # real file -> the name it was first listed by
    out_real = out_dir.resolve() if isinstance(out_dir, Path) else None

    def fail(path: Path | str, reason: str) -> None:
        decided.append((len(files), Result(display(path), "failed", reason)))

    def add(path: Path | str, rel: PurePosixPath) -> None:
        try:
            real = path.resolve() if isinstance(path, Path) else path
        except (OSError, RuntimeError) as e:  # Python < 3.13 raises RuntimeError for a link loop
            fail(path, cannot_look_at(e))
            return
        first = seen.setdefault(real, path)
        if first is not path:
            decided.append((len(files), Result(display(path), "skipped", f"the same file as {display(first)}, upscaled once")))
            return
        files.append((path, rel))

    for given in inputs:
        try:
            kind = "uri" if isinstance(given, str) else "folder" if given.is_dir() else "file" if given.exists() else None
        except OSError as e:  # a parent we may not enter, a name too long for the file system
            fail(given, cannot_look_at(e))
            continue
        if kind == "uri":
            from srdeploy.batch import stores  # fsspec, only for URIs

            listed = stores.find_inputs(given, recursive, out_dir if isinstance(out_dir, str) else None)
            if listed is None:
                fail(given, MISSING)
            else:
                for path, rel in listed[0]:
                    add(path, rel)
                skipped_dirs += listed[1]
        elif kind == "folder":
            unlisted: list[OSError] = []  # os.walk passes over a folder it cannot list unless told
            # Links to folders are followed, each real folder entered once (a link to a parent ends there).
            entered = {given.resolve()}

            def passed_over(root: str, d: str, entered: set[Path] = entered) -> bool:
                real = (Path(root) / d).resolve()
                if real == out_real or real in entered:
                    return True
                entered.add(real)
                return False

            found, unentered = walk_tree(os.walk(given, onerror=unlisted.append, followlinks=True), recursive, passed_over)
            for root, name in found:
                path = Path(root) / name
                add(path, PurePosixPath(path.relative_to(given).as_posix()))
            skipped_dirs += unentered
            for e in unlisted:
                decided.append((len(files), Result(display(Path(e.filename or given)), "failed", f"cannot list this folder ({e.strerror or e}); none of its images were read")))
        elif kind == "file":  # a file, or something else that is there: reading it says why it is refused
            add(given, PurePosixPath(given.name))
        else:
            fail(given, MISSING)
    return files, decided, skipped_dirs


def strays_in_output(inputs: Sequence[Path | str], out_dir: Path | str, recursive: bool, journal: Journal) -> list[Path]:
    """Images inside OUT that no journal record vouches for, when OUT lies inside an input
    folder walked with --recursive. The walk never enters OUT (its files are this tool's
    outputs, which a rerun must not upscale again), so a file a user put there would be
    neither upscaled nor reported, and with --overwrite an output could land on it. Call
    while holding the journal's lock."""
    if not (recursive and isinstance(out_dir, Path)):
        return []
    try:
        out_real = out_dir.resolve()
        inside = any(isinstance(g, Path) and g.is_dir() and out_real != g.resolve() and out_real.is_relative_to(g.resolve()) for g in inputs)
    except (OSError, RuntimeError):  # an input that cannot be looked at: collect has said why
        return []
    if not inside:
        return []
    entered = {out_real}

    def passed_over(root: str, d: str) -> bool:
        real = (Path(root) / d).resolve()
        if real in entered:
            return True
        entered.add(real)
        return False

    found, _ = walk_tree(os.walk(out_dir, followlinks=True), True, passed_over)
    strays = []
    for root, name in found:
        path = Path(root) / name
        try:
            sha = sha256_file(path)
        except OSError:
            sha = None  # unreadable: nothing vouches for it
        if journal.last_ok(path.relative_to(out_dir).as_posix(), sha) is None:
            strays.append(path)
    return strays


def walked_inside_output(inputs: Sequence[Path | str], out_dir: Path | str, recursive: bool) -> list[Path | str]:
    """Input folders (or prefixes) walked with --recursive that lie inside OUT (resolved). The walk skips
    OUT where OUT lies inside an input folder; where an input folder lies inside OUT, an
    output mirrored into it (``-r OUT/in -o OUT`` puts ``in/sub/x.png`` at OUT/in/sub/x.png)
    would be read back as an input by the next run."""
    if not recursive:
        return []
    if isinstance(out_dir, str):  # a bucket: prefixes, compared as paths ("s3://b/out/in" is under "s3://b/out")
        out, folders = PurePosixPath(out_dir), [g.rstrip("/") for g in inputs if isinstance(g, str)]
        return [g for g in folders if PurePosixPath(g) != out and PurePosixPath(g).is_relative_to(out)]
    try:
        out, folders = out_dir.resolve(), [g.resolve() for g in inputs if isinstance(g, Path) and g.is_dir()]
    except (OSError, RuntimeError):  # an input that cannot be looked at: collect has said why
        return []
    return [g for g in folders if g != out and g.is_relative_to(out)]


def stray_result(path: Path, out_dir: Path) -> Result:
    return Result(display(path), "skipped", f"inside the output folder {display(out_dir)}, which is never read as input; move it out of there to upscale it")


def cannot_look_at(error: OSError | RuntimeError) -> str:
    """Why a path could not be looked at, in one line."""
    if isinstance(error, RuntimeError) or getattr(error, "errno", None) == errno.ELOOP:
        return "cannot read (a loop of symbolic links)"
    return f"cannot read ({error.strerror or error})"


def plan(
    files: list[tuple[Path | str, PurePosixPath]], settings: Settings, scale: int, place: Place, headers: list[imaging.ImageInfo | imaging.ImageError] | None = None,
    protected: Sequence[Path] = (), read_back: Sequence[Path | str] = (),
) -> tuple[list[Job], list[tuple[int, Result]]]:
    """Read each header, pick the output format and name, and refuse name collisions
    (the first input in order keeps the name; nothing is overwritten) and outputs that
    would replace an input, its own or another's, or a ``protected`` file (``place``: where
    outputs go). ``headers``: each file's :func:`srdeploy.io.imaging.probe` (or the
    ImageError it raised), already read elsewhere (on a cluster's workers); by default each
    is read here. ``read_back``: input folders (resolved) a rerun walks that outputs may
    land in (:func:`walked_inside_output`); an output there fails. Each refusal comes with
    the file's index in ``files``, as each job does (Job.index)."""
    jobs: list[Job] = []
    failures: list[tuple[int, Result]] = []
    claimed: dict[str, str] = {}
    inputs = {source_identity(path): display(path) for path, _ in [*files, *((p, None) for p in protected)]}
    for i, (path, rel) in enumerate(files):
        shown = display(path)
        try:
            info = imaging.probe(path, shown, settings.max_pixels) if headers is None else headers[i]
            if isinstance(info, imaging.ImageError):
                raise info
            fmt, note = imaging.choose_format(settings.format, info)
            imaging.check_output_size(info, scale, fmt)
        except imaging.ImageError as e:
            failures.append((i, Result(shown, "failed", failure_reason(e, shown))))
            continue
        output = rel.with_suffix(imaging.output_suffix(fmt, rel.suffix))
        location = place.location(place.target(output))
        into = next((d for d in read_back if PurePosixPath(location).is_relative_to(PurePosixPath(d))), None)
        if into is not None:
            failures.append((i, Result(shown, "failed", f"the output {output} would land in the input folder {display(into)}, which a rerun "
                                                        "with --recursive would read it from; choose an -o outside the input folders", str(output))))
            continue
        replaced = inputs.get(location)
        if replaced is not None:
            which = "its input" if replaced == shown else f"the input {replaced}"
            failures.append((i, Result(shown, "failed", f"the output {output} would replace {which}; choose another -o", str(output))))
            continue
        # Case- and Unicode-normalisation-insensitive, as macOS and Windows file systems are.
        key = unicodedata.normalize("NFC", str(output)).casefold()
        if key in claimed:
            failures.append((i, Result(shown, "failed", f"output name {output} is already taken by {claimed[key]}; rename one of them", str(output))))
            continue
        claimed[key] = shown
        jobs.append(Job(path, shown, output, fmt, note, info.width * info.height, i, _file_size(path)))
    return jobs, failures


def run_batch(
    upscaler: Upscaler,
    inputs: list[Path],
    out_dir: Path,
    settings: Settings = Settings(),
    report: Callable[[Result], None] | None = None,
    progress: bool = False,
    limits: pipeline.Limits | None = None,
) -> Summary:
    """Upscale ``inputs`` (files and folders) into ``out_dir``; ``report`` is called once
    per input, in input order, from the pipeline's commit thread. Returns the summary;
    nothing raises for a bad input, only when there is nothing to do (NoInputs, before
    anything is written) or OUT is unusable (ValueError when it is an input folder,
    RuntimeError when locked; OSError when the journal cannot be written). ``limits``: how
    many inputs are in flight at once (default :data:`LIMITS`)."""
    start = time.perf_counter()
    refuse_output_among_inputs(inputs, out_dir)
    files, decided, unentered_dirs = collect(inputs, settings.recursive, out_dir)
    refuse_nothing_to_do(inputs, files, decided, unentered_dirs)
    make_output_folder(out_dir)
    journal = Journal(out_dir / JOURNAL_NAME)
    summary = Summary(journal=journal.path, unentered_dirs=unentered_dirs)

    with journal.lock():
        journal.append({"event": "run", "settings": settings_record(settings), **upscaler.describe()})
        strays = strays_in_output(inputs, out_dir, settings.recursive, journal)
        jobs, refused = plan(files, settings, upscaler.scale, Folder(out_dir), protected=strays,
                             read_back=walked_inside_output(inputs, out_dir, settings.recursive))
        decided += [(len(files), stray_result(path, out_dir)) for path in strays]
        Folder(out_dir).sweep(job.output for job in jobs)  # temp files a killed run left; the lock says none is live
        record = Recorder(journal, summary, report, jobs, decided=decided + refused)
        with progress_bar(len(jobs), len(decided) + len(refused), progress) as bar:

            def finish(result: Result, extra: dict) -> None:
                record(result, **extra)
                bar.update()

            def weight(job: Job) -> int:  # against the pipeline's memory budget, in output pixels
                # Its file is read whole too: a small image with a huge file (trailing data
                # after the image) must not be let in six at a time.
                return job.pixels * upscaler.scale**2 + job.size // BUDGET_BYTES_PER_PIXEL

            steps = InputSteps(upscaler, Folder(out_dir), settings, journal, finish)
            pipeline.run_in_order(jobs, steps.as_pipeline(), limits or LIMITS, weight)
        record.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _file_size(path: Path | str) -> int:
    """A local input's size in bytes (0 for a URI, or when it cannot be read: loading it says why)."""
    try:
        return os.stat(path).st_size if isinstance(path, Path) else 0
    except OSError:
        return 0


def refuse_output_among_inputs(inputs: Sequence[Path | str], out: Path | str) -> None:
    """ValueError when OUT is also an input folder (local) or prefix (a URI)."""
    for given in inputs:
        if isinstance(given, str) or isinstance(out, str):
            same = isinstance(given, str) and isinstance(out, str) and given.rstrip("/") == out.rstrip("/")
        else:
            try:
                same = given.is_dir() and given.resolve() == out.resolve()
            except (OSError, RuntimeError):  # an input that cannot be looked at: collect says why
                same = False
        if same:
            raise ValueError(f"the output folder {display(out)} is also an input folder; choose another -o")


def progress_bar(jobs: int, decided: int, shown: bool):
    """The batch's progress bar (stderr) over every input: ``decided`` of them (missing,
    refused by their headers) have their result before the run starts, so they count as
    done from the start, and the bar ends at the count the summary line gives."""
    from tqdm import tqdm

    return tqdm(total=jobs + decided, initial=decided, unit="img", disable=not shown, file=sys.stderr, dynamic_ncols=True)


def make_output_folder(out_dir: Path) -> None:
    """OUT and its parents, or an OSError that names OUT and says why not."""
    try:
        make_folder(out_dir)
    except OSError as e:
        raise OSError(f"cannot create the output folder {display(out_dir)} ({e.strerror or e})") from None


class NoInputs(ValueError):
    """The inputs hold no image files: nothing to upscale, nothing written."""


MISSING = "no such file or folder"


def refuse_nothing_to_do(inputs: list[Path | str], files: list, decided: list[tuple[int, Result]], unentered_dirs: int) -> None:
    """NoInputs, before anything is written, when the inputs hold no image (a typo in the
    only path is not a batch with one failure: no OUT, no journal, exit 2)."""
    if files:
        return
    if not decided:
        raise NoInputs(nothing_found(inputs, unentered_dirs))
    if all(result.status == "failed" and result.reason == MISSING for _, result in decided):
        raise NoInputs(f"{', '.join(result.input for _, result in decided)}: {MISSING}; nothing written")


def nothing_found(inputs: list[Path | str], unentered_dirs: int) -> str:
    where = ", ".join(display(p) for p in inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
    hint = f"; {unentered_dirs} subfolder(s) not searched: add --recursive" if unentered_dirs else ""
    return f"no images in {where} (looked for {' '.join(sorted(READ_SUFFIXES))}){hint}; nothing written"


class Recorder:
    """Where each input's result goes, in input order: the summary, the journal (its one
    record format) and ``report``.

    Call it once per job's result, in job order (as the pipeline commits them), then
    :meth:`close`. ``decided``: results known before any job runs (missing inputs, refused
    headers), each with its place in the input order (srdeploy.batch.run.collect, plan);
    each is recorded when the jobs ahead of it have been, so that nothing is reported out
    of order."""

    def __init__(self, journal: Journal, summary: Summary, report: Callable[[Result], None] | None, jobs: list[Job], decided: Sequence[tuple[int, Result]] = ()):
        self.journal, self.summary, self.report = journal, summary, report
        self.places = [job.index for job in jobs]
        # Stable: a missing input placed at i comes before the refused file listed at i.
        self.decided = deque(sorted(decided, key=lambda placed: placed[0]))
        self.recorded_jobs = 0

    def __call__(self, result: Result, **extra) -> None:
        self._decided_before(self.places[self.recorded_jobs])
        self.recorded_jobs += 1
        self._record(result, extra)

    def close(self) -> None:
        """Record the decided results after the last job's (every job has been recorded)."""
        self._decided_before(None)

    def _decided_before(self, place: int | None) -> None:
        while self.decided and (place is None or self.decided[0][0] <= place):
            self._record(self.decided.popleft()[1], {})

    def _record(self, result: Result, extra: dict) -> None:
        self.summary.results.append(result)
        self.journal.append({"input": result.input, "status": result.status, "reason": result.reason, "output": result.output, "seconds": round(result.seconds, 3), **extra})
        if self.report:
            self.report(result)


def settings_record(settings: Settings) -> dict:
    return {
        "format": settings.format, "quality": settings.quality, "png_compression": settings.png_compression,
        "recursive": settings.recursive, "overwrite": settings.overwrite, "max_pixels": settings.max_pixels,
    }
