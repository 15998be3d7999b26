"""What ``--model`` names: a generator shipped inside the package, or a file.

Shipped models are package data, ``srdeploy/models/<name>/`` holding ``model.onnx`` and
``manifest.json`` (sha256 of every file; often ``generator.pt`` too). ``default`` is
``srresnet``. Before a shipped model is used, every file its manifest lists is checked
against its sha256, so a damaged install fails loudly instead of upscaling with garbage.
A path to an ``.onnx`` or ``.engine`` file is used as given; when a manifest beside it
lists that file, its sha256 is checked too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srdeploy.io.files import sha256_file
from srdeploy.runtime.contract import MANIFEST_NAME
from srdeploy.runtime.manifest import read_manifest, verify_manifest

# Package data folder; tests point this at a folder of their own.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
SHIPPED = ("srresnet", "srgan")
ALIASES = {"default": "srresnet"}
NAMES = (*ALIASES, *SHIPPED)  # what --model takes besides a path: the one list of model names
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # what `srdeploy export --int8` writes beside model.onnx
GENERATOR_FILE = "generator.pt"  # the PyTorch state_dict beside model.onnx (shipped models, exports): for --init, bench's PyTorch row
MODEL_SUFFIXES = (".onnx", ".engine")
CHECKPOINT_SUFFIXES = (".pt", ".pth")  # what srdeploy train writes: not runnable until exported


class ModelError(ValueError):
    """A model that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved, integrity-checked model file."""

    name: str  # the shipped name ("srresnet") or the path as given
    path: Path
    kind: str  # "onnx" or "engine"
    sha256: str
    manifest: dict[str, Any] | None


def shipped_models() -> list[str]:
    """Names whose files are present in this build."""
    return [name for name in SHIPPED if (MODELS_DIR / name / MODEL_FILE).is_file()]


def resolve_model(spec: str | os.PathLike = "default") -> ModelRef:
    """``default`` | ``srresnet`` | ``srgan`` | a path to ``.onnx``/``.engine`` -> ModelRef."""
    text = os.fspath(spec)
    name = ALIASES.get(text, text)
    if name in SHIPPED:
        return _shipped(name, requested=text)
    path = Path(text).expanduser()
    if path.is_dir():  # an export's folder, most likely
        raise ModelError(f"{path} is a folder, not a model file: name the .onnx or .engine file inside it")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ModelError(f"{path} is a training checkpoint; export it first (srdeploy export {path} -o DIR) and pass DIR/{MODEL_FILE}")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        choices = ", ".join(NAMES)
        raise ModelError(f"unknown model {text!r}: use one of {choices}, or a path to a .onnx or .engine file")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        sha = sha256_file(path)
    except OSError as e:  # permissions, a FIFO, a failing disk
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    manifest = _manifest_beside(path, sha)
    return ModelRef(text, path, path.suffix.lower().lstrip("."), sha, manifest)


def _shipped(name: str, requested: str) -> ModelRef:
    folder = MODELS_DIR / name
    path = folder / MODEL_FILE
    if not path.is_file():
        present = ", ".join(shipped_models()) or "none"
        alias = f" ({requested} = {name})" if requested != name else ""
        raise ModelError(
            f"model {name!r}{alias} is not shipped in this build of srdeploy (no {path}); "
            f"shipped models: {present}. Pass --model PATH.onnx to use an exported model."
        )
    try:
        manifest = verify_manifest(folder)
    except (OSError, ValueError) as e:
        raise ModelError(f"shipped model {name!r} failed its integrity check: {e}. Reinstall srdeploy.") from None
    entry = manifest["files"].get(MODEL_FILE)
    if entry is None:
        raise ModelError(f"shipped model {name!r}: {folder / MANIFEST_NAME} does not list {MODEL_FILE}. Reinstall srdeploy.")
    return ModelRef(name, path, "onnx", entry["sha256"], manifest)


def _manifest_beside(path: Path, sha: str) -> dict[str, Any] | None:
    """The manifest in ``path``'s folder when it describes ``path``; a sha256 mismatch is an error."""
    manifest_path = path.parent / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = read_manifest(manifest_path)
    except ValueError as e:
        raise ModelError(f"{path}: the manifest beside it is unreadable: {e}") from None
    except OSError as e:
        raise ModelError(f"{path}: the manifest beside it cannot be read: {manifest_path} ({e.strerror or e})") from None
    entry = manifest["files"].get(path.name)
    if entry is None:
        return None  # it describes other files
    if entry["sha256"] != sha:
        raise ModelError(f"{path}: sha256 {sha} differs from {entry['sha256']} in {manifest_path}; the file is damaged or replaced")
    return manifest
