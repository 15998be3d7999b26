"""tools/ship_model.py: a candidate replaces a shipped model only when it is better at that
model's job, and a refused or failed candidate leaves the shipped files as they were."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO

TOOL = REPO / "tools" / "ship_model.py"


def _tool():
    spec = importlib.util.spec_from_file_location("ship_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(psnr_y: float, hf_ratio: float = 0.1) -> dict:
    return {"psnr_y": psnr_y, "hf_ratio": hf_ratio}


def test_an_srresnet_ships_on_a_higher_psnr_only():
    why = _tool().why_not_ship
    bicubic = _row(30.0)
    assert why("srresnet", bicubic, _row(32.1), _row(32.0)) is None
    assert "not above the shipped model's 32.000 dB" in why("srresnet", bicubic, _row(32.0, hf_ratio=0.9), _row(32.0))
    assert why("srresnet", bicubic, _row(31.0), None) is None  # nothing shipped yet: any gain
    assert "gains -0.50 dB" in why("srresnet", bicubic, _row(29.5), None)


def test_an_srgan_ships_on_more_detail_while_it_keeps_a_db_over_bicubic():
    tool = _tool()
    bicubic = _row(30.0)
    assert tool.why_not_ship("srgan", bicubic, _row(31.5, 0.40), _row(32.2, 0.13)) is None  # sharper, lower PSNR: its job
    assert "no sharper" in tool.why_not_ship("srgan", bicubic, _row(32.5, 0.13), _row(32.2, 0.13))
    too_soft = tool.why_not_ship("srgan", bicubic, _row(30.0 + tool.SRGAN_MIN_GAIN_DB - 0.01, 0.9), _row(32.2, 0.13))
    assert "must keep at least +1.0 dB" in too_soft


def _ship(checkpoint: Path, into: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), str(checkpoint), "--name", "srresnet", "--test-data", str(EXAMPLES),
         "--command", "srdeploy train srresnet (test)", "--compute", "none", "--into", str(into), *extra],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_a_losing_candidate_leaves_the_shipped_files_alone(tmp_path, tiny_generator):
    from srdeploy.training.checkpoint import save_checkpoint

    checkpoint = save_checkpoint({"generator": tiny_generator.state_dict(), "arch": tiny_generator.arch(), "step": 3}, tmp_path / "tiny.pt")
    into = tmp_path / "models"
    refused = _ship(checkpoint, into)
    assert refused.returncode == 2, refused.stderr
    assert "not shipped: it gains -" in refused.stderr  # an untrained generator is worse than bicubic
    assert list((into / "srresnet").iterdir()) == []

    forced = _ship(checkpoint, into, "--force")
    assert forced.returncode == 0, forced.stderr
    shipped = {p.name: p.read_bytes() for p in (into / "srresnet").iterdir()}
    assert sorted(shipped) == ["generator.pt", "manifest.json", "model.onnx"]
    metrics = json.loads(shipped["manifest.json"])["shipped"]["test_metrics"]
    assert set(metrics) == {"bicubic", "srresnet"} and "hf_ratio" in metrics["srresnet"]

    again = _ship(checkpoint, into)  # the same weights: not better than what is shipped
    assert again.returncode == 2 and "is not above the shipped model's" in again.stderr
    assert {p.name: p.read_bytes() for p in (into / "srresnet").iterdir()} == shipped
    assert [p.name for p in into.iterdir()] == ["srresnet"]  # no staging folder left
