"""manifest.json beside every exported model: what the files are and their sha256.

Torch-free: the runtime calls :func:`verify_manifest` before trusting a shipped model.
Layout (``info`` keys are the exporter's; srdeploy adds ``manifest_version`` and ``files``)::

    {"manifest_version": 1, ...info..., "files": {"model.onnx": {"sha256": "<hex>", "bytes": 123}}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from srdeploy.io.files import atomic_write_bytes, read_regular, sha256_file
from srdeploy.runtime.contract import MANIFEST_NAME

MANIFEST_VERSION = 1


def write_manifest(directory: str | os.PathLike, info: dict[str, Any], files: Iterable[str] | None = None) -> Path:
    """Write ``directory/manifest.json``: ``info`` plus the sha256 and size of each file.

    ``files`` are names inside ``directory``; by default every regular, non-hidden file
    there except the manifest itself. ``info`` must be JSON-serialisable.
    """
    directory = Path(directory)
    if files is None:
        files = sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_NAME)
    entries = {}
    for name in files:
        target = directory / _plain_name(name, directory / MANIFEST_NAME)
        if not target.is_file():
            raise FileNotFoundError(f"{directory / MANIFEST_NAME}: listed file {target} does not exist")
        entries[name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    manifest = {"manifest_version": MANIFEST_VERSION, **info, "files": entries}
    text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(directory / MANIFEST_NAME, text.encode("utf-8"))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a manifest given its file or the folder holding ``manifest.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        manifest = json.loads(read_regular(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON manifest ({e})") from e
    except (RecursionError, ValueError) as e:  # nesting deeper than the parser goes; an integer of thousands of digits
        raise ValueError(f"{path}: not a manifest srdeploy reads ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{path}: not an srdeploy manifest (no 'files' table)")
    for name, entry in manifest["files"].items():
        _plain_name(name, path)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ValueError(f"{path}: entry for {name!r} has no sha256")
    return manifest


def verify_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Check every listed file against its sha256; return the manifest.

    Raises ValueError naming the first file that is missing or whose sha256 differs.
    """
    path = Path(path)
    manifest = read_manifest(path)
    directory = path if path.is_dir() else path.parent
    for name, entry in manifest["files"].items():
        target = directory / name
        if not target.is_file():
            raise ValueError(f"{target}: listed in {MANIFEST_NAME} but missing")
        actual = sha256_file(target)
        if actual != entry["sha256"]:
            raise ValueError(f"{target}: sha256 {actual} differs from {entry['sha256']} in {MANIFEST_NAME}")
    return manifest


def _plain_name(name: str, where: Path) -> str:
    """Manifest entries are bare file names in the manifest's folder: no paths, no '..'."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"{where}: file entry {name!r} is not a plain file name in the model folder")
    return name
