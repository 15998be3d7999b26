"""What happens to one input of a batch: the steps srdeploy.batch.pipeline runs it through.

    load     (worker)          read, hash, decide whether it is already done, decode
    upscale  (calling thread)  the model
    store    (worker)          encode, write a fsynced temp file beside the target
    commit   (commit thread)   ``writing`` record, rename into place, ``ok`` record, report

A failure of one input (unreadable, corrupt, out of memory, an unwritable target) becomes
a failed :class:`_Outcome` that the later steps pass on to ``commit``, so one bad file
never stops the batch. Crash safety and resume are described in srdeploy.batch.run.

Where outputs go is a place: a :class:`Folder` (a POSIX folder: temp file, journal record,
rename) or a bucket of an object store (srdeploy.batch.stores.Bucket: one PUT that
carries the output's key, which vouches for it). On a Ray cluster
(srdeploy.batch.ray_run) the first three steps run in the actors and ``commit`` on the
driver: the values passed between them are small and picklable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Protocol

from srdeploy.batch import pipeline
from srdeploy.batch.jobs import Job, Result, Settings, failure_reason
from srdeploy.batch.journal import Journal
from srdeploy.io.files import FileTooLarge, read_regular, sha256_file, stage_bytes, temp_files_of
from srdeploy.io.image_guard import most_file_bytes
from srdeploy.io.imaging import DEFAULT_QUALITY, Picture
from srdeploy.runtime.upscaler import Decoded, Upscaler


@dataclass(frozen=True)
class _Item:
    """One input on its way through the pipeline."""

    job: Job
    target: Any  # where its output goes, as the place names it (Folder: a Path)
    started: float  # time.perf_counter() when its reading began
    key: dict  # what its output is made from (input content, model, settings), for the journal
    replacing: str  # a note when it replaces an older output of ours
    found: str | None = None  # what was at the target when writing there was decided: None (nothing), its sha256, or ANY

    def result(self, status: str, reason: str) -> Result:
        return Result(self.job.shown, status, reason, str(self.job.output), time.perf_counter() - self.started)


@dataclass(frozen=True)
class _Outcome(pipeline.Done):
    """An input's final result and its journal fields; the later steps pass it on."""

    result: Result
    extra: dict


@dataclass(frozen=True)
class _Loaded:
    item: _Item
    decoded: Decoded


@dataclass(frozen=True)
class _Upscaled:
    item: _Item
    picture: Picture


@dataclass(frozen=True)
class _Staged:
    item: _Item
    tmp: Path | None  # the fsynced temp file beside the target; None: the place wrote the output whole
    output_sha256: str
    size: tuple[int, int]  # (width, height)


ANY = "any"  # _Item.found under --overwrite: whatever is at the target by then is replaced


class TargetChanged(Exception):
    """The target is no longer as the batch found it: a file appeared there, or another
    took the place of the one it meant to replace. Not the batch's to lose."""


class Place(Protocol):
    """Where a batch's outputs go: a :class:`Folder` or a srdeploy.batch.stores.Bucket."""

    def target(self, output: PurePosixPath) -> Any: ...
    def location(self, target: Any) -> str: ...  # the target as source_identity names an input
    def holds(self, target: Any) -> bool: ...
    def sha256(self, target: Any) -> str | None: ...
    def stage(self, target: Any, data: bytes, key: dict, output_sha256: str, size: tuple[int, int]) -> Path | None: ...  # None: written whole already
    def publish(self, tmp: Path, target: Any, found: str | None) -> None: ...  # TargetChanged: not as found
    def discard(self, tmp: Path) -> None: ...


# errno values of a file system that has no hard links (or not here): publish falls back to a checked rename.
# (EINVAL: what CPython makes of Windows' "Incorrect function" on FAT and SMB; ENOSYS: some FUSE mounts.)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.EINVAL, errno.ENOSYS}


class Folder:
    """A POSIX folder (a local disk, or a mount every node of a cluster shares): outputs are
    staged as fsynced temp files beside their targets and given their names atomically
    after the journal's ``writing`` record (a hard link where the name was free, a rename
    over an output being replaced: :meth:`publish`); the journal vouches for them."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._made: set[Path] = set()  # mirrored subfolders this run created: removed again while empty

    def target(self, output: PurePosixPath) -> Path:
        return self.root / output

    def location(self, target: Path) -> str:
        return os.path.realpath(target)

    def holds(self, target: Path) -> bool:
        self._check_inside(target)
        return target.exists()

    def _check_inside(self, target: Path) -> None:
        """OSError when ``target``'s folder leads out of the output folder (a subfolder that is
        a symbolic link to elsewhere): the output would be written, and an older file there
        replaced, outside OUT."""
        if not self._inside(target.parent):
            raise OSError(0, f"its folder leads out of the output folder, through a symbolic link to {os.path.realpath(target.parent)}")

    def _inside(self, folder: Path) -> bool:
        """Whether ``folder``, links resolved, is the output folder or under it."""
        root = os.path.realpath(self.root)
        return os.path.commonpath([root, os.path.realpath(folder)]) == root

    def sha256(self, target: Path) -> str | None:
        return _sha256_file(target)

    def stage(self, target: Path, data: bytes, key: dict, output_sha256: str, size: tuple[int, int]) -> Path:
        self._check_inside(target)  # again: the folder may have been swapped since holds()
        if not self.root.is_dir():  # deleted or moved during the run: not made again here (the journal stops the batch)
            raise FileNotFoundError(errno.ENOENT, "the output folder is gone")
        folder = target.parent
        while folder != self.root and not folder.exists():
            self._made.add(folder)
            folder = folder.parent
        try:
            return stage_bytes(target, data)
        except BaseException:
            self._remove_if_empty(target.parent)
            raise

    def publish(self, tmp: Path, target: Path, found: str | None) -> None:
        """Rename ``tmp`` onto ``target`` if the target is as the batch found it when it chose
        to write there (``found``: nothing, the file of that sha256, or ANY); else raise
        TargetChanged. Outputs are committed a few inputs after that check, and a file
        someone saved there meanwhile must not be replaced without --overwrite."""
        if found not in (None, ANY) and not os.path.lexists(target):  # ours was deleted meanwhile: the name is free again
            found = None
        if found is None:
            try:
                os.link(tmp, target)  # unlike a rename, fails where the name is taken
            except FileExistsError:
                raise TargetChanged("a file appeared at the output's name during the run") from None
            except OSError as e:
                if e.errno not in NO_HARD_LINKS:
                    raise
                if os.path.lexists(target):  # no hard links here (FAT, some network shares): a narrow window remains
                    raise TargetChanged("a file appeared at the output's name during the run") from None
                os.replace(tmp, target)
                return
            os.unlink(tmp)  # the output has its name; a crash before this leaves a temp file the next run sweeps
            return
        if found != ANY and _sha256_file(target) != found:
            raise TargetChanged("the file at the output's name changed during the run")
        os.replace(tmp, target)

    def discard(self, tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        self._remove_if_empty(tmp.parent)

    def _remove_if_empty(self, folder: Path) -> None:
        """Remove ``folder`` and the folders above it that this run made, while they hold
        nothing: an output that was never written leaves no empty mirror of its folder."""
        while folder in self._made:
            try:
                folder.rmdir()  # fails while anything, another output's temp file included, is in it
            except OSError:
                return
            self._made.discard(folder)
            folder = folder.parent

    def sweep(self, outputs: Iterable[PurePosixPath]) -> None:
        """Remove the temp files a killed run left for these outputs: call it only while
        holding the journal's lock, when none of them can belong to a live writer. Only
        theirs: other writers may be at work in a subfolder (another batch into OUT/sub, an
        export, a checkpoint)."""
        names_by_folder: dict[Path, set[str]] = {}
        for output in outputs:
            names_by_folder.setdefault(self.root / output.parent, set()).add(output.name)
        for folder, names in names_by_folder.items():
            if not self._inside(folder):  # a link out of OUT: not ours to clean
                continue
            for stale in temp_files_of(folder, names):
                stale.unlink(missing_ok=True)


def read_input(source: Path | str, limit: int | None = None) -> bytes:
    """An input's bytes, FileTooLarge past ``limit``: a local file, or an object-store URI
    (srdeploy.batch.stores)."""
    if isinstance(source, Path):
        return read_regular(source, limit)
    from srdeploy.batch import stores  # fsspec, only for URIs

    return stores.read_uri(source, limit)


def source_identity(source: Path | str) -> str:
    """The input as the rerun key names it: the resolved path, or the URI."""
    return str(source.resolve()) if isinstance(source, Path) else source


class InputSteps:
    """The steps of one input (see srdeploy.batch.pipeline): load and store on worker threads,
    upscale on the calling thread, commit on the commit thread in input order. A failure
    of one input becomes a failed _Outcome; only BaseExceptions and a journal that cannot
    be written (raised from ``finish``) get through to stop the batch.

    ``journal`` answers ``last_ok(output, output_sha256)``: the record that vouches for an
    existing output with these bytes (a Journal, or what stands in for it where the
    journal is not at hand)."""

    def __init__(self, upscaler: Upscaler, outputs: Path | Place, settings: Settings, journal: Journal, finish: Callable[[Result, dict], None] | None):
        self.upscaler, self.settings, self.journal = upscaler, settings, journal
        self.place: Place = Folder(outputs) if isinstance(outputs, Path) else outputs
        self.committer = Committer(self.place, journal, finish)
        self.commit, self.discard = self.committer.commit, self.committer.discard

    def as_pipeline(self) -> pipeline.Steps[Job]:
        return pipeline.Steps(self.load, self.upscale, self.store, self.commit, self.discard)

    def through_store(self, job: Job) -> _Staged | _Outcome:
        """load, upscale and store in turn, on this thread: what a cluster's actor does with
        one input before it hands the value to the driver's ``commit``."""
        value: Any = self.load(job)
        for step in (self.upscale, self.store):
            if isinstance(value, pipeline.Done):
                return value
            value = step(value)
        return value

    def load(self, job: Job) -> _Loaded | _Outcome:
        """Read the input, decide whether its output is already done, decode it."""
        item = _Item(job, self.place.target(job.output), time.perf_counter(), {}, "")
        try:
            data = read_input(job.source, most_file_bytes(job.pixels))
        except FileTooLarge as e:
            return _Outcome(item.result("failed", f"the file holds {e.strerror}, more than an image of {job.pixels:,} pixels "
                                                  "and its metadata need; not read"), {})
        except OSError as e:
            return _Outcome(item.result("failed", f"cannot read ({e.strerror or e})"), {})
        except MemoryError:  # an object too big for this process
            return _Outcome(item.result("failed", "too large to read into memory"), {})
        item = replace(item, key=self._key(job, data))
        try:
            exists = self.place.holds(item.target)
        except OSError as e:  # a name too long for the file system, a folder we may not enter
            return _Outcome(item.result("failed", cannot_write(job, e)), item.key)
        if exists:
            checked = self._check_existing(item)
            if isinstance(checked, _Outcome):
                return checked
            item = checked
        if self.settings.overwrite:
            item = replace(item, found=ANY)
        try:
            # The format is chosen again from the bytes read now, as the plan chose it from
            # the header read then: a file replaced in between (a JPEG now where a PNG was)
            # would otherwise be written under the planned name in the new format.
            decoded = self.upscaler.decode(data, job.shown, self.settings.format, self.settings.max_pixels)
        except Exception as e:  # one file must not end the batch; the reason names the cause
            return _Outcome(item.result("failed", failure_reason(e, job.shown)), item.key)
        if decoded.format != job.format:
            return _Outcome(item.result("failed", f"the file changed from {job.format} to {decoded.format} since the batch was planned; nothing written"), item.key)
        return _Loaded(item, decoded)

    def _key(self, job: Job, data: bytes) -> dict:
        """What the output is made from; an existing output with the same key is done."""
        return {
            "source": source_identity(job.source), "input_sha256": hashlib.sha256(data).hexdigest(),
            "model_sha256": self.upscaler.model.sha256, "provider": self.upscaler.provider, "precision": self.upscaler.precision,
            # Each setting counts only where it changes the bytes: other outputs stay done when
            # it changes, and a quality given as its default is the default.
            "format": job.format,
            "quality": self.settings.quality if job.format in DEFAULT_QUALITY and self.settings.quality not in (None, DEFAULT_QUALITY[job.format]) else None,
            "png_compression": self.settings.png_compression if job.format == "PNG" else None,
        }

    def _check_existing(self, item: _Item) -> _Item | _Outcome:
        """An output already at the target: skipped when the journal says we made it from
        this key (or it is not ours and --overwrite is off), else the item, noting when it
        replaces an output of ours made from other input, model or settings."""
        sha = self.place.sha256(item.target)
        made = self.journal.last_ok(str(item.job.output), sha)
        ours = made is not None
        if ours and all(made.get(k) == v for k, v in item.key.items()):
            size = made.get("made_by_this_run")  # set by a Bucket only; a hand-edited journal's is checked too
            if isinstance(size, list) and len(size) == 2 and all(type(n) is int for n in size):  # this input's earlier attempt (a task Ray retried) wrote it whole
                return made_ok(item, made["output_sha256"], size)
            return _Outcome(item.result("skipped", "already done (same input, model, engine and settings)"), item.key)
        if ours and made.get("source") == item.key["source"]:
            return replace(item, replacing=" (replaced: input, model, engine or settings changed)", found=sha)
        if self.settings.overwrite:
            return item
        whose = f"made from {made.get('input')}" if ours else "not made by srdeploy from this input"
        return _Outcome(item.result("skipped", f"output exists ({whose}); --overwrite replaces it"), item.key)

    def upscale(self, loaded: _Loaded) -> _Upscaled | _Outcome:
        """The model, on the calling thread (ONNX Runtime spreads it over the cores)."""
        try:
            picture = self.upscaler.upscale_picture(loaded.decoded.picture)
        except Exception as e:
            return _Outcome(loaded.item.result("failed", failure_reason(e, loaded.item.job.shown)), loaded.item.key)
        return _Upscaled(loaded.item, picture)

    def store(self, upscaled: _Upscaled) -> _Staged | _Outcome:
        """Encode the output and write it to a fsynced temp file beside its target."""
        item = upscaled.item
        try:
            encoded = self.upscaler.encode(upscaled.picture, item.job.format, item.job.note, self.settings.quality, self.settings.png_compression)
        except Exception as e:
            return _Outcome(item.result("failed", failure_reason(e, item.job.shown)), item.key)
        output_sha256 = hashlib.sha256(encoded.data).hexdigest()
        try:
            tmp = self.place.stage(item.target, encoded.data, item.key, output_sha256, (encoded.width, encoded.height))
        except OSError as e:
            return _Outcome(item.result("failed", cannot_write(item.job, e)), item.key)
        except Exception as e:  # a store's own error
            return _Outcome(item.result("failed", failure_reason(e, item.job.shown)), item.key)
        return _Staged(item, tmp, output_sha256, (encoded.width, encoded.height))


class Committer:
    """The last step of each input, in input order: journal it, put it in place, report it."""

    def __init__(self, place: Place, journal: Journal, finish: Callable[[Result, dict], None] | None):
        self.place, self.journal, self.finish = place, journal, finish

    def commit(self, value: _Staged | _Outcome) -> None:
        """Journal the output, rename it into place, report it: in input order."""
        if isinstance(value, _Outcome):
            self.finish(value.result, value.extra)
            return
        item, job = value.item, value.item.job
        try:
            if value.tmp is not None:  # else the place wrote it whole, vouched for by its own key
                # Durable before the rename: a file in place must be vouched for after a power cut.
                self.journal.append({"input": job.shown, "status": "writing", "output": str(job.output), "output_sha256": value.output_sha256, **item.key}, durable=True)
                self.place.publish(value.tmp, item.target, item.found)
        except TargetChanged as e:
            self.discard(value)
            self.finish(item.result("skipped", f"output exists ({e}; not made by srdeploy from this input); --overwrite replaces it"), item.key)
            return
        except Exception as e:  # anything else reaches the pipeline, which discards the temp file
            self.discard(value)
            reason = cannot_write(job, e) if isinstance(e, OSError) else failure_reason(e, job.shown)
            self.finish(item.result("failed", reason), item.key)  # raises again if the journal is what failed
            return
        outcome = made_ok(item, value.output_sha256, value.size)
        self.finish(outcome.result, outcome.extra)

    def discard(self, staged: _Staged) -> None:
        """A stored output the batch stopped before committing: no temp file stays behind."""
        if staged.tmp is not None:
            self.place.discard(staged.tmp)


def made_ok(item: _Item, output_sha256: str, size: tuple[int, int] | list[int]) -> _Outcome:
    """An input whose output is in place: its ``ok`` result and journal fields."""
    width, height = size
    note = f"; {item.job.note}" if item.job.note else ""  # why the format is not the one asked for
    extra = {**item.key, "output_sha256": output_sha256, "size": [width, height]}
    return _Outcome(item.result("ok", f"{width}x{height} {item.job.format}{note}{item.replacing}"), extra)


def cannot_write(job: Job, error: OSError) -> str:
    """Why an output could not be written, naming the output, not a temp file."""
    return f"cannot write the output {job.output} ({error.strerror or error})"


def arrived(value: _Staged | _Outcome, elapsed: float) -> _Staged | _Outcome:
    """A value another process took ``elapsed`` seconds to make, on this process's clock
    (perf_counter is per machine): its result's seconds still run from reading to commit."""
    if isinstance(value, _Staged):
        return replace(value, item=replace(value.item, started=time.perf_counter() - elapsed))
    return value


def elapsed(value: _Staged | _Outcome) -> float:
    """Seconds since the value's input was read, on this process's clock."""
    return time.perf_counter() - value.item.started if isinstance(value, _Staged) else value.result.seconds


def failed(job: Job, error: BaseException) -> _Outcome:
    """An input whose steps raised what they do not catch (on a cluster, where nothing but
    the input may fail): a failed result, with the reason."""
    return _Outcome(Result(job.shown, "failed", failure_reason(error, job.shown), str(job.output)), {})


def is_staged(value: Any) -> bool:
    """Whether ``value`` is an output waiting for ``commit`` (else a final outcome)."""
    return isinstance(value, _Staged)


def _sha256_file(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read (no output there yet)."""
    try:
        return sha256_file(path)
    except OSError:
        return None
