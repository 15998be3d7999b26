"""The import contracts in pyproject.toml hold: rooms import downwards only, the runtime path
is torch-free, and no modules import each other in a cycle (function-level imports count)."""

import subprocess
import sys

from conftest import REPO


def test_import_contracts_are_kept():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "lint_imports.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "3 kept" in done.stdout
