"""Build ``MODEL_STORE/<name>.mar`` with torch-model-archiver, and the server config.

The archive holds the ONNX model, a manifest.json with its sha256 (checked when a worker
loads it), model-config.yaml, and a short entry file that subclasses srdeploy's
handler: the code itself comes from the srdeploy installed where TorchServe runs, never
from this checkout. Both files appear atomically (staged, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from srdeploy import SCALE, __version__
from srdeploy.handlers import config as serve_config
from srdeploy.handlers.config import CONFIG_PROPERTIES_NAME, MODEL_CONFIG_NAME, Ports, ServeConfig
from srdeploy.io.files import FolderBusy, atomic_write_bytes, folder_lock
from srdeploy.runtime import tiling, zoo
from srdeploy.runtime.contract import MANIFEST_NAME, validate_onnx_model
from srdeploy.runtime.engines import check_request
from srdeploy.runtime.manifest import write_manifest
from srdeploy.runtime.zoo import MODEL_FILE, ModelError, ModelRef, resolve_model

ENTRY_MODULE = "srdeploy_entry"
LOCK_NAME = ".srdeploy-package.lock"  # in the model store, held while an archive is built there
STAGING_MARK = ".mar-"  # in the name of a staging folder: .NAME.mar-XXXXXXXX
# TorchServe's own rule for model names (they become URL path segments).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME = 200  # NAME.mar and its staging folder's name stay under the file systems' 255 bytes
ENTRY_SOURCE = '''\
"""TorchServe entry for the {name} model. The handler is srdeploy's own, imported from
the srdeploy installed beside TorchServe (pip install 'srdeploy[serve]')."""

try:
    from srdeploy.handlers.torchserve_handler import UpscaleHandler
except ImportError as e:  # not ImportError: TorchServe would retry it as a built-in handler name
    raise RuntimeError(f"the {name} model needs srdeploy {version} or later in TorchServe's Python: pip install 'srdeploy[serve]' ({{e}})") from e


class SrdeployUpscaleHandler(UpscaleHandler):
    """TorchServe instantiates the one class defined in its entry module."""
'''


class PackageError(RuntimeError):
    """The archive could not be built; the message says why."""


@dataclass(frozen=True)
class Packaged:
    archive: Path
    config_properties: Path
    model_name: str
    model_sha256: str
    response_timeout_s: int


def build_archive(
    model: str | os.PathLike,
    store: str | os.PathLike,
    name: str | None = None,
    config: ServeConfig = ServeConfig(),
    ports: Ports = Ports(),
    properties_path: str | os.PathLike | None = None,
    force: bool = False,
) -> Packaged:
    """``model`` (a name in zoo.NAMES or PATH.onnx) -> ``store/<name>.mar`` and
    config.properties (default: beside the store folder). ``name`` defaults to the
    model's: the shipped name (``default`` is ``srresnet``) or the file's stem. Raises
    ModelError for an unusable model (ValueError for one that breaks the export contract),
    ProviderError for a provider or precision the model cannot run on, PackageError for
    everything else."""
    ref = resolve_model(model)
    name = name or default_name(ref)
    if not NAME_PATTERN.fullmatch(name):
        raise PackageError(f"model name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    if len(name) > MAX_NAME:
        raise PackageError(f"model name {name[:24]}...: {len(name)} characters; use at most {MAX_NAME}")
    if ref.kind != "onnx":
        raise ModelError(f"{ref.path}: TorchServe archives carry an ONNX model; package the .onnx the engine was built from")
    described = validate_onnx_model(ref.path)  # ValueError naming the file: a worker would refuse it later
    if described["scale"] not in (None, SCALE):  # the server's response limits are sized for x4 (handlers.config)
        raise ModelError(f"{ref.path}: an x{described['scale']} model; srdeploy serves x{SCALE} models")
    model_precision = described["precision"] or "fp32"
    check_request(config.provider, config.precision, model_precision)  # as a worker on any machine would; bf16 depends on the server's CPU
    problem = tiling.tile_problem(config.tile, tiling.overlap_of_file(ref.path), untiled=False)  # every worker would refuse it
    if problem:
        raise PackageError(problem)
    if importlib.util.find_spec("model_archiver") is None:  # before anything is written
        raise PackageError("building an archive needs torch-model-archiver, which is not installed: pip install 'srdeploy[serve]'")
    store = _resolved(store, "model store")
    if store.exists() and not store.is_dir():
        raise PackageError(f"model store {store} exists and is not a folder")
    archive = store / f"{name}.mar"
    if archive.exists() and not force:
        raise PackageError(f"{archive} already exists; pass --force to replace it")
    properties = _resolved(properties_path, "--config") if properties_path else store.parent / CONFIG_PROPERTIES_NAME
    if properties.exists() and not force:  # another server's, or edited by hand
        raise PackageError(f"{properties} already exists; pass --force to replace it, or --config to write another")
    if not properties.parent.is_dir():
        raise PackageError(f"--config {properties}: there is no folder {properties.parent}")
    timeout = config.response_timeout_s or serve_config.response_timeout(config, ref.path)

    # Written together or not at all: a failed run leaves neither file, nor a store folder it made.
    made_store = not store.exists()
    store.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(store, LOCK_NAME, f"another srdeploy package is writing to {store}; wait for it to finish"))
        except (FolderBusy, OSError) as e:
            raise PackageError(str(e) if isinstance(e, FolderBusy) else f"cannot lock the model store {store}: {LOCK_NAME} ({e.strerror or e})") from None
        for stale in store.glob(f".*{STAGING_MARK}*"):  # a killed run's staging folder: every live run holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        _stage_and_publish(ref, name, config, ports, store, archive, properties, timeout, made_store)
    return Packaged(archive, properties, name, ref.sha256, timeout)


def _stage_and_publish(ref: ModelRef, name: str, config: ServeConfig, ports: Ports, store: Path, archive: Path, properties: Path, timeout: int, made_store: bool) -> None:
    """Build the archive in a staging folder in the store, write config.properties, then
    move the archive into place: both files or neither."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}{STAGING_MARK}", dir=store))  # same file system: os.replace is atomic
    except BaseException:
        if made_store:
            shutil.rmtree(store, ignore_errors=True)
        raise
    try:
        files = staging / "files"
        files.mkdir()
        shutil.copyfile(ref.path, files / MODEL_FILE)
        write_manifest(files, _manifest_info(ref, name, config), files=[MODEL_FILE])
        (files / MODEL_CONFIG_NAME).write_text(serve_config.model_config_yaml(config, timeout, name), encoding="utf-8")
        entry = files / f"{ENTRY_MODULE}.py"
        entry.write_text(ENTRY_SOURCE.format(name=name, version=__version__), encoding="utf-8")
        _run_archiver(name, files, entry, staging)
        text = serve_config.config_properties(store, name, config, timeout, ports)
        replaced = properties.read_bytes() if properties.is_file() else None  # --force: put back if the archive fails
        try:
            atomic_write_bytes(properties, text.encode("ascii"))
        except OSError as e:
            raise PackageError(f"cannot write {properties} ({e.strerror or e}); nothing was written") from None
        try:
            os.replace(staging / f"{name}.mar", archive)
        except BaseException:
            if replaced is None:
                properties.unlink(missing_ok=True)
            else:
                atomic_write_bytes(properties, replaced)
            raise
    except BaseException:
        if made_store:
            shutil.rmtree(store, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _resolved(path: str | os.PathLike, what: str) -> Path:
    """``path`` made absolute through its links; a link loop named as such (Python raises
    RuntimeError for one before 3.13, OSError after)."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError):
        raise PackageError(f"{what} {path}: a symbolic link loop") from None


def default_name(ref: ModelRef) -> str:
    """What a model is served as when no --name is given: ``srresnet`` for ``default``."""
    return ref.name if ref.name in zoo.SHIPPED else Path(ref.name).stem


def _manifest_info(ref: ModelRef, name: str, config: ServeConfig) -> dict:
    """The source manifest's description of the model (training config, metrics...) with
    the packaging facts added; no local paths."""
    info = {k: v for k, v in (ref.manifest or {}).items() if k not in ("files", "manifest_version")}
    source = ref.name if ref.name in zoo.SHIPPED else Path(ref.name).name
    info["torchserve"] = {"model_name": name, "source_model": source, "srdeploy_version": __version__, "max_pixels": config.max_pixels,
                          "tile": config.tile, "provider": config.provider}
    return info


def _run_archiver(name: str, files: Path, entry: Path, staging: Path) -> None:
    """torch-model-archiver in a subprocess, with a private TMPDIR: it assembles archives
    in $TMPDIR/<name> and deletes that folder first, which two concurrent builds of the
    same name would otherwise share."""
    tmp = staging / "tmp"
    tmp.mkdir()
    command = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", name,
        "--version", __version__,
        "--serialized-file", str(files / MODEL_FILE),
        "--handler", str(entry),
        "--extra-files", str(files / MANIFEST_NAME),
        "--config-file", str(files / MODEL_CONFIG_NAME),
        "--export-path", str(staging),
    ]
    env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    except FileNotFoundError as e:
        raise PackageError(f"cannot run torch-model-archiver ({e})") from None
    except subprocess.TimeoutExpired:
        raise PackageError("torch-model-archiver did not finish within 600 s; nothing was written") from None
    if done.returncode != 0 or not (staging / f"{name}.mar").is_file():
        detail = (done.stderr or done.stdout).strip().splitlines()
        hint = " (install it: pip install 'srdeploy[serve]')" if "No module named" in done.stderr else ""
        raise PackageError(f"torch-model-archiver failed with exit status {done.returncode}{hint}: {' / '.join(detail[-5:]) or 'no output'}")
