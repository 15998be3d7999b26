"""manifest.json: hashes written, read back, and tampering caught (torch-free)."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from srdeploy.io.files import atomic_write_bytes, atomic_writer
from srdeploy.runtime.contract import MANIFEST_NAME
from srdeploy.runtime.manifest import read_manifest, verify_manifest, write_manifest


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"fp32 model bytes")
    (tmp_path / "model.fp16.onnx").write_bytes(b"fp16 model bytes, different")
    return tmp_path


def test_write_lists_every_file_with_its_sha256(model_dir):
    path = write_manifest(model_dir, {"scale": 4, "opset": 18})
    assert path == model_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    assert manifest["scale"] == 4 and manifest["opset"] == 18 and manifest["manifest_version"] == 1
    assert sorted(manifest["files"]) == ["model.fp16.onnx", "model.onnx"]
    for name, entry in manifest["files"].items():
        data = (model_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert read_manifest(model_dir) == manifest == read_manifest(path)
    assert verify_manifest(model_dir) == manifest


def test_explicit_file_list_and_no_temp_files_left(model_dir):
    write_manifest(model_dir, {}, files=["model.onnx"])
    assert list(read_manifest(model_dir)["files"]) == ["model.onnx"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.fp16.onnx", "model.onnx"]
    assert stat.S_IMODE((model_dir / MANIFEST_NAME).stat().st_mode) == 0o644


def test_tampered_file_is_named(model_dir):
    write_manifest(model_dir, {})
    (model_dir / "model.fp16.onnx").write_bytes(b"swapped weights")
    with pytest.raises(ValueError, match=r"model\.fp16\.onnx: sha256 [0-9a-f]{64} differs"):
        verify_manifest(model_dir)


def test_missing_file_is_named(model_dir):
    write_manifest(model_dir, {})
    (model_dir / "model.onnx").unlink()
    with pytest.raises(ValueError, match=r"model\.onnx: listed in manifest\.json but missing"):
        verify_manifest(model_dir / MANIFEST_NAME)


def test_listing_a_file_that_does_not_exist_fails(model_dir):
    with pytest.raises(FileNotFoundError, match="model.engine"):
        write_manifest(model_dir, {}, files=["model.engine"])


@pytest.mark.parametrize("name", ["../outside.onnx", "sub/model.onnx", ".."])
def test_entries_must_be_plain_names(model_dir, name):
    (model_dir / MANIFEST_NAME).write_text(json.dumps({"files": {name: {"sha256": "0" * 64}}}))
    with pytest.raises(ValueError, match="not a plain file name"):
        read_manifest(model_dir)


def test_unreadable_manifests(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not a JSON manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"scale": 4}))
    with pytest.raises(ValueError, match="no 'files' table"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"files": {"model.onnx": {"bytes": 3}}}))
    with pytest.raises(ValueError, match="'model.onnx' has no sha256"):
        read_manifest(tmp_path)
    # What json itself refuses beyond syntax: nesting past the parser's depth, an
    # integer of thousands of digits. Still one line that names the file.
    for text in ("[" * 100_000 + "]" * 100_000, '{"files": {}, "scale": ' + "9" * 5000 + "}"):
        (tmp_path / MANIFEST_NAME).write_text(text)
        with pytest.raises(ValueError, match="manifest.json: not a manifest srdeploy reads"):
            read_manifest(tmp_path)


def test_non_json_info_is_refused_before_anything_is_written(model_dir):
    with pytest.raises(ValueError):  # NaN is not JSON
        write_manifest(model_dir, {"psnr": float("nan")})
    assert not (model_dir / MANIFEST_NAME).exists()


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(target, b"first version, longer")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_a_write_that_fails_midway_leaves_neither_a_temp_file_nor_a_changed_target(tmp_path):
    # A full disk or torch.save raising half-way: nothing sweeps a checkpoint's or an
    # export's temp files later, so the writer must remove its own.
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError, match="No space left"):
        with atomic_writer(target) as f:
            f.write(b"half of a new one")
            raise OSError(28, "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and target.read_bytes() == b"the previous checkpoint"


def test_atomic_write_fsyncs_the_file_then_its_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is durable only once the folder is fsynced: a power cut could undo it."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "file.bin", b"data")
    assert events == ["fsync file", "rename", "fsync folder"]
