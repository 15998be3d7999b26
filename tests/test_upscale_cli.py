"""`srdeploy upscale` run as a subprocess: examples/, the bad-input corpus, kill -9 and
resume, reruns, mirrored trees with awkward names, provider errors, and a torch-free
runtime."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from conftest import EXAMPLES, SRDEPLOY
from onnx_toy import build_toy_sr
from PIL import Image
from test_imaging import bad_inputs

from srdeploy.batch.jobs import JOURNAL_NAME
from srdeploy.io import imaging
from srdeploy.io.files import TMP_SUFFIX, temp_path
from srdeploy.runtime.upscaler import Upscaler


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_sr(tmp_path_factory.mktemp("toy") / "toy.onnx")


def upscale(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SRDEPLOY), "upscale", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines() if line.strip()]


def outputs(out: Path) -> dict[str, Path]:
    """Visible files under OUT except the journal."""
    return {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != JOURNAL_NAME}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(f"*{TMP_SUFFIX}")]


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def wait_for_ok_records(proc: subprocess.Popen, out: Path, count: int, timeout: float) -> None:
    """Until OUT's journal holds ``count`` ok records, the process ends, or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / JOURNAL_NAME).exists() and (out / JOURNAL_NAME).read_text(encoding="utf-8").count('"status": "ok"') >= count:
            return
        time.sleep(0.01)


def interrupt_after_ok_records(args: list[str], out: Path, count: int, timeout: float, **popen) -> tuple[int, str]:
    """Start ``args``, send Ctrl-C (SIGINT) once OUT's journal holds ``count`` ok records,
    and return the exit code and stderr; the process never outlives the call."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    try:
        wait_for_ok_records(proc, out, count, timeout)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def test_examples_folder_is_the_main_job(toy, tmp_path):
    before = fingerprint(EXAMPLES)
    out = tmp_path / "upscaled"
    run = upscale(EXAMPLES, "-o", out, "--model", toy)
    assert run.returncode == 0, run.stderr
    made = outputs(out)
    assert sorted(made) == ["astronaut_face.png", "camera_gray.png", "chelsea_cat.jpg", "coffee.png"]
    sizes = {name: Image.open(path).size for name, path in made.items()}
    assert sizes == {"astronaut_face.png": (256, 256), "camera_gray.png": (384, 384), "chelsea_cat.jpg": (448, 300), "coffee.png": (480, 320)}
    assert Image.open(made["camera_gray.png"]).mode == "L"  # grey stays grey
    assert "4 ok, 0 skipped, 0 failed of 4" in run.stderr and re.search(r"provider (cpu|openvino) (fp32|bf16) \(auto: ", run.stderr)
    assert run.stdout.count("ok      ") == 4
    # The CLI writes exactly what the shared Upscaler (and so the TorchServe handler) returns.
    up = Upscaler(toy)  # what the CLI runs: auto
    for name, path in made.items():
        assert path.read_bytes() == up.upscale_bytes((EXAMPLES / name).read_bytes(), name).data
    records = journal(out)
    assert records[0]["event"] == "run" and (records[0]["provider"], records[0]["precision"]) == (up.provider, up.precision)
    assert sorted(r["output"] for r in records if r.get("status") == "ok") == sorted(made)
    assert fingerprint(EXAMPLES) == before  # inputs untouched


def test_the_progress_bar_is_drawn_on_a_terminal_only(toy, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns: the bar's width
    try:
        proc = subprocess.run([str(SRDEPLOY), "upscale", str(EXAMPLES), "-o", str(tmp_path / "out"), "--model", str(toy)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary, timeout=120)
        os.close(secondary)
        seen = b""
        while True:  # what the terminal got; EIO once the child's side is closed
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0 and b"4/4 [" in seen and b"4 ok, 0 skipped, 0 failed of 4" in seen


def test_the_default_model_is_the_shipped_srresnet(tmp_path):
    from srdeploy.runtime import zoo

    run = upscale(EXAMPLES / "coffee.png", "-o", tmp_path / "out")
    if "srresnet" in zoo.shipped_models():
        sha = zoo.resolve_model("srresnet").sha256
        assert run.returncode == 0 and run.stderr.startswith(f"model srresnet (sha256 {sha[:12]}), x4,"), run.stderr
        assert Image.open(tmp_path / "out" / "coffee.png").size == (480, 320)
    else:  # a build without it says so
        assert run.returncode == 2
        assert "model 'srresnet' (default = srresnet) is not shipped in this build" in run.stderr
        assert not (tmp_path / "out").exists()


def test_bad_inputs_fail_one_by_one_and_good_files_still_succeed(toy, tmp_path):
    src = tmp_path / "in"
    corpus = bad_inputs(np.random.default_rng(0))
    for name, (data, _) in corpus.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    rng = np.random.default_rng(1)
    save(src / "good_a.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    save(src / "good_b.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    before = fingerprint(src)
    out = tmp_path / "out"
    run = upscale(src, "-o", out, "--model", toy)
    assert run.returncode == 1
    assert sorted(outputs(out)) == ["good_a.png", "good_b.jpg"]
    failed = {r["input"]: r["reason"] for r in journal(out) if r.get("status") == "failed"}
    assert set(failed) == {str(src / name) for name in corpus}
    for name, (_, reason) in corpus.items():
        assert reason in failed[str(src / name)]
        assert f"failed  {src / name}: " in run.stderr  # one printed line per bad file
    assert f"2 ok, 0 skipped, {len(corpus)} failed of {len(corpus) + 2}" in run.stderr
    # srdeploy's lines only: no library prints its own (libtiff on the corrupt TIFF did), and
    # no progress bar's redraws in what is not a terminal
    assert "\r" not in run.stderr
    assert all(line.startswith(("model ", "failed  ", "ok ", "2 ok,")) for line in run.stderr.splitlines()), run.stderr
    assert not temp_files(out)
    assert fingerprint(src) == before


def test_a_model_that_computes_nan_fails_each_input_in_one_line_and_writes_nothing(tmp_path):
    # NaN cast to uint8 gave black pixels, a RuntimeWarning and exit 0.
    broken = build_toy_sr(tmp_path / "broken.onnx", broken=True)
    src = tmp_path / "in"
    save(src / "a.png", np.full((12, 16, 3), 128, np.uint8))
    out = tmp_path / "out"
    run = upscale(src, "-o", out, "--model", broken)
    assert run.returncode == 1, run.stderr
    assert f"failed  {src / 'a.png'}: the model's output holds NaN values" in run.stderr
    assert "Warning" not in run.stderr and not outputs(out) and not temp_files(out)


def test_names_at_the_file_systems_limit(toy, tmp_path):
    """A 240-byte name is upscaled (its temp file's name is cut to fit), a name whose
    output would pass 255 bytes (.jpg -> .webp) fails alone, naming the output."""
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(12)
    long_png, too_long = "y" * 236 + ".png", "x" * 251 + ".jpg"
    for name in (long_png, too_long, "ok.jpg"):
        save(src / name, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    run = upscale(src, "-o", out, "--model", toy, "--format", "webp")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"failed  {src / too_long}: cannot write the output {'x' * 251}.webp (File name too long)" in run.stderr
    assert sorted(outputs(out)) == ["ok.webp", "y" * 236 + ".webp"] and not temp_files(out)


def test_a_run_removes_the_temp_files_a_killed_run_left_for_its_outputs_and_no_others(toy, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    stale = temp_path(out / "a.png")  # as a killed run of this batch left it
    live = temp_path(out / "ckpt" / "last.pt")  # another writer's, at work in a subfolder
    for path in (stale, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert upscale(src, "-o", out, "--model", toy).returncode == 0
    assert not stale.exists() and live.read_bytes() == b"partial"


def test_kill_9_mid_batch_then_rerun_completes_with_no_partial_file(toy, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(2)
    names = [f"img_{i:02d}.png" for i in range(24)]
    for name in names:  # noise compresses badly: big outputs, slow enough to kill mid-run
        save(src / name, rng.integers(0, 256, (160, 160, 3), dtype=np.uint8))
    proc = subprocess.Popen([str(SRDEPLOY), "upscale", str(src), "-o", str(out), "--model", str(toy), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_ok_records(proc, out, 3, timeout=60)
        proc.send_signal(signal.SIGKILL)
    finally:  # also when the wait fails: no batch left running
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed; make it longer"
    survivors = outputs(out)
    assert 3 <= len(survivors) < len(names)
    for name, path in survivors.items():  # whatever exists is whole
        assert imaging.decode(path.read_bytes(), name).size == (640, 640)

    rerun = upscale(src, "-o", out, "--model", toy)
    assert rerun.returncode == 0, rerun.stderr
    made = outputs(out)
    assert sorted(made) == names
    assert not temp_files(out)
    this_run = [r for r in journal(out) if r.get("run") == journal(out)[-1]["run"] and r.get("status") in ("ok", "skipped")]
    statuses = {Path(r["input"]).name: r["status"] for r in this_run}
    assert {n for n, s in statuses.items() if s == "skipped"} == set(survivors)
    assert {n for n, s in statuses.items() if s == "ok"} == set(names) - set(survivors)
    # The journal vouches for every output with its exact bytes.
    vouched = {}
    for record in journal(out):
        if record.get("status") in ("writing", "ok") and record.get("output_sha256"):
            vouched[record["output"]] = record["output_sha256"]
    assert {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in made.items()} == vouched
    up = Upscaler(toy)  # what the CLI runs: auto
    for name in (names[0], names[-1]):
        assert made[name].read_bytes() == up.upscale_bytes((src / name).read_bytes(), name).data


def test_ctrl_c_mid_batch_exits_130_with_one_line_and_no_temp_file(toy, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(3)
    for i in range(24):
        save(src / f"img_{i:02d}.png", rng.integers(0, 256, (160, 160, 3), dtype=np.uint8))
    code, err = interrupt_after_ok_records([str(SRDEPLOY), "upscale", str(src), "-o", str(out), "--model", str(toy), "--quiet"], out, 3, timeout=60)
    assert code == 130, "the batch finished before Ctrl-C; make it longer" if code == 0 else err
    assert err.strip() == "interrupted: every output written so far is whole and journalled; the same command resumes"
    assert not temp_files(out) and 3 <= len(outputs(out)) < 24


def test_rerun_skips_done_work_redoes_changed_inputs_and_protects_foreign_files(toy, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png", "c.png"):
        save(src / name, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    assert upscale(src, "-o", out, "--model", toy).returncode == 0
    again = upscale(src, "-o", out, "--model", toy)
    assert again.returncode == 0 and again.stdout.count("already done (same input, model, engine and settings)") == 3

    save(src / "a.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))  # changed content
    changed = upscale(src, "-o", out, "--model", toy)
    assert "a.png -> a.png: 48x48 PNG (replaced: input, model, engine or settings changed)" in changed.stdout
    assert changed.stdout.count("already done") == 2

    (out / "c.png").write_bytes(b"the user's own file")  # not ours: never clobbered silently
    kept = upscale(src, "-o", out, "--model", toy)
    assert kept.returncode == 0 and "output exists (not made by srdeploy from this input); --overwrite replaces it" in kept.stdout
    assert (out / "c.png").read_bytes() == b"the user's own file"
    forced = upscale(src, "-o", out, "--model", toy, "--overwrite")
    assert forced.returncode == 0 and Image.open(out / "c.png").size == (48, 48)

    webp = upscale(src, "-o", out, "--model", toy, "--format", "webp", "--quality", "60")
    assert webp.returncode == 0 and sorted(p.name for p in out.glob("*.webp")) == ["a.webp", "b.webp", "c.webp"]


def test_an_output_never_lands_on_an_input_even_with_overwrite_into_the_inputs_folder(toy, tmp_path):
    """``photos/*`` into photos/ itself: a.gif's output a.png would be the input a.png."""
    photos = tmp_path / "photos"
    rng = np.random.default_rng(11)
    save(photos / "a.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").convert("P").save(photos / "a.gif")
    save(photos / "c.jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    before = fingerprint(photos)
    run = upscale(photos / "a.gif", photos / "a.png", photos / "c.jpg", "-o", photos, "--model", toy, "--overwrite", "--format", "png")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert f"failed  {photos / 'a.gif'}: the output a.png would replace the input {photos / 'a.png'}; choose another -o" in run.stderr
    assert f"failed  {photos / 'a.png'}: the output a.png would replace its input; choose another -o" in run.stderr
    assert {name: print_ for name, print_ in fingerprint(photos).items() if name in before} == before
    assert Image.open(photos / "c.png").size == (32, 32)


def test_images_a_user_left_in_an_output_folder_inside_the_inputs_are_reported_and_never_replaced(toy, tmp_path):
    # -r IN -o IN/sub: the walk passes over OUT (its files are outputs), so a user's image
    # there was neither upscaled nor reported, and --overwrite replaced it with an output.
    src = tmp_path / "in"
    rng = np.random.default_rng(3)
    save(src / "a.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    mine = save(src / "sub" / "a.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    kept = mine.read_bytes()
    run = upscale("-r", src, "-o", src / "sub", "--model", toy, "--overwrite")
    assert run.returncode == 1, run.stderr
    assert f"skipped {mine}: inside the output folder {src / 'sub'}, which is never read as input" in run.stdout
    assert f"failed  {src / 'a.png'}: the output a.png would replace the input {mine}" in run.stderr
    assert mine.read_bytes() == kept and "0 ok, 1 skipped, 1 failed of 2" in run.stderr
    # The tool's own outputs there are not strays: a rerun passes over them without a word.
    (src / "a.png").rename(src / "b.png")
    first = upscale("-r", src, "-o", src / "sub", "--model", toy)
    again = upscale("-r", src, "-o", src / "sub", "--model", toy)
    assert first.returncode == again.returncode == 0 and (src / "sub" / "b.png").is_file()
    assert str(src / "sub" / "b.png") not in again.stdout + again.stderr
    assert "0 ok, 2 skipped, 0 failed of 2" in again.stderr and mine.read_bytes() == kept


def test_an_output_that_would_land_in_a_recursive_input_folder_inside_out_fails(toy, tmp_path):
    # -r OUT/in -o OUT: in/in/b.png mirrors to OUT/in/b.png, inside the input folder, where
    # the next run would read it back as an input (and upscale it again, 16x in all).
    nest = tmp_path / "nest"
    rng = np.random.default_rng(9)
    save(nest / "in" / "a.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    save(nest / "in" / "in" / "b.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    for _ in range(2):  # the rerun finds nothing new to read
        run = upscale("-r", nest / "in", "-o", nest, "--model", toy)
        assert run.returncode == 1 and "0 failed" not in run.stderr, run.stderr
        assert f"failed  {nest / 'in' / 'in' / 'b.png'}: the output in/b.png would land in the input folder {nest / 'in'}" in run.stderr
        assert sorted(p.relative_to(nest).as_posix() for p in nest.rglob("*.png")) == ["a.png", "in/a.png", "in/in/b.png"]


def test_recursive_follows_links_to_folders_each_real_folder_once(toy, tmp_path):
    src = tmp_path / "in"
    save(src / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    save(tmp_path / "elsewhere" / "b.png", np.ones((8, 8, 3), dtype=np.uint8))
    (src / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / "again").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # the same folder twice
    (src / "loop").symlink_to(src, target_is_directory=True)  # a cycle
    run = upscale(src, "-o", tmp_path / "out", "--model", toy, "--recursive", timeout=60)
    assert run.returncode == 0, run.stderr
    assert sorted(outputs(tmp_path / "out")) == ["a.png", "again/b.png"]  # sorted: "again" before "linked"


def test_mirrored_tree_unicode_names_collisions_and_hidden_files(toy, tmp_path):
    src = tmp_path / "photos"
    rng = np.random.default_rng(4)
    pixels = lambda: rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)  # noqa: E731
    save(src / "a.png", pixels())
    save(src / "a.jpg", pixels())
    save(src / "trip" / "Zoë 日本 ñ.png", pixels())
    save(src / "trip" / "ZOË 日本 Ñ.png", pixels())  # the same name on macOS, Windows and SMB
    save(src / "trip" / "deeper" / "x.webp", rng.integers(0, 256, (10, 14, 4), dtype=np.uint8))
    save(src / ".thumbnails" / "t.png", pixels())
    save(src / "trip" / ".hidden.png", pixels())
    (src / "readme.txt").write_text("not an image, not picked up")
    out = src / "upscaled"  # OUT inside the input folder must not be fed back in

    flat = upscale(src, "-o", tmp_path / "flat", "--model", toy)
    assert "1 subfolder(s) not searched; add --recursive" in flat.stderr
    assert set(outputs(tmp_path / "flat")) == {"a.png", "a.jpg"}

    run = upscale(src, "-o", out, "--model", toy, "--recursive", "--format", "png")
    assert run.returncode == 1, run.stderr  # the collision
    assert set(outputs(out)) == {"a.png", "trip/deeper/x.png", "trip/ZOË 日本 Ñ.png"}
    assert f"failed  {src / 'a.png'}: output name a.png is already taken by {src / 'a.jpg'}; rename one of them" in run.stderr
    assert f"failed  {src / 'trip' / 'Zoë 日本 ñ.png'}: output name trip/Zoë 日本 ñ.png is already taken by {src / 'trip' / 'ZOË 日本 Ñ.png'}" in run.stderr
    assert Image.open(out / "trip" / "deeper" / "x.png").mode == "RGBA"
    records = journal(out)
    assert any(r.get("output") == "trip/ZOË 日本 Ñ.png" and r["status"] == "ok" for r in records)  # readable UTF-8

    again = upscale(src, "-o", out, "--model", toy, "--recursive", "--format", "png")
    second = [r for r in journal(out) if r["run"] == journal(out)[-1]["run"] and "input" in r]
    assert sorted(Path(r["input"]).name for r in second) == sorted(["a.jpg", "a.png", "ZOË 日本 Ñ.png", "Zoë 日本 ñ.png", "x.webp"])
    assert again.stdout.count("already done") == 3  # its own outputs were not fed back in


def test_alpha_forces_png_and_says_so(toy, tmp_path):
    src = save(tmp_path / "logo.png", np.random.default_rng(5).integers(0, 256, (8, 8, 4), dtype=np.uint8))
    run = upscale(src, "-o", tmp_path / "out", "--model", toy, "--format", "jpg")
    assert run.returncode == 0
    assert "logo.png -> logo.png: 32x32 PNG; JPEG cannot store alpha, wrote PNG" in run.stdout
    photo = save(tmp_path / "photo.png", np.zeros((8, 8, 3), np.uint8))
    spelled = upscale(photo, "-o", tmp_path / "out2", "--model", toy, "--format", "JPEG")  # the server's spelling, any case
    assert spelled.returncode == 0 and "photo.png -> photo.jpg: 32x32 JPEG" in spelled.stdout, spelled.stderr


def test_missing_inputs_and_provider_errors(toy, tmp_path):
    # Every input missing (a typo in the only path): nothing to do, nothing written, exit 2
    missing = upscale(tmp_path / "nowhere.png", "-o", tmp_path / "out", "--model", toy)
    assert missing.returncode == 2 and missing.stderr.splitlines()[-1] == f"Error: {tmp_path / 'nowhere.png'}: no such file or folder; nothing written"
    assert not (tmp_path / "out").exists()
    # One missing beside one that is there: a batch with a failure, in its place
    partly = upscale(tmp_path / "nowhere.png", EXAMPLES / "coffee.png", "-o", tmp_path / "out1", "--model", toy)
    assert partly.returncode == 1 and f"failed  {tmp_path / 'nowhere.png'}: no such file or folder" in partly.stderr
    cuda = upscale(EXAMPLES, "-o", tmp_path / "out2", "--model", toy, "--provider", "cuda")
    assert cuda.returncode == 2
    assert "provider 'cuda' (CUDAExecutionProvider) is not available" in cuda.stderr and "available: " in cuda.stderr
    assert "srdeploy[gpu]" in cuda.stderr
    (tmp_path / "export.onnx").mkdir()  # a folder named like a model
    folder = upscale(EXAMPLES, "-o", tmp_path / "out3", "--model", tmp_path / "export.onnx")
    assert folder.returncode == 2 and "export.onnx is a folder, not a model file" in folder.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_and_an_unreadable_file_fail_alone_without_blocking_the_batch(toy, tmp_path):
    """A FIFO would block its reader forever; /proc/self/mem reads fail with EIO at offset 0."""
    src = tmp_path / "in"
    save(src / "a_good.png", np.zeros((8, 8, 3), np.uint8))
    os.mkfifo(src / "b_pipe.png")
    unreadable = Path("/proc/self/mem")
    if unreadable.exists():
        (src / "c_eio.png").symlink_to(unreadable)
    save(src / "d_good.png", np.full((8, 8, 3), 9, np.uint8))
    out = tmp_path / "out"
    run = upscale(src, "-o", out, "--model", toy, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert sorted(outputs(out)) == ["a_good.png", "d_good.png"]
    failed = {Path(r["input"]).name: r["reason"] for r in journal(out) if r.get("status") == "failed"}
    assert failed.pop("b_pipe.png") == "cannot read (not a regular file: a named pipe)"
    if unreadable.exists():
        assert failed.pop("c_eio.png") == "cannot read (Input/output error)"
    assert not failed
    direct = upscale(src / "b_pipe.png", "-o", tmp_path / "out2", "--model", toy, timeout=120)
    assert direct.returncode == 1 and f"failed  {src / 'b_pipe.png'}: cannot read (not a regular file: a named pipe)" in direct.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipes_in_the_output_folder_are_never_opened_for_a_blocking_read_or_write(toy, tmp_path):
    """At an output's name (hashed to see whose it is), among OUT's files (hashed to see
    whether they are strays), as the journal: each hung the batch before, Ctrl-C too."""
    src = tmp_path / "in"
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    save(src / "b.png", np.full((8, 8, 3), 7, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "a.png")
    os.mkfifo(out / "stray.png")
    run = upscale(src, "-o", out, "--model", toy, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"skipped {src / 'a.png'}: output exists (not made by srdeploy from this input); --overwrite replaces it" in run.stdout
    assert (out / "b.png").is_file()
    piped = tmp_path / "piped"
    piped.mkdir()
    os.mkfifo(piped / JOURNAL_NAME)
    run = upscale(src, "-o", piped, "--model", toy, timeout=60)
    assert run.returncode == 2 and run.stderr.splitlines()[-1] == f"Error: cannot write the journal {piped / JOURNAL_NAME} (not a regular file: a named pipe)"
    assert sorted(p.name for p in piped.iterdir()) == [".srdeploy-upscale.lock", JOURNAL_NAME]


def test_a_file_far_larger_than_its_pixels_need_fails_alone_unread(toy, tmp_path):
    """A 64x64 PNG padded (sparsely) to 200 GiB: its header passes the pixel cap, and
    reading it whole ended the batch with a MemoryError."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    padded = save(src / "b.png", np.zeros((64, 64, 3), np.uint8))
    os.truncate(padded, 200 << 30)
    save(src / "c.png", np.zeros((8, 8, 3), np.uint8))
    run = upscale(src, "-o", out, "--model", toy)
    assert run.returncode == 1 and sorted(outputs(out)) == ["a.png", "c.png"], run.stderr
    assert (f"failed  {padded}: the file holds more than 67,239,936 bytes, more than an image of 4,096 pixels and its "
            "metadata need; not read") in run.stderr


def test_symbolic_links_in_the_output_folder_never_lead_writes_out_of_it(toy, tmp_path):
    """A subfolder of OUT that links elsewhere (its outputs, --overwrite's replacements and
    the temp-file sweep would land there), a journal or a lock that is a link (its appends,
    file names included, would go into the file it points to): refused, the targets kept."""
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    save(src / "sub" / "b.png", np.zeros((8, 8, 3), np.uint8))
    (elsewhere / ".b.png.0123456789abcdef.srdeploy-tmp").parent.mkdir()
    (elsewhere / ".b.png.0123456789abcdef.srdeploy-tmp").write_bytes(b"someone's")
    (elsewhere / "b.png").write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    run = upscale(src, "-o", out, "--model", toy, "--recursive", "--overwrite")
    assert run.returncode == 1 and sorted(outputs(out)) == ["a.png"], run.stderr
    assert (f"failed  {src / 'sub' / 'b.png'}: cannot write the output sub/b.png (its folder leads out of the output folder, "
            f"through a symbolic link to {elsewhere})") in run.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == [".b.png.0123456789abcdef.srdeploy-tmp", "b.png"]
    assert (elsewhere / "b.png").read_bytes() == b"precious"

    victim = tmp_path / "victim.sh"
    victim.write_text("echo hi\n")
    for name, says in ((JOURNAL_NAME, "cannot write the journal {out}/" + JOURNAL_NAME), (".srdeploy-upscale.lock", "cannot lock the output folder {out}: .srdeploy-upscale.lock")):
        linked = tmp_path / f"linked{len(name)}"
        linked.mkdir()
        (linked / name).symlink_to(victim)
        run = upscale(src, "-o", linked, "--model", toy)
        assert run.returncode == 2 and run.stderr.splitlines()[-1] == f"Error: {says.format(out=linked)} (not a regular file: a symbolic link)"
        assert victim.read_text() == "echo hi\n" and not outputs(linked)


def test_a_journal_line_of_the_wrong_shape_vouches_for_nothing_and_stops_no_rerun(toy, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert upscale(src, "-o", out, "--model", toy).returncode == 0
    with open(out / JOURNAL_NAME, "a") as f:  # valid JSON, hand-edited
        f.write('{"status": "ok", "output": ["a.png"], "output_sha256": {"x": 1}}\n')
    again = upscale(src, "-o", out, "--model", toy)
    assert again.returncode == 0 and "already done" in again.stdout, again.stderr
    ok = next(r for r in journal(out) if r.get("status") == "ok")
    with open(out / JOURNAL_NAME, "a") as f:  # a field only a bucket's metadata sets, hand-added and malformed
        f.write(json.dumps({**ok, "made_by_this_run": None}) + "\n")
    again = upscale(src, "-o", out, "--model", toy)
    assert again.returncode == 0 and "already done" in again.stdout, again.stderr


def test_file_uris_name_local_paths_and_another_hosts_are_refused(toy, tmp_path):
    src = tmp_path / "my faces #1?"  # a # or ? is part of a file name, not a fragment or a query
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "out dir #2"
    run = upscale(f"file://{quote(str(src))}", "-o", f"file://localhost{str(out).replace(' ', '%20')}", "--model", toy)
    assert run.returncode == 0 and sorted(outputs(out)) == ["a.png"], run.stderr
    elsewhere = upscale(src, "-o", "file://nas/share/out", "--model", toy)
    assert elsewhere.returncode == 2 and elsewhere.stderr.splitlines()[-1] == (
        "Error: file://nas/share/out: a file:// URI of another host (nas); give a local path, or mount it")


def test_an_empty_path_or_an_output_under_a_file_is_a_usage_error(toy, tmp_path):
    image = save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in (((image, "-o", ""), "Error: -o/--output is empty; name the output folder"),
                          (("", "-o", tmp_path / "out"), "Error: an INPUT argument is empty")):
        run = subprocess.run([str(SRDEPLOY), "upscale", *map(str, args), "--model", str(toy)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 2 and message in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written into the working folder
    under_a_file = upscale(image, "-o", image / "sub", "--model", toy)
    assert under_a_file.returncode == 2
    assert f"Error: cannot create the output folder {image / 'sub'} (Not a directory)" in under_a_file.stderr


def test_a_closed_stdout_pipe_stops_the_lines_not_the_batch(toy, tmp_path):
    """As `srdeploy upscale ... | head -1`: here the reader is gone before the first line."""
    src = tmp_path / "in"
    for i in range(3):
        save(src / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([str(SRDEPLOY), "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(toy)],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert run.returncode == 0, run.stderr
    assert "Error" not in run.stderr and "3 ok, 0 skipped, 0 failed of 3" in run.stderr
    assert sorted(outputs(tmp_path / "out")) == ["0.png", "1.png", "2.png"]


def test_a_closed_stderr_pipe_neither_hangs_nor_stops_the_batch(toy, tmp_path):
    """As `srdeploy upscale ... 2>&1 | head -2` once head has left: the progress bar, the
    failure lines and the summary find stderr closed. Its first write used to raise inside
    the commit thread, which left tqdm's lock held and hung the batch at its end."""
    src = tmp_path / "in"
    for i in range(3):
        save(src / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    (src / "3.png").write_text("not an image")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([str(SRDEPLOY), "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(toy)],
                             stdout=write_end, stderr=write_end, timeout=120)
    finally:
        os.close(write_end)
    assert run.returncode == 1  # 3.png failed, and says so in the journal
    assert sorted(outputs(tmp_path / "out")) == ["0.png", "1.png", "2.png"]
    assert sorted((Path(r["input"]).name, r["status"]) for r in journal(tmp_path / "out") if r.get("status") in ("ok", "failed")) == [
        ("0.png", "ok"), ("1.png", "ok"), ("2.png", "ok"), ("3.png", "failed")]


@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">/dev/full"], ids=["stdout closed", "stderr closed", "stdout full"])
def test_a_stream_closed_from_the_start_or_full_costs_lines_not_the_batch(toy, tmp_path, redirect):
    src = tmp_path / "in"
    for i in range(3):
        save(src / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    out = tmp_path / "out"
    command = f"{shlex.quote(str(SRDEPLOY))} upscale {shlex.quote(str(src))} -o {shlex.quote(str(out))} --model {shlex.quote(str(toy))} {redirect}"
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert sorted(outputs(out)) == ["0.png", "1.png", "2.png"]


def test_a_folder_without_images_is_an_error_that_writes_nothing(toy, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    save(empty / "sub" / "a.png", np.zeros((8, 8, 3), np.uint8))
    run = upscale(empty, "-o", tmp_path / "out", "--model", toy)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"Error: no images in {empty} (looked for .bmp" in run.stderr and "1 subfolder(s) not searched: add --recursive" in run.stderr
    assert not (tmp_path / "out").exists()


def test_output_folder_must_not_be_an_input_folder(toy, tmp_path):
    src = save(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8)).parent
    run = upscale(src, "-o", src, "--model", toy)
    assert run.returncode == 2 and "is also an input folder" in run.stderr
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def test_quiet_prints_only_failures(toy, tmp_path):
    src = tmp_path / "in"
    save(src / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (src / "bad.png").write_bytes(b"")
    run = upscale(src, "-o", tmp_path / "out", "--model", toy, "--quiet")
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip() == f"failed  {src / 'bad.png'}: empty file (0 bytes)"


def test_runtime_needs_no_torch_and_help_imports_nothing_heavy(toy, tmp_path):
    block_torch = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
    script = block_torch + (
        "from srdeploy.cli import main\n"
        f"main(['upscale', {str(EXAMPLES / 'coffee.png')!r}, '-o', {str(tmp_path / 'out')!r}, '--model', {str(toy)!r}, '-q'])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "coffee.png").is_file()
    probe = "import sys, srdeploy.cli, srdeploy.batch.cli; print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout.strip() == "[]"
    help_text = upscale("--help")
    assert help_text.returncode == 0 and "--max-pixels" in help_text.stdout


def test_max_pixels_refuses_large_inputs_before_decoding(toy, tmp_path):
    src = save(tmp_path / "big.png", np.zeros((100, 120, 3), np.uint8))
    run = upscale(src, "-o", tmp_path / "out", "--model", toy, "--max-pixels", "10000")
    assert run.returncode == 1
    assert "big.png: 120x100 (12,000 pixels) exceeds the input cap of 10,000 pixels (--max-pixels); not decoded" in run.stderr
    assert not outputs(tmp_path / "out")


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard links", "no hard links"])
def test_a_file_saved_at_an_outputs_name_mid_run_is_not_replaced_without_overwrite(toy, tmp_path, monkeypatch, hard_links):
    """Outputs are committed a few inputs after their names were checked: a file someone
    saves there meanwhile (or puts in place of an output of ours) is theirs, not ours to lose."""
    import errno

    from srdeploy.batch import steps
    from srdeploy.batch.jobs import Settings
    from srdeploy.batch.run import run_batch

    rng = np.random.default_rng(7)
    src = tmp_path / "in"
    for name in ("a.png", "b.png"):
        save(src / name, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    out = tmp_path / "out"
    up = Upscaler(toy)
    run_batch(up, [src], out, settings=Settings(format="same"))  # b.png: an output of ours to be replaced below
    (out / "a.png").unlink()
    save(src / "b.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))  # new input: ours gets replaced
    if not hard_links:  # FAT, some network shares: a checked rename instead
        monkeypatch.setattr(steps.os, "link", lambda a, b: (_ for _ in ()).throw(OSError(errno.EPERM, "Operation not permitted")))
    real_publish = steps.Folder.publish

    def someone_saves_first(self, tmp, target, found):
        target.write_bytes(b"the user's own " + target.name.encode())
        real_publish(self, tmp, target, found)

    monkeypatch.setattr(steps.Folder, "publish", someone_saves_first)
    summary = run_batch(up, [src], out)
    assert [(r.status, r.reason.split(";")[0]) for r in summary.results] == [
        ("skipped", "output exists (a file appeared at the output's name during the run"),
        ("skipped", "output exists (the file at the output's name changed during the run"),
    ]
    assert [(out / n).read_bytes() for n in ("a.png", "b.png")] == [b"the user's own a.png", b"the user's own b.png"]
    assert not temp_files(out)
    summary = run_batch(up, [src], out, settings=Settings(overwrite=True))  # asked for: replaced
    assert [r.status for r in summary.results] == ["ok", "ok"] and (out / "a.png").read_bytes() == up.upscale_bytes((src / "a.png").read_bytes(), "a.png").data


def test_an_output_of_ours_deleted_mid_run_is_written_again(toy, tmp_path, monkeypatch):
    """Deleted before its replacement was committed: the name is free, nothing of anyone's is lost."""
    from srdeploy.batch import steps
    from srdeploy.batch.run import run_batch

    src = save(tmp_path / "in" / "a.png", np.random.default_rng(8).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    out = tmp_path / "out"
    up = Upscaler(toy)
    run_batch(up, [src.parent], out)
    save(src, np.random.default_rng(9).integers(0, 256, (12, 12, 3), dtype=np.uint8))  # new input: ours gets replaced
    real_publish = steps.Folder.publish

    def deleted_first(self, tmp, target, found):
        target.unlink()
        real_publish(self, tmp, target, found)

    monkeypatch.setattr(steps.Folder, "publish", deleted_first)
    (result,) = run_batch(up, [src.parent], out).results
    assert result.status == "ok" and (out / "a.png").read_bytes() == up.upscale_bytes(src.read_bytes(), "a.png").data


def test_an_output_that_cannot_be_written_leaves_no_empty_mirror_of_its_folder(toy, tmp_path, monkeypatch):
    from srdeploy.batch import steps
    from srdeploy.batch.jobs import Settings
    from srdeploy.batch.run import run_batch

    src = tmp_path / "in"
    save(src / "deep" / "er" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save(src / "kept" / "b.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "out" / "kept").mkdir(parents=True)  # the user's own folder: left as it is

    def disk_full(target, data):  # its folder made, the write fails
        target.parent.mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(steps, "stage_bytes", disk_full)
    summary = run_batch(Upscaler(toy), [src], tmp_path / "out", settings=Settings(recursive=True))
    assert [r.status for r in summary.results] == ["failed", "failed"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".srdeploy-upscale.lock", "kept", JOURNAL_NAME]


class _Killed(BaseException):
    """Stands in for SIGKILL at one exact point of the write sequence."""


@pytest.mark.parametrize("moment", ["before the rename", "after the rename"])
def test_a_crash_at_either_side_of_the_rename_resumes_correctly(toy, tmp_path, monkeypatch, moment):
    """The two windows a kill -9 can hit around one output, made deterministic in-process."""
    from srdeploy.batch import steps
    from srdeploy.batch.run import run_batch

    src = save(tmp_path / "in" / "a.png", np.random.default_rng(6).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    out = tmp_path / "out"
    up = Upscaler(toy)  # what the CLI runs: auto
    real_link = os.link  # a new output gets its name by a hard link (never over a file), then the temp name goes

    def link_then_die(a, b):
        if moment == "after the rename":
            real_link(a, b)
        raise _Killed

    monkeypatch.setattr(steps.os, "link", link_then_die)
    with pytest.raises(_Killed):
        run_batch(up, [src.parent], out)
    monkeypatch.setattr(steps.os, "link", real_link)
    assert [r["status"] for r in journal(out) if "status" in r] == ["writing"]
    assert (out / "a.png").exists() == (moment == "after the rename")
    assert not temp_files(out)  # the temp file is removed even as the process goes down

    summary = run_batch(up, [src.parent], out)
    (result,) = summary.results
    if moment == "after the rename":
        assert (result.status, result.reason) == ("skipped", "already done (same input, model, engine and settings)")
    else:
        assert result.status == "ok"
    assert (out / "a.png").read_bytes() == up.upscale_bytes(src.read_bytes(), "a.png").data


def test_a_torn_journal_line_is_ignored_and_not_continued(toy, tmp_path):
    from srdeploy.batch.run import run_batch

    src = save(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).write_bytes(b'{"run": "x", "status": "ok", "outp')  # killed mid-append
    summary = run_batch(Upscaler(toy, provider="cpu"), [src], out)
    assert summary.failed == 0
    lines = (out / JOURNAL_NAME).read_bytes().splitlines()
    assert lines[0] == b'{"run": "x", "status": "ok", "outp'
    assert all(json.loads(line) for line in lines[1:])  # every later record is whole JSON


def test_a_second_run_into_the_same_folder_is_refused_while_one_is_live(toy, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".srdeploy-upscale.lock", "a+b") as held:  # what a live run holds
        fcntl.flock(held, fcntl.LOCK_EX)
        run = upscale(EXAMPLES / "coffee.png", "-o", out, "--model", toy)
    assert run.returncode == 2 and "another srdeploy upscale is writing to" in run.stderr
    assert not outputs(out)


def test_a_link_loop_a_too_long_name_and_a_second_name_for_a_file_each_get_their_own_line(toy, tmp_path):
    """Inputs that cannot even be looked at fail alone, and a file listed again under
    another name (a link to it) is said to be skipped, not dropped without a word."""
    src = tmp_path / "in"
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    (src / "b_alias.png").symlink_to(src / "a.png")
    (src / "c_loop.png").symlink_to(src / "c_loop.png")
    save(src / "d.png", np.full((8, 8, 3), 7, np.uint8))
    too_long = tmp_path / ("x" * 300 + ".png")
    out = tmp_path / "out"
    run = upscale(src, too_long, "-o", out, "--model", toy, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "Error:" not in run.stderr, run.stderr
    assert sorted(outputs(out)) == ["a.png", "d.png"]
    assert f"skipped {src / 'b_alias.png'}: the same file as {src / 'a.png'}, upscaled once" in run.stdout + run.stderr
    assert f"failed  {src / 'c_loop.png'}: cannot read (a loop of symbolic links)" in run.stderr
    assert f"failed  {too_long}: cannot read (File name too long)" in run.stderr
    assert "2 ok, 1 skipped, 2 failed" in run.stderr


def test_a_name_the_console_cannot_encode_is_shown_escaped_and_the_batch_goes_on(toy, tmp_path):
    """As on a Windows console redirected to a file (cp1252) or a latin-1 locale."""
    src = tmp_path / "in"
    for name in ("a.png", "b_日本.png", "c.png"):
        save(src / name, np.zeros((8, 8, 3), np.uint8))
    run = subprocess.run([str(SRDEPLOY), "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(toy)],
                         capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "cp1252"})
    stdout, stderr = run.stdout.decode("cp1252"), run.stderr.decode("cp1252")
    assert run.returncode == 0, stderr
    assert sorted(outputs(tmp_path / "out")) == ["a.png", "b_日本.png", "c.png"]
    assert "b_\\u65e5\\u672c.png -> b_\\u65e5\\u672c.png: 32x32 PNG" in stdout


def test_an_ascii_locale_without_utf8_mode_upscales_and_shows_non_ascii_names(toy, tmp_path):
    """LC_ALL=C with PYTHONUTF8=0: the file system encoding is ASCII, so a name already
    shown as text cannot go back to bytes (it stopped the batch at its first such name)."""
    src = tmp_path / "in"
    for name in ("a.png", "café.png"):
        save(src / name, np.zeros((8, 8, 3), np.uint8))
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    for _ in range(2):  # the rerun reads the journal's names back
        run = subprocess.run([str(SRDEPLOY), "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(toy)],
                             capture_output=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr
    assert sorted(outputs(tmp_path / "out")) == ["a.png", "café.png"]
    assert run.stdout.decode("ascii").splitlines()[1] == f"skipped {src}/caf\\xe9.png: already done (same input, model, engine and settings)"


def test_a_subfolder_of_out_that_cannot_be_listed_fails_its_outputs_alone(toy, tmp_path):
    """OUT/sub is a link loop: the sweep for a killed run's temp files cannot list it."""
    src = tmp_path / "in"
    save(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    save(src / "sub" / "b.png", np.ones((8, 8, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(out / "sub")
    run = upscale(src, "-o", out, "--model", toy, "--recursive", timeout=120)
    assert run.returncode == 1 and "Error:" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert (out / "a.png").is_file()
    assert f"failed  {src / 'sub' / 'b.png'}: cannot write the output sub/b.png (" in run.stderr  # the reason is mkdir's


def test_a_newline_in_a_file_name_is_escaped_so_each_result_stays_one_line(toy, tmp_path):
    src = tmp_path / "in"
    save(src / "new\nline.png", np.zeros((8, 8, 3), np.uint8))
    save(src / "photo_\u202egnp.exe.png", np.zeros((8, 8, 3), np.uint8))  # a direction override: a terminal shows the rest reversed
    save(src / "csi\x9b31m.png", np.zeros((8, 8, 3), np.uint8))  # a C1 control: ESC [ to a terminal
    (src / "bad\rname.png").write_text("not an image")
    run = upscale(src, "-o", tmp_path / "out", "--model", toy)
    assert run.returncode == 1
    assert sorted(run.stdout.splitlines()) == [f"ok      {src}/csi\\x9b31m.png -> csi\\x9b31m.png: 32x32 PNG",
                                               f"ok      {src}/new\\nline.png -> new\\nline.png: 32x32 PNG",
                                               f"ok      {src}/photo_\\u202egnp.exe.png -> photo_\\u202egnp.exe.png: 32x32 PNG"]
    assert f"failed  {src}/bad\\rname.png: not an image (the file holds text)\n" in run.stderr
    assert (tmp_path / "out" / "new\nline.png").is_file()  # the file itself keeps its name


def test_a_journal_that_fills_its_disk_midway_stops_the_batch_with_how_far_it_got(toy, tmp_path):
    """A full disk, as the journal meets it: a file-size limit the records reach after a few
    inputs (the outputs stay under it), so the next write fails with EFBIG midway."""
    import resource

    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        save(src / f"f{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    run = subprocess.run([str(SRDEPLOY), "upscale", str(src), "-o", str(out), "--model", str(toy)], capture_output=True,
                         text=True, timeout=120, preexec_fn=small_files)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    [stop] = [line for line in run.stderr.splitlines() if line.startswith("stopped: ")]
    assert f"cannot write the journal {out / JOURNAL_NAME} (" in stop and "the same command resumes" in stop
    done = [line for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert 0 < len(done) < 6 and f"after {len(done)} ok, 0 skipped, 0 failed" in stop
    assert not temp_files(out) and len(outputs(out)) >= len(done)

    rerun = upscale(src, "-o", out, "--model", toy)  # the same command, the disk free again
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(outputs(out)) == [f"f{i}.png" for i in range(6)]
    assert sum(line.startswith("skipped ") for line in rerun.stdout.splitlines()) >= len(done)


def test_a_file_name_that_is_not_utf8_reads_alike_as_input_and_output(toy, tmp_path):
    import os

    src = tmp_path / "in"
    src.mkdir()
    raw = os.fsencode(src) + b"/bad\xff\xfename.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.fsdecode(raw), "PNG")
    run = upscale(src, "-o", tmp_path / "out", "--model", toy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"ok      {src}/bad\ufffd\ufffdname.png -> bad\ufffd\ufffdname.png: 32x32 PNG"]
    assert os.path.isfile(os.fsencode(tmp_path / "out") + b"/bad\xff\xfename.png")  # the file itself keeps its bytes


def test_an_output_folder_that_cannot_be_locked_is_named_in_one_line(toy, tmp_path):
    out = tmp_path / "out"
    (out / ".srdeploy-upscale.lock").mkdir(parents=True)  # something else by the lock's name
    run = upscale(EXAMPLES / "coffee.png", "-o", out, "--model", toy)
    assert run.returncode == 2 and run.stderr.splitlines()[-1] == f"Error: cannot lock the output folder {out}: .srdeploy-upscale.lock (not a regular file: a folder)", run.stderr


def test_a_warning_pillow_raises_while_reading_a_file_names_the_file(toy, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    # An EXIF block whose one entry claims more bytes than it has: Pillow warns and goes on.
    exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x05" + b"\x01\x12\0\x03\0\0\0\x01\0\x01\0\0" + b"\xff" * 8
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src / "a.jpg", exif=exif)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src / "b.jpg")
    run = upscale(src, "-o", tmp_path / "out", "--model", toy)
    assert run.returncode == 0, run.stderr
    assert f"warning: {src / 'a.jpg'}: Corrupt EXIF data" in run.stderr
    assert "b.jpg: Corrupt" not in run.stderr
