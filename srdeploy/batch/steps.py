"""What happens to one input of a batch: the steps srdeploy.batch.pipeline runs it through.

    load     (worker)          read, hash, decide whether it is already done, decode
    upscale  (calling thread)  the model
    store    (worker)          encode, write a fsynced temp file beside the target
    commit   (commit thread)   ``writing`` record, rename into place, ``ok`` record, report

A failure of one input (unreadable, corrupt, out of memory, an unwritable target) becomes
a failed :class:`_Outcome` that the later steps pass on to ``commit``, so one bad file
never stops the batch. Crash safety and resume are described in srdeploy.batch.run.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from srdeploy.batch import pipeline
from srdeploy.batch.jobs import Job, Result, Settings, failure_reason
from srdeploy.batch.journal import Journal
from srdeploy.io.files import sha256_file, stage_bytes
from srdeploy.io.imaging import Picture
from srdeploy.runtime.upscaler import Decoded, Upscaler


@dataclass(frozen=True)
class _Item:
    """One input on its way through the pipeline."""

    job: Job
    target: Path
    started: float  # time.perf_counter() when its reading began
    key: dict  # what its output is made from (input content, model, settings), for the journal
    replacing: str  # a note when it replaces an older output of ours

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
    tmp: Path  # the fsynced temp file beside the target
    output_sha256: str
    size: tuple[int, int]  # (width, height)


class InputSteps:
    """The steps of one input (see srdeploy.batch.pipeline): load and store on worker threads,
    upscale on the calling thread, commit on the commit thread in input order. A failure
    of one input becomes a failed _Outcome; only BaseExceptions and a journal that cannot
    be written (raised from ``finish``) get through to stop the batch."""

    def __init__(self, upscaler: Upscaler, out_dir: Path, settings: Settings, journal: Journal, finish: Callable[[Result, dict], None]):
        self.upscaler, self.out_dir, self.settings, self.journal, self.finish = upscaler, out_dir, settings, journal, finish

    def as_pipeline(self) -> pipeline.Steps[Job]:
        return pipeline.Steps(self.load, self.upscale, self.store, self.commit, self.discard)

    def load(self, job: Job) -> _Loaded | _Outcome:
        """Read the input, decide whether its output is already done, decode it."""
        item = _Item(job, self.out_dir / job.output, time.perf_counter(), {}, "")
        try:
            if item.target.resolve() == job.source.resolve():
                return _Outcome(item.result("failed", "the output would replace the input; choose another -o"), {})
            data = job.source.read_bytes()
        except OSError as e:
            return _Outcome(item.result("failed", f"cannot read ({e.strerror or e})"), {})
        item = replace(item, key=self._key(job, data))
        if item.target.exists():
            checked = self._check_existing(item)
            if isinstance(checked, _Outcome):
                return checked
            item = checked
        try:
            decoded = self.upscaler.decode(data, job.shown, job.format, self.settings.max_pixels)
        except Exception as e:  # one file must not end the batch; the reason names the cause
            return _Outcome(item.result("failed", failure_reason(e, job.shown)), item.key)
        if decoded.format != job.format:
            return _Outcome(item.result("failed", f"format changed from {job.format} to {decoded.format} after decoding; nothing written"), item.key)
        return _Loaded(item, decoded)

    def _key(self, job: Job, data: bytes) -> dict:
        """What the output is made from; an existing output with the same key is done."""
        return {
            "source": str(job.source.resolve()), "input_sha256": hashlib.sha256(data).hexdigest(),
            "model_sha256": self.upscaler.model.sha256, "provider": self.upscaler.provider, "precision": self.upscaler.precision,
            "format": job.format, "quality": self.settings.quality,
            # Only PNG bytes depend on it: other outputs stay done when it changes.
            "png_compression": self.settings.png_compression if job.format == "PNG" else None,
        }

    def _check_existing(self, item: _Item) -> _Item | _Outcome:
        """An output already at the target: skipped when the journal says we made it from
        this key (or it is not ours and --overwrite is off), else the item, noting when it
        replaces an output of ours made from other input, model or settings."""
        made = self.journal.last_ok(str(item.job.output))
        ours = made is not None and made.get("output_sha256") == _sha256_file(item.target)
        if ours and all(made.get(k) == v for k, v in item.key.items()):
            return _Outcome(item.result("skipped", "already done (same input, model, engine and settings)"), item.key)
        if ours and made.get("source") == item.key["source"]:
            return replace(item, replacing=" (replaced: input, model, engine or settings changed)")
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
            tmp = stage_bytes(item.target, encoded.data)
        except Exception as e:
            return _Outcome(item.result("failed", failure_reason(e, item.job.shown)), item.key)
        return _Staged(item, tmp, hashlib.sha256(encoded.data).hexdigest(), (encoded.width, encoded.height))

    def commit(self, value: _Staged | _Outcome) -> None:
        """Journal the output, rename it into place, report it: in input order."""
        if isinstance(value, _Outcome):
            self.finish(value.result, value.extra)
            return
        item, job = value.item, value.item.job
        try:
            self.journal.append({"input": job.shown, "status": "writing", "output": str(job.output), "output_sha256": value.output_sha256, **item.key})
            os.replace(value.tmp, item.target)
        except Exception as e:  # anything else reaches the pipeline, which discards the temp file
            value.tmp.unlink(missing_ok=True)
            self.finish(item.result("failed", failure_reason(e, job.shown)), item.key)  # raises again if the journal is what failed
            return
        width, height = value.size
        note = f"; {job.note}" if job.note else ""  # why the format is not the one asked for
        extra = {**item.key, "output_sha256": value.output_sha256, "size": [width, height]}
        self.finish(item.result("ok", f"{width}x{height} {job.format}{note}{item.replacing}"), extra)

    def discard(self, staged: _Staged) -> None:
        """A stored output the batch stopped before committing: no temp file stays behind."""
        staged.tmp.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read (no output there yet)."""
    try:
        return sha256_file(path)
    except OSError:
        return None
