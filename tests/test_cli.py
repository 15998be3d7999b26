"""The command line: every command is listed, and the help screens and the runtime's
import path stay torch-free (an instant `srdeploy --help`, a light `srdeploy upscale`)."""

import subprocess
import sys

import pytest

from srdeploy.cli import COMMANDS

CHECK = """
import sys
from click.testing import CliRunner
from srdeploy.cli import main
result = CliRunner().invoke(main, {args!r})
assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("torch", "torchvision", "matplotlib", "skimage") if m in sys.modules)
print(result.output)
print("HEAVY:", heavy)
"""


@pytest.mark.parametrize("args", [["--help"], ["upscale", "--help"], ["train", "srresnet", "--help"],
                                  ["export", "--help"], ["evaluate", "--help"], ["package", "--help"]])
def test_help_does_not_import_torch(args):
    out = subprocess.run([sys.executable, "-c", CHECK.format(args=args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY: []" in out.stdout


def test_root_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "srdeploy.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout
    assert {"train", "evaluate", "export", "upscale", "package"} <= set(COMMANDS)


def test_train_without_data_is_a_usage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "srdeploy.cli", "train", "srresnet", "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--data is required" in out.stderr
