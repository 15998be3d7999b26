"""Two-process DDP on the CPU (gloo), started with torchrun as a user would."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from srdeploy.training.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    data = tmp_path / "hr"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    env = {**os.environ, "SRDEPLOY_DDP_BACKEND": "gloo", "SRDEPLOY_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "srdeploy.cli", "train", "srresnet", "--data", str(data), "-o", str(out), "--blocks", "1",
           "--channels", "8", "--patch", "32", "--batch-size", "2", "--steps", "4", "--workers", "0",
           "--log-every", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # rank 0 logs alone
    data_info = json.loads((out / "data.json").read_text())
    assert data_info["world_size"] == 2 and data_info["steps_per_epoch"] == 4  # 16 images / 2 ranks / batch 2
    assert load_checkpoint(out / "last.pt")["step"] == 4
