"""Two-process DDP on the CPU (gloo), started with torchrun as a user would."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from srdeploy.training.checkpoint import load_checkpoint


def _faces(folder, n=16):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _torchrun(args, timeout, stage="srresnet"):
    """``torchrun --nproc-per-node 2 -m srdeploy.cli train STAGE ARGS`` -> (returncode,
    stderr, seconds). The launcher and its workers run in their own process group, which is
    killed on a timeout, so a hung rank cannot outlive the test."""
    env = {**os.environ, "SRDEPLOY_DDP_BACKEND": "gloo", "SRDEPLOY_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "srdeploy.cli", "train", stage, "--blocks", "1", "--channels", "8", "--patch", "32",
           "--batch-size", "2", "--workers", "0", "--device", "cpu", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{stderr[-3000:]}")
    return proc.returncode, stderr, time.monotonic() - t0


def ctrl_c_once_logged(cmd, env, metrics, records, timeout=120, signum=signal.SIGINT):
    """Run ``cmd`` in its own process group, send the group SIGINT (as a terminal's Ctrl-C
    does; ``signum=SIGTERM``: the main process alone, as ``kill`` does) once ``metrics``
    holds ``records`` lines; returns (exit code, stderr). The group never outlives the call."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= records):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, stderr


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "run"
    rc, stderr, _ = _torchrun(["--data", str(_faces(tmp_path / "hr")), "-o", str(out), "--steps", "4", "--log-every", "1"],
                              timeout=300)
    assert rc == 0, stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # rank 0 logs alone
    data_info = json.loads((out / "data.json").read_text())
    assert data_info["world_size"] == 2 and data_info["steps_per_epoch"] == 4  # 16 images / 2 ranks / batch 2
    assert load_checkpoint(out / "last.pt")["step"] == 4


@pytest.mark.slow
def test_two_process_run_under_max_minutes_stops_both_ranks_at_one_step(tmp_path):
    """Rank 0 alone reads the clock; both ranks must stop at the step it decides, having
    applied the same cosine learning rates (else the weight sums differ, and the run fails)."""
    out, budget = tmp_path / "run", 0.15  # minutes
    rc, stderr, seconds = _torchrun(["--data", str(_faces(tmp_path / "hr")), "-o", str(out), "--epochs", "100000",
                                     "--max-minutes", str(budget), "--schedule", "cosine", "--log-every", "5",
                                     "--val-every", "1000000"], timeout=300)
    assert rc == 0, stderr[-3000:]
    end = json.loads((out / "end.json").read_text())
    assert end["stopped_by"] == "max_minutes" and end["minutes"] >= budget
    rank0, rank1 = end["ranks"]
    assert rank0["step"] == rank1["step"] == end["step"] == load_checkpoint(out / "last.pt")["step"] > 5
    assert rank0["lr"] == rank1["lr"] and rank0["weight_sum"] == rank1["weight_sum"]
    # The cosine schedule annealed over the wall-time budget: near its 1% floor at the end.
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    assert lrs[0] > lrs[-1] == rank0["lr"] and rank0["lr"] < 0.2 * 2e-4
    assert seconds < budget * 60 + 120  # stopped on time, not by a timeout


@pytest.mark.slow
def test_two_process_srgan_run_keeps_both_networks_equal_on_both_ranks(tmp_path):
    """The fine-tune steps two DDP-wrapped networks in turn. The generator's weights, which
    the discriminator's verdicts feed through the adversarial loss, must end equal on both
    ranks (end.json fingerprints the generator)."""
    faces, pre, out = _faces(tmp_path / "hr"), tmp_path / "pre", tmp_path / "gan"
    rc, stderr, _ = _torchrun(["--data", str(faces), "-o", str(pre), "--steps", "1"], timeout=300)
    assert rc == 0, stderr[-3000:]
    rc, stderr, _ = _torchrun(["--data", str(faces), "-o", str(out), "--init", str(pre / "last.pt"), "--steps", "3",
                               "--log-every", "1"], timeout=300, stage="srgan")
    assert rc == 0, stderr[-3000:]  # the run itself fails when the ranks' generator weights differ
    rank0, rank1 = json.loads((out / "end.json").read_text())["ranks"]
    assert rank0["step"] == rank1["step"] == 3 and rank0["weight_sum"] == rank1["weight_sum"]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["discriminator"] is not None and ckpt["config"]["stage"] == "srgan"


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path):
    """The terminal's SIGINT reaches torchrun and both ranks, and torchrun forwards its own
    copy to the ranks a moment later: that copy must not count as a second Ctrl-C."""
    out = tmp_path / "run"
    env = {**os.environ, "SRDEPLOY_DDP_BACKEND": "gloo", "SRDEPLOY_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "srdeploy.cli", "train", "srresnet", "--blocks", "1", "--channels", "8", "--patch", "32",
           "--batch-size", "2", "--workers", "0", "--device", "cpu", "--data", str(_faces(tmp_path / "hr")),
           "-o", str(out), "--steps", "100000", "--log-every", "1"]
    _, stderr = ctrl_c_once_logged(cmd, env, out / "metrics.jsonl", records=3)  # torchrun's own exit code
    end = json.loads((out / "end.json").read_text())
    rank0, rank1 = end["ranks"]
    assert end["stopped_by"] == "interrupt", stderr[-3000:]
    assert rank0["step"] == rank1["step"] == end["step"] == load_checkpoint(out / "last.pt")["step"]
    assert rank0["weight_sum"] == rank1["weight_sum"]
    assert stderr.count("Ctrl-C: stopping after this step") == 1 and f"stopped by Ctrl-C at step {end['step']}" in stderr
