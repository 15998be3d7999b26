"""Check the import contracts in pyproject.toml ([tool.importlinter]) with import-linter.

import-linter reads a package from one folder, but srdeploy's installs from several:
``training/``, ``export/`` and ``handlers/`` become ``srdeploy.training`` and so on
(pyproject's ``package-dir``). This copies the Python files into that installed layout in
a temporary folder and runs ``lint-imports`` there, so the contracts see every module.

    python tools/lint_imports.py        # exit status 0 when every contract is kept
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def installed_layout(target: Path) -> None:
    """Copy every package's .py files to where pyproject's package-dir installs them."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:
        parent, _, leaf = package.rpartition(".")
        if package in mapping:
            source = REPO / mapping[package]
        elif parent in mapping:
            source = REPO / mapping[parent] / leaf
        else:
            source = REPO / package.replace(".", "/")
        dest = target / package.replace(".", "/")
        dest.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            shutil.copy2(module, dest / module.name)


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        print("lint-imports is not installed: pip install import-linter (it is in the dev extra)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="srdeploy-imports-") as tmp:
        installed_layout(Path(tmp))
        # lint-imports puts its working folder first on sys.path: there, the copy is found
        # before this checkout's srdeploy/ and the editable install.
        env = {**os.environ, "PYTHONPATH": tmp}
        try:  # bounded here: a caller's timeout would end this script and leave lint-imports running
            return subprocess.run([str(lint), "--no-cache", str(REPO / "pyproject.toml")], cwd=tmp, env=env, timeout=240).returncode
        except subprocess.TimeoutExpired:
            print("lint-imports did not finish within 240 s", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
