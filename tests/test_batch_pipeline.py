"""The batch on its pipeline, in-process with a toy ONNX model: results and journal records
in input order while inputs overlap, a bad file in the middle, stopping on Ctrl-C or an
unwritable journal without leaving temp files, and the PNG compression setting."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from onnx_toy import build_toy_sr
from PIL import Image
from test_imaging import bad_inputs
from test_pipeline import pipeline_threads

from srdeploy.batch import pipeline
from srdeploy.batch import steps as batch_steps
from srdeploy.batch.jobs import JOURNAL_NAME, Settings
from srdeploy.batch.journal import Journal
from srdeploy.batch.run import run_batch
from srdeploy.io import imaging
from srdeploy.io.files import TMP_SUFFIX
from srdeploy.runtime.upscaler import Upscaler

OVERLAPPING = pipeline.Limits(workers=2, in_flight=4)


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    return Upscaler(build_toy_sr(tmp_path_factory.mktemp("toy") / "toy.onnx"), provider="cpu")


def make_inputs(folder: Path, count: int, bad: dict[int, bytes] = {}, seed: int = 0) -> list[Path]:
    """``count`` noisy PNGs of varied sizes (so their steps take different times), named in
    order; ``bad`` replaces some of them with the given bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:02d}.png"
        side = int(rng.integers(8, 40))
        Image.fromarray(rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)).save(path)
        if i in bad:
            path.write_bytes(bad[i])
        paths.append(path)
    return paths


def journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines() if line.strip()]


def temp_files(out: Path) -> list[Path]:
    return list(out.rglob(f"*{TMP_SUFFIX}"))


def assert_outputs_vouched_for(out: Path) -> None:
    """Every output present is whole and is the one the journal's last record vouches for."""
    vouched = {r["output"]: r["output_sha256"] for r in journal(out) if r.get("status") in ("writing", "ok")}
    for path in out.glob("*.png"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == vouched[path.name]


def test_a_corrupt_file_in_the_middle_fails_alone_and_everything_stays_in_input_order(upscaler, tmp_path):
    truncated, reason = bad_inputs(np.random.default_rng(0))["truncated.png"]  # passes the header check, fails to decode
    paths = make_inputs(tmp_path / "in", 12, bad={5: truncated})
    out = tmp_path / "out"
    reported = []
    summary = run_batch(upscaler, [tmp_path / "in"], out, report=reported.append, limits=OVERLAPPING)

    names = [p.name for p in paths]
    assert [Path(r.input).name for r in reported] == names  # printed in input order
    assert [r.status for r in reported] == ["ok"] * 5 + ["failed"] + ["ok"] * 6
    assert reason in reported[5].reason
    assert summary.failed == 1 and summary.count("ok") == 11
    # Journal: each output's writing record right before its ok record, inputs in order.
    records = [(r["status"], Path(r["input"]).name) for r in journal(out) if "status" in r]
    expected = []
    for i, name in enumerate(names):
        expected += [("failed", name)] if i == 5 else [("writing", name), ("ok", name)]
    assert records == expected
    assert sorted(p.name for p in out.glob("*.png")) == names[:5] + names[6:]
    assert_outputs_vouched_for(out)
    assert not temp_files(out) and not pipeline_threads()


def test_missing_inputs_and_refused_headers_are_reported_in_their_place_in_input_order(upscaler, tmp_path):
    """They are decided before the pipeline runs, yet are reported where they were given."""
    make_inputs(tmp_path / "in", 5, bad={1: b"shopping list\n", 3: b""})  # refused from the header
    (tmp_path / "b").mkdir()
    make_inputs(tmp_path / "b", 2, seed=3)
    given = [tmp_path / "missing_first.png", tmp_path / "in", tmp_path / "missing_middle.png", tmp_path / "b" / "img_01.png", tmp_path / "missing_last.png"]
    out = tmp_path / "out"
    reported = []
    summary = run_batch(upscaler, given, out, report=reported.append, limits=OVERLAPPING)

    expected = [("missing_first.png", "failed"), *[(f"img_{i:02d}.png", "failed" if i in (1, 3) else "ok") for i in range(5)],
                ("missing_middle.png", "failed"), ("img_01.png", "ok"), ("missing_last.png", "failed")]
    assert [(Path(r.input).name, r.status) for r in reported] == expected
    assert [(Path(r.input).name, r.status) for r in summary.results] == expected
    assert [(Path(r["input"]).name, r["status"]) for r in journal(out) if r.get("status") in ("ok", "failed")] == expected
    assert reported[2].reason == "not an image (the file holds text)" and reported[4].reason == "empty file (0 bytes)"


def test_the_progress_bar_counts_every_input_and_ends_at_the_summary_count(upscaler, tmp_path, capsys):
    """Inputs decided before the run (missing, refused) are done from the start, so the bar
    does not stop at 4/4 when the summary says 'of 7'."""
    make_inputs(tmp_path / "in", 6, bad={1: b"shopping list\n", 3: b""})
    summary = run_batch(upscaler, [tmp_path / "in", tmp_path / "missing.png"], tmp_path / "out", progress=True, limits=OVERLAPPING)

    assert len(summary.results) == 7 and sum(r.status == "ok" for r in summary.results) == 4
    states = capsys.readouterr().err.replace("\r", "\n")
    assert " 3/7 " in states and " 7/7 " in states and "/4 " not in states


def test_a_folder_that_cannot_be_listed_is_reported_not_passed_over(upscaler, tmp_path, monkeypatch):
    """os.walk skips unreadable folders silently. The permission is simulated: tests may run as root."""
    make_inputs(tmp_path / "in", 2)
    make_inputs(tmp_path / "in" / "locked", 2)
    make_inputs(tmp_path / "in" / "open", 1)
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tmp_path / "in" / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    reported = []
    summary = run_batch(upscaler, [tmp_path / "in"], tmp_path / "out", Settings(recursive=True), report=reported.append)
    assert summary.failed == 1 and summary.count("ok") == 3
    locked = next(r for r in reported if r.status == "failed")
    assert locked.input == str(tmp_path / "in" / "locked")
    assert locked.reason == "cannot list this folder (Permission denied); none of its images were read"


def test_overlapped_outputs_equal_one_at_a_time_outputs_and_the_shared_upscaler(upscaler, tmp_path):
    paths = make_inputs(tmp_path / "in", 6, seed=1)
    run_batch(upscaler, [tmp_path / "in"], tmp_path / "overlapped", limits=OVERLAPPING)
    run_batch(upscaler, [tmp_path / "in"], tmp_path / "serial", limits=pipeline.Limits(workers=1, in_flight=1))
    for path in paths:
        overlapped = (tmp_path / "overlapped" / path.name).read_bytes()
        assert overlapped == (tmp_path / "serial" / path.name).read_bytes()
        assert overlapped == upscaler.upscale_bytes(path.read_bytes(), path.name).data


def test_ctrl_c_mid_batch_leaves_no_temp_file_then_a_rerun_resumes(upscaler, tmp_path, monkeypatch):
    make_inputs(tmp_path / "in", 10, seed=2)
    out = tmp_path / "out"
    real_stage, real_upscale = batch_steps.stage_bytes, upscaler.upscale_picture
    calls = []

    def slow_stage(target, data):  # staged temp files wait, uncommitted, when Ctrl-C comes
        tmp = real_stage(target, data)
        time.sleep(0.05)
        return tmp

    def interrupted(picture):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_upscale(picture)

    monkeypatch.setattr(batch_steps, "stage_bytes", slow_stage)
    monkeypatch.setattr(upscaler, "upscale_picture", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(upscaler, [tmp_path / "in"], out, limits=OVERLAPPING)
    assert not temp_files(out) and not pipeline_threads()
    done = sorted(p.name for p in out.glob("*.png"))
    assert done == [f"img_{i:02d}.png" for i in range(len(done))] and len(done) < 6  # an in-order prefix
    assert_outputs_vouched_for(out)

    monkeypatch.undo()
    summary = run_batch(upscaler, [tmp_path / "in"], out, limits=OVERLAPPING)  # the lock was released
    assert [r.status for r in summary.results] == ["skipped"] * len(done) + ["ok"] * (10 - len(done))
    assert len(list(out.glob("*.png"))) == 10 and not temp_files(out)


@pytest.mark.parametrize("gone", ["folder deleted", "folder moved", "journal deleted"])
def test_an_output_folder_deleted_or_moved_mid_run_stops_the_batch(upscaler, tmp_path, gone):
    """Records appended to a journal no longer at its path vouch for nothing a rerun finds:
    the batch stops (exit 1 in the CLI) instead of going on into a detached journal."""
    import shutil

    from srdeploy.batch.journal import JournalError

    make_inputs(tmp_path / "in", 10, seed=4)
    out = tmp_path / "out"

    def after_first(result):
        if result.status == "ok" and out.exists():
            if gone == "folder deleted":  # out of the way at once, then removed: workers may be staging into it meanwhile
                out.rename(tmp_path / "deleted")
                shutil.rmtree(tmp_path / "deleted", ignore_errors=True)
            elif gone == "folder moved":
                out.rename(tmp_path / "moved")
            else:
                (out / JOURNAL_NAME).unlink()

    with pytest.raises(JournalError, match="was deleted, moved or replaced during the run"):
        run_batch(upscaler, [tmp_path / "in"], out, report=after_first, limits=OVERLAPPING)
    assert not pipeline_threads()
    if gone == "folder moved":  # temp files staged before the move went with it: a run into it sweeps them
        assert not out.exists()
        summary = run_batch(upscaler, [tmp_path / "in"], tmp_path / "moved")
        assert not summary.failed and not temp_files(tmp_path / "moved")


def test_an_unwritable_journal_stops_the_batch_without_temp_files(upscaler, tmp_path, monkeypatch):
    make_inputs(tmp_path / "in", 10, seed=3)
    out = tmp_path / "out"
    real_write = Journal._write
    oks = []

    def write(self, f, data, durable):  # the disk fills up as the third ok record goes in
        if b'"status": "ok"' in data:
            oks.append(data)
            if len(oks) == 3:
                raise OSError(28, "No space left on device")
        real_write(self, f, data, durable)

    monkeypatch.setattr(Journal, "_write", write)
    with pytest.raises(OSError) as stopped:
        run_batch(upscaler, [tmp_path / "in"], out, limits=OVERLAPPING)
    assert str(stopped.value) == f"cannot write the journal {out / JOURNAL_NAME} (No space left on device)"  # the line the CLI prints
    assert not temp_files(out) and not pipeline_threads()
    statuses = [(r["status"], Path(r["input"]).name) for r in journal(out) if "status" in r]
    # Two whole commits, the third output's writing record (its file is in place and vouched
    # for), and nothing after it.
    assert statuses == [("writing", "img_00.png"), ("ok", "img_00.png"), ("writing", "img_01.png"), ("ok", "img_01.png"), ("writing", "img_02.png")]
    assert_outputs_vouched_for(out)


def test_each_output_is_vouched_for_on_disk_before_its_rename_and_every_record_by_the_end(upscaler, tmp_path, monkeypatch):
    """What a power cut may keep: at each rename, the journal's fsynced part already holds
    that output's writing record; when the run ends, every record is fsynced."""
    make_inputs(tmp_path / "in", 5, seed=6)
    out = tmp_path / "out"
    synced = [0]  # the journal's length at its last fsync
    real_fsync, real_publish = os.fsync, batch_steps.Folder.publish

    def fsync(fd):
        journal_file = (out / JOURNAL_NAME).stat()
        if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) == (journal_file.st_ino, journal_file.st_dev):
            synced[0] = journal_file.st_size
        real_fsync(fd)

    def publish(self, tmp, target, found):
        on_disk = (out / JOURNAL_NAME).read_bytes()[: synced[0]].decode()
        assert f'"status": "writing", "output": "{target.name}"' in on_disk
        real_publish(self, tmp, target, found)

    monkeypatch.setattr("srdeploy.batch.journal.os.fsync", fsync)
    monkeypatch.setattr(batch_steps.Folder, "publish", publish)
    summary = run_batch(upscaler, [tmp_path / "in"], out, limits=OVERLAPPING)
    assert summary.count("ok") == 5
    assert synced[0] == (out / JOURNAL_NAME).stat().st_size
    assert [r["status"] for r in journal(out) if "status" in r] == ["writing", "ok"] * 5


def test_png_compression_changes_bytes_not_pixels_and_counts_only_for_png_outputs(upscaler, tmp_path):
    src = tmp_path / "in"
    make_inputs(src, 1, seed=4)
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / "photo.jpg", quality=90)
    out = tmp_path / "out"
    run_batch(upscaler, [src], out)
    default_png = (out / "img_00.png").read_bytes()

    fast = run_batch(upscaler, [src], out, Settings(png_compression=0))
    status = {Path(r.input).name: (r.status, r.reason) for r in fast.results}
    with Image.open(src / "img_00.png") as im:
        width, height = im.size
    assert status["img_00.png"] == ("ok", f"{4 * width}x{4 * height} PNG (replaced: input, model, engine or settings changed)")
    assert status["photo.jpg"] == ("skipped", "already done (same input, model, engine and settings)")  # JPEG bytes do not depend on it
    stored = (out / "img_00.png").read_bytes()
    assert len(stored) > len(default_png)  # level 0 stores the deflate blocks uncompressed
    assert np.array_equal(imaging.decode(stored, "a").color, imaging.decode(default_png, "b").color)

    again = run_batch(upscaler, [src], out, Settings(png_compression=0))
    assert [r.status for r in again.results] == ["skipped", "skipped"]
    run_batch(upscaler, [src], tmp_path / "elsewhere", Settings(png_compression=0))
    assert (tmp_path / "elsewhere" / "img_00.png").read_bytes() == stored  # same settings, same bytes
    assert journal(out)[-3]["settings"]["png_compression"] == 0


def test_quality_counts_only_for_jpeg_and_webp_outputs_and_its_default_is_the_default(upscaler, tmp_path):
    src = tmp_path / "in"
    make_inputs(src, 1, seed=6)
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / "photo.jpg", quality=90)
    out = tmp_path / "out"
    run_batch(upscaler, [src], out)

    def statuses(settings: Settings) -> dict[str, str]:
        return {Path(r.input).name: r.status for r in run_batch(upscaler, [src], out, settings).results}

    assert statuses(Settings(quality=95)) == {"img_00.png": "skipped", "photo.jpg": "skipped"}  # 95 is JPEG's default
    assert statuses(Settings(quality=50)) == {"img_00.png": "skipped", "photo.jpg": "ok"}  # PNG bytes do not depend on it
    assert statuses(Settings(quality=50)) == {"img_00.png": "skipped", "photo.jpg": "skipped"}


def test_png_compression_is_a_zlib_level():
    with pytest.raises(ValueError, match="zlib level from 0 to 9"):
        Settings(png_compression=10)


def test_a_run_killed_before_its_rename_leaves_the_older_output_ours_and_the_rerun_redoes_it(upscaler, tmp_path, monkeypatch):
    """The journal's newest record for an output can vouch for bytes that never reached it
    (written, then the run died before the rename): the file is still the one an older
    record vouches for, so the rerun replaces it without --overwrite."""
    src, out = tmp_path / "in", tmp_path / "out"
    (photo,) = make_inputs(src, 1, seed=7)
    run_batch(upscaler, [src], out)
    first = (out / photo.name).read_bytes()
    make_inputs(src, 1, seed=8)  # the input changes

    def die(self, tmp, target):  # as a kill between the writing record and the rename
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(batch_steps.Folder, "publish", die)
    assert run_batch(upscaler, [src], out).count("failed") == 1
    assert (out / photo.name).read_bytes() == first and journal(out)[-2]["status"] == "writing"

    monkeypatch.undo()
    (result,) = run_batch(upscaler, [src], out).results
    assert result.status == "ok" and "replaced: input, model, engine or settings changed" in result.reason, result
    assert (out / photo.name).read_bytes() != first


def test_an_input_file_far_larger_than_its_pixels_weighs_its_bytes_against_the_budget(upscaler, tmp_path, monkeypatch):
    """An 8x8 PNG followed by 3 MB of other data (which decoders ignore) is read whole: its
    weight counts those bytes, so it runs alone under a budget the pixels alone fit."""
    paths = make_inputs(tmp_path / "in", 4, seed=6)
    with open(paths[1], "ab") as f:
        f.write(bytes(3 * 2**20))
    weighed = {}
    real_run = pipeline.run_in_order

    def run_in_order(jobs, steps, limits, weight):
        weighed.update({Path(job.source).name: weight(job) for job in jobs})
        real_run(jobs, steps, limits, weight)

    monkeypatch.setattr(pipeline, "run_in_order", run_in_order)
    summary = run_batch(upscaler, [tmp_path / "in"], tmp_path / "out", limits=pipeline.Limits(workers=2, in_flight=4, budget=2**20))
    assert [r.status for r in summary.results] == ["ok"] * 4
    assert weighed["img_01.png"] > 2**20 > sum(w for name, w in weighed.items() if name != "img_01.png")


def test_a_file_replaced_by_another_format_after_the_plan_fails_alone(upscaler, tmp_path, monkeypatch):
    # The plan names a.png's output from its PNG header; a JPEG written there before it
    # is loaded was upscaled as JPEG into the name a.png (the check compared the planned
    # format with itself).
    from srdeploy.batch import run as batch_run

    make_inputs(tmp_path / "in", 2)
    first = sorted((tmp_path / "in").glob("*.png"))[0]
    real_plan = batch_run.plan

    def plan_then_replace(*args, **kwargs):
        planned = real_plan(*args, **kwargs)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(first, format="JPEG")
        return planned

    monkeypatch.setattr(batch_run, "plan", plan_then_replace)
    summary = batch_run.run_batch(upscaler, [tmp_path / "in"], tmp_path / "out")
    assert [r.status for r in summary.results] == ["failed", "ok"]
    assert summary.results[0].reason == "the file changed from PNG to JPEG since the batch was planned; nothing written"
    assert not (tmp_path / "out" / first.name).exists()


def test_an_output_a_recursive_prefix_inside_out_would_read_back_fails_on_a_bucket_too():
    """-r s3://b/out/in -o s3://b/out: in/in/b.png would land at s3://b/out/in/b.png, under the input prefix."""
    from pathlib import PurePosixPath

    from srdeploy.batch.run import plan, walked_inside_output

    class Prefix:  # the two things plan asks of a bucket
        def target(self, output):
            return f"s3://b/out/{output}"

        def location(self, target):
            return target

    info = imaging.ImageInfo("x", "PNG", 8, 8, has_alpha=False, depth=8, gray=False)
    files = [("s3://b/out/in/a.png", PurePosixPath("a.png")), ("s3://b/out/in/in/b.png", PurePosixPath("in/b.png"))]
    read_back = walked_inside_output(["s3://b/out/in/"], "s3://b/out", recursive=True)
    assert read_back == ["s3://b/out/in"] and walked_inside_output(["s3://b/out/in"], "s3://b/out", recursive=False) == []
    assert walked_inside_output(["s3://b/output2"], "s3://b/out", recursive=True) == []  # a sibling prefix, not inside
    jobs, refused = plan(files, Settings(recursive=True), 4, Prefix(), [info, info], read_back=read_back)
    assert [job.shown for job in jobs] == ["s3://b/out/in/a.png"]
    assert [r.reason.split(",")[0] for _, r in refused] == ["the output in/b.png would land in the input folder s3://b/out/in"]
