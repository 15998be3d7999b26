"""Carry wheels too big for one device call (onnxruntime-gpu: 255 MB) in parts.

A lent GPU machine takes at most 64 MiB of working tree a call, keeps ignored folders it
already has between back-to-back calls, and has no network. So, here:

    python tools/wheel_parts.py pack .whl-big/onnxruntime_gpu-*.whl --out .carry --part-mib 40

re-compresses the wheels' files as one xz stream (the CUDA provider's 271 MiB .so is 221 MiB
deflated inside the wheel and 177 MiB as xz -9), cuts it into parts of at most
``--part-mib``, and writes part K into its own folder ``.carry/part-K/`` with the manifest
beside it (file names, sizes and sha256 of every wheel member and of every part). Carry
one part folder per call, calls seconds apart; on the last one, there:

    python3 tools/wheel_parts.py unpack --parts .carry --out .whl

checks every part against the manifest, joins and decompresses them, and writes each
wheel again (stored, not deflated) with every member checked against its sha256; then
``pip install --no-index --no-deps --target ... .whl/*.whl`` as the device README says.
A missing or damaged part is a one-line error naming it (a fresh machine has lost the
earlier parts: start over). Standard library only: the device's Python runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

MANIFEST = "manifest.json"
STREAM = "wheels.tar.xz"


def pack(wheels: list[Path], out: Path, part_mib: float) -> list[Path]:
    """Write the parts and their manifests under ``out``; returns the part folders."""
    members = []
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    data = z.read(info)
                    # Numbered, not named: tar rewrites names (it drops a folder's trailing /); the manifest keeps them.
                    entry = tarfile.TarInfo(f"{len(members):06d}")
                    entry.size = len(data)
                    tar.addfile(entry, io.BytesIO(data))
                    members.append({"wheel": wheel.name, "name": info.filename, "size": len(data), "sha256": _sha256(data), "mode": info.external_attr >> 16})
    stream = _xz(tar_bytes.getvalue())
    size = int(part_mib * 2**20)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    manifest = {
        "wheels": [w.name for w in wheels], "members": members, "stream_sha256": _sha256(stream),
        "parts": [{"file": f"part-{k + 1}/{STREAM}.{k + 1:03d}", "size": len(c), "sha256": _sha256(c)} for k, c in enumerate(chunks)],
    }
    if out.exists():
        shutil.rmtree(out)
    folders = []
    for part, chunk in zip(manifest["parts"], chunks):
        path = out / part["file"]
        path.parent.mkdir(parents=True)
        path.write_bytes(chunk)
        (path.parent / MANIFEST).write_text(json.dumps(manifest))
        folders.append(path.parent)
    return folders


def unpack(parts: Path, out: Path) -> list[Path]:
    """Check, join and decompress the parts under ``parts``; write the wheels into ``out``."""
    manifests = sorted(parts.glob(f"part-*/{MANIFEST}"))
    if not manifests:
        raise SystemExit(f"wheel_parts: no part-*/{MANIFEST} under {parts}; carry the part folders first")
    manifest = json.loads(manifests[-1].read_text())
    pieces = []
    for part in manifest["parts"]:
        path = parts / part["file"]
        if not path.is_file():
            raise SystemExit(f"wheel_parts: {path} is missing (the machine was fresh, or that call did not carry it); carry every part again")
        data = path.read_bytes()
        if len(data) != part["size"] or _sha256(data) != part["sha256"]:
            raise SystemExit(f"wheel_parts: {path} is damaged (size or sha256 differs from the manifest); carry it again")
        pieces.append(data)
    stream = b"".join(pieces)
    if _sha256(stream) != manifest["stream_sha256"]:
        raise SystemExit("wheel_parts: the joined parts do not match the manifest; carry every part again")
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f".{name}.unpacking" for name in manifest["wheels"]}  # renamed once every member checks out
    written = {name: zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) for name, path in paths.items()}
    try:
        with tarfile.open(fileobj=io.BytesIO(lzma.decompress(stream)), mode="r") as tar:
            entries = tar.getmembers()
            if len(entries) != len(manifest["members"]):
                raise SystemExit(f"wheel_parts: the parts hold {len(entries)} files, the manifest {len(manifest['members'])}")
            for member, entry in zip(manifest["members"], entries):
                data = tar.extractfile(entry).read()
                if _sha256(data) != member["sha256"]:
                    raise SystemExit(f"wheel_parts: {member['wheel']}: {member['name']} does not match the manifest")
                info = zipfile.ZipInfo(member["name"], date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = member["mode"] << 16
                written[member["wheel"]].writestr(info, data)
    except BaseException:
        for name, path in paths.items():
            written[name].close()
            path.unlink(missing_ok=True)
        raise
    for name, path in paths.items():
        written[name].close()
        path.replace(out / name)
    return [out / name for name in manifest["wheels"]]


def _xz(data: bytes) -> bytes:
    """xz -9: the xz program on every core where there is one, else Python's lzma (one core)."""
    if shutil.which("xz"):
        return subprocess.run(["xz", "-9", "-T0", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout
    return lzma.compress(data, preset=9)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="wheels -> part folders (here)")
    p.add_argument("wheels", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--part-mib", type=float, default=40.0)
    u = sub.add_parser("unpack", help="part folders -> wheels (on the device)")
    u.add_argument("--parts", type=Path, required=True)
    u.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.verb == "pack":
        for folder in pack(args.wheels, args.out, args.part_mib):
            print(f"{folder}: {sum(f.stat().st_size for f in folder.iterdir()) / 2**20:.1f} MiB")
    else:
        for wheel in unpack(args.parts, args.out):
            print(f"{wheel}: {wheel.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
