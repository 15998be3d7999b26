"""tools/wheel_parts.py, run as the device runs it (a subprocess): a wheel cut into part
folders comes back whole, byte for byte, member by member; a missing or damaged part is a
one-line error naming it, and leaves no wheel behind."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wheel_parts(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "wheel_parts.py"), *args], capture_output=True, text=True, timeout=120)


def make_wheel(path: Path) -> dict[str, tuple[bytes, int]]:
    """A small wheel with a folder entry, an executable library and incompressible bytes."""
    members = {
        "pkg/": (b"", 0o40755),
        "pkg/__init__.py": (b"VALUE = 42\n", 0o644),
        "pkg/lib.so": (os.urandom(300_000), 0o755),
        "pkg-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n", 0o644),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, (data, mode) in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            z.writestr(info, data)
    return members


def test_a_wheel_cut_into_parts_comes_back_whole_and_a_lost_part_is_named(tmp_path):
    members = make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    packed = wheel_parts("pack", str(tmp_path / "pkg-1.0-py3-none-any.whl"), "--out", str(tmp_path / "carry"), "--part-mib", "0.1")
    assert packed.returncode == 0, packed.stderr
    folders = sorted(p.name for p in (tmp_path / "carry").iterdir())
    assert folders == ["part-1", "part-2", "part-3"]  # 300 kB of random bytes in parts of 0.1 MiB
    assert all((tmp_path / "carry" / f / "manifest.json").is_file() for f in folders)

    unpacked = wheel_parts("unpack", "--parts", str(tmp_path / "carry"), "--out", str(tmp_path / "whl"))
    assert unpacked.returncode == 0, unpacked.stderr
    with zipfile.ZipFile(tmp_path / "whl" / "pkg-1.0-py3-none-any.whl") as z:
        assert [i.filename for i in z.infolist()] == list(members)
        for info in z.infolist():
            assert (z.read(info), info.external_attr >> 16) == members[info.filename]

    part = tmp_path / "carry" / "part-2" / "wheels.tar.xz.002"
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # flipped: a byte set to 0 may have been 0 already
    damaged = wheel_parts("unpack", "--parts", str(tmp_path / "carry"), "--out", str(tmp_path / "again"))
    assert damaged.returncode != 0 and damaged.stderr.strip() == f"wheel_parts: {part} is damaged (size or sha256 differs from the manifest); carry it again"
    part.unlink()
    missing = wheel_parts("unpack", "--parts", str(tmp_path / "carry"), "--out", str(tmp_path / "again"))
    assert missing.returncode != 0 and f"{part} is missing" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "again").exists()  # checked before anything is written
