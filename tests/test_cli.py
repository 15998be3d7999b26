"""The command line: every command is listed, and the help screens and the runtime's
import path stay torch-free (an instant `srdeploy --help`, a light `srdeploy upscale`)."""

import subprocess
import sys

import click
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


def test_every_missing_package_names_an_extra_that_installs_it():
    import re

    import tomllib
    from conftest import REPO

    from srdeploy.cli import EXTRAS

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def distributions(extra: str) -> set[str]:  # following srdeploy[...] references
        found = set()
        for requirement in extras[extra]:
            name = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", requirement)
            if name.group(1) == "srdeploy":
                for inner in name.group(2)[1:-1].split(","):
                    found |= distributions(inner.strip())
            else:
                found.add(name.group(1).lower())  # ray[data] installs ray
        return found

    for module, (distribution, extra) in EXTRAS.items():
        assert distribution in distributions(extra), f"{module}: {distribution} is not in the {extra} extra"


BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from srdeploy.cli import run
run({args!r})
"""


def test_a_missing_optional_package_is_one_line_naming_the_extra(tmp_path):
    """As in a `cpu` install without scikit-image: `srdeploy evaluate` says what to install."""
    from conftest import EXAMPLES

    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "face.png").write_bytes((EXAMPLES / "astronaut_face.png").read_bytes())
    args = ["evaluate", "--data", str(hr), "--model", "default", "-o", str(tmp_path / "out"), "--figure-count", "0"]
    out = subprocess.run([sys.executable, "-c", BLOCKED.format(module="skimage", args=args)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "Error: this needs the scikit-image package, which is not installed: pip install 'srdeploy[eval]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_package_names_the_extra_of_the_command_that_needs_it(tmp_path):
    """torch is in `train`, `export` and `serve`: `srdeploy export` without it names `export`."""
    from srdeploy.cli import COMMAND_EXTRAS, COMMANDS

    assert set(COMMAND_EXTRAS) == set(COMMANDS)
    args = ["export", str(tmp_path / "last.pt"), "-o", str(tmp_path / "out")]
    out = subprocess.run([sys.executable, "-c", BLOCKED.format(module="torch", args=args)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "Error: this needs the torch package, which is not installed: pip install 'srdeploy[export]'" in out.stderr


def test_ctrl_c_in_a_command_is_status_130_with_one_line_not_clicks_aborted(tmp_path):
    """`srdeploy export` stopped once it is at work (upscale and train say more of their
    own): and the folder it made for its outputs goes with it, no half of an export stays."""
    import signal
    import time

    from conftest import REPO

    checkpoint, out = REPO / "srdeploy" / "models" / "srresnet" / "generator.pt", tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "from srdeploy.cli import run; run()", "export", str(checkpoint), "-o", str(out), "--check"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import select

        assert select.select([proc.stdout], [], [], 300)[0], "export printed nothing in 300 s"  # bounded: readline alone would wait forever
        assert "weights, generator" in proc.stdout.readline()  # at work: the checkpoint is loaded
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline:  # until it has made its folder
            time.sleep(0.05)
        assert out.exists(), "export made no folder in 120 s: nothing to see removed"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_ctrl_c_while_the_command_line_is_still_loading_is_130_and_one_line(tmp_path):
    """The console script's first imports (click and the rest, tens of milliseconds) are
    covered too: a stand-in click on PYTHONPATH that raises what a Ctrl-C there raises."""
    import os

    from conftest import SRDEPLOY

    (tmp_path / "click").mkdir()
    (tmp_path / "click" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    proc = subprocess.run([str(SRDEPLOY), "--version"], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n")


@pytest.mark.parametrize("wrapped_as", [RuntimeError, click.ClickException])
def test_ctrl_c_hidden_in_a_librarys_own_error_is_still_130_and_interrupted(monkeypatch, capsys, wrapped_as):
    # torch.onnx.export interrupted while it imports torch._dynamo raised its own export
    # error (the KeyboardInterrupt in its chain), which export reported as a failure, exit 1.
    from srdeploy import cli

    def command():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            try:
                raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")
            except AttributeError as half_imported:
                raise wrapped_as("Failed to export the model with torch.export") from half_imported

    monkeypatch.setitem(cli.COMMANDS, "boom", ("builtins", "boom", "test"))
    monkeypatch.setattr("builtins.boom", click.command("boom")(command), raising=False)
    with pytest.raises(SystemExit) as ended:
        cli.run(["boom"])
    assert ended.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"
