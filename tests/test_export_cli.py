"""`srdeploy export` run as a subprocess on checkpoints written with save_checkpoint."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SRDEPLOY

from srdeploy.runtime import openvino_engine, zoo
from srdeploy.runtime.manifest import verify_manifest

CONFIG = {"preset": "seed", "num_blocks": 1, "channels": 8, "lr": 1e-4, "crop": (96, 96), "degradation": "bicubic"}


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SRDEPLOY), "export", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture
def training_checkpoint(tiny_generator, tmp_path):
    from srdeploy.training.checkpoint import save_checkpoint

    state = {"generator": tiny_generator.state_dict(), "arch": tiny_generator.arch(), "config": CONFIG, "step": 1200, "epoch": 3, "discriminator": None}
    return save_checkpoint(state, tmp_path / "srresnet_step1200.pt")


def test_command_module_does_not_import_torch():
    code = "import sys, srdeploy.cli, srdeploy.export.cli; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_export_fp16_check_writes_everything_and_passes(training_checkpoint, tmp_path):
    out = tmp_path / "export"
    proc = run_export(training_checkpoint, "-o", out, "--fp16", "--check")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("backend")) :]
    engines = [row.split()[0] + " " + row.split()[1] for row in table[2:]]
    bf16 = ["openvino bf16"] if openvino_engine.native_bf16() else []  # CPUs with bf16 units only: the machine decides
    assert engines == ["torch fp32", "onnxruntime fp32", "openvino fp32", *bf16, "onnxruntime fp16"]
    assert all(row.endswith("ok") for row in table[2:])

    manifest = verify_manifest(out)  # every sha256 matches
    assert sorted(manifest["files"]) == ["generator.pt", "model.fp16.onnx", "model.onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["generator.pt", "manifest.json", "model.fp16.onnx", "model.onnx"]
    assert manifest["scale"] == 4 and manifest["arch"] == {"num_blocks": 1, "channels": 8, "scale": 4}
    assert manifest["training_config"] == {**CONFIG, "crop": [96, 96]}
    digest = hashlib.sha256(training_checkpoint.read_bytes()).hexdigest()
    assert manifest["source"] == {"file": training_checkpoint.name, "sha256": digest, "weights": "generator", "step": 1200, "epoch": 3}
    assert manifest["input"]["name"] == "lr" and manifest["input"]["range"] == [0.0, 1.0]
    assert manifest["output"]["shape"] == ["batch", 3, "4*height", "4*width"] and manifest["output"]["range"] == [0.0, 1.0]
    assert manifest["opset"] == 18 and manifest["ir_version"] <= 13
    assert manifest["models"]["model.fp16.onnx"]["precision"] == "fp16" and manifest["models"]["model.fp16.onnx"]["io_dtype"] == "float32"
    # each file names the tool that made it: model.onnx's is the exporter, the fp16 file's its converter
    assert manifest["exporter"] == "torch.onnx.export(dynamo=True)" and manifest["models"]["model.fp16.onnx"]["built_from"] == "model.onnx"
    assert manifest["models"]["model.fp16.onnx"]["tool"].startswith("onnxconverter-common float16")
    versions = manifest["versions"]
    assert versions["torch"] and versions["onnx"] and versions["onnxruntime"] and "tensorrt" in versions
    rows = {r["backend"]: r for r in manifest["parity"]["rows"]}
    assert rows["onnxruntime fp32 (model.onnx)"]["max_abs"] <= 1e-4 and rows["openvino fp32 (model.onnx)"]["max_abs"] <= 1e-4
    assert rows["onnxruntime fp16 (model.fp16.onnx)"]["psnr_db"] >= 45 and all(r["ok"] for r in rows.values())
    assert set(manifest["export_seconds"]) == {"onnx fp32", "onnx fp16", "parity"}
    json.dumps(manifest, allow_nan=False)


@pytest.mark.slow
def test_tensorrt_fails_fast_after_writing_onnx(tiny_generator, tmp_path):
    import torch

    from srdeploy.runtime.tensorrt import TensorRTUnavailable, require_tensorrt

    try:  # decided by the machine, not by the command's result: a command that wrongly exits 0 must fail here
        require_tensorrt()
        pytest.skip("TensorRT and a GPU are present here: engines would be built")
    except TensorRTUnavailable:
        pass
    bare = tmp_path / "generator_state.pt"
    torch.save(tiny_generator.state_dict(), bare)  # a bare state_dict is accepted too
    out = tmp_path / "export"
    proc = run_export(bare, "-o", out, "--tensorrt")
    assert proc.returncode == 1
    assert "--tensorrt: TensorRT" in proc.stderr and "pip install 'srdeploy[tensorrt]'" in proc.stderr
    assert "The ONNX outputs are written (generator.pt, model.onnx in" in proc.stderr
    manifest = verify_manifest(out)
    assert list(manifest["files"]) == ["model.onnx", "generator.pt"] and manifest["source"]["file"] == bare.name
    assert manifest["source"]["weights"] == "state_dict"
    assert manifest["training_config"] is None
    assert not list(out.glob("*.engine"))


def test_not_a_generator_checkpoint_is_refused(tmp_path):
    import torch

    bad = tmp_path / "discriminator.pt"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    proc = run_export(bad, "-o", tmp_path / "out")
    assert proc.returncode == 2  # refused before anything is written, as a usage error
    assert f"{bad}: not a generator state_dict: missing key 'head.0.weight'" in proc.stderr
    assert not (tmp_path / "out").exists()

    proc = run_export(tmp_path / "absent.pt", "-o", tmp_path / "out")
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "absent.pt" in proc.stderr
    proc = run_export(tmp_path, "-o", tmp_path / "out")  # a run folder
    assert proc.returncode == 2 and f"{tmp_path} is a folder; give a checkpoint file in it, such as {tmp_path / 'last.pt'}" in proc.stderr
    calibration = tmp_path / "one_face.png"
    calibration.write_bytes(b"")
    proc = run_export(bad, "-o", tmp_path / "out", "--int8", "--calibration", calibration)
    assert proc.returncode == 2 and "is a file" in proc.stderr
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickled without weights_only, this would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_carries_code_is_refused_in_one_line_without_running_it(tmp_path):
    import torch

    marker, evil = tmp_path / "ran.txt", tmp_path / "evil.pt"
    torch.save({"generator": _Payload(marker)}, evil)
    proc = run_export(evil, "-o", tmp_path / "out")
    assert proc.returncode == 2 and not marker.exists() and not (tmp_path / "out").exists()
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"Error: {evil}: not a loadable weights-only checkpoint (UnpicklingError: ") and "open" in line
    assert line.endswith("); srdeploy loads tensors and plain data only, never code") and "weights_only" not in line


def test_an_empty_or_truncated_checkpoint_is_named_as_such_not_as_unsafe(tmp_path):
    import torch

    from srdeploy.training.checkpoint import load_checkpoint

    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a folder; give a checkpoint file in it, such as {tmp_path / 'last.pt'}"):
        load_checkpoint(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pt: empty file \(0 bytes\), not a checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "notes.pt").write_text("hi\n")  # torch itself says "KeyError: 105"
    with pytest.raises(ValueError, match=r"notes.pt: not a PyTorch checkpoint \(the file holds text\)"):
        load_checkpoint(tmp_path / "notes.pt")
    (tmp_path / "photo.pt").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    with pytest.raises(ValueError, match=r"photo.pt: not a PyTorch checkpoint \(a JPEG file\)"):
        load_checkpoint(tmp_path / "photo.pt")
    # torch's legacy format cut short: a pickle that ends early raises an EOFError with no message
    torch.save([1, 2, 3], tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "legacy.pt").read_bytes()[:4])
    with pytest.raises(ValueError, match=r"cut.pt: not a loadable weights-only checkpoint \(EOFError: the file ends early \(truncated\)\)"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.slow
def test_failed_parity_exits_non_zero_naming_artifact_and_metric(tmp_path):
    """A generator whose weights exceed fp16's range: fp32 is exact, fp16 must fail."""
    import torch

    from srdeploy.training.checkpoint import save_checkpoint
    from srdeploy.training.models import Generator

    torch.manual_seed(0)
    generator = Generator(num_blocks=1, channels=8, scale=4)
    with torch.no_grad():  # same function in fp32; in fp16 the 1e6-scaled weights clip at 1e4
        generator.upsample[-1].conv.weight.mul_(1e6)
        generator.upsample[-1].conv.bias.mul_(1e6)
        generator.tail.weight.div_(1e6)
    ckpt = save_checkpoint({"generator": generator.state_dict(), "arch": generator.arch()}, tmp_path / "wide.pt")
    proc = run_export(ckpt, "-o", tmp_path / "out", "--fp16", "--check")
    assert proc.returncode == 1
    assert "parity check failed" in proc.stderr
    assert "onnxruntime fp16 (model.fp16.onnx): PSNR" in proc.stderr and "< 45 dB vs onnxruntime fp32" in proc.stderr
    assert "weight tensors exceed the fp16 range" in proc.stderr  # the converter's clipping is reported
    fp32_row = next(line for line in proc.stdout.splitlines() if line.startswith("onnxruntime fp32"))
    assert fp32_row.endswith("ok")
    manifest = verify_manifest(tmp_path / "out")
    assert {r["backend"]: r["ok"] for r in manifest["parity"]["rows"]}["onnxruntime fp16 (model.fp16.onnx)"] is False
    assert [r["ok"] for r in manifest["parity"]["rows"]].count(False) == 1  # fp32 on every engine holds


def test_an_opset_newer_than_onnx_knows_is_a_usage_error(tmp_path):
    run = run_export(tmp_path / "last.pt", "-o", tmp_path / "out", "--opset", 99)
    assert run.returncode == 2 and "--opset 99: the installed onnx" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_earlier_export_is_replaced_only_with_force(training_checkpoint, tmp_path):
    out = tmp_path / "exported"
    assert run_export(training_checkpoint, "-o", out, "--fp16").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_export(training_checkpoint, "-o", out)
    assert again.returncode == 2 and f"-o {out} holds an earlier export (manifest.json); --force replaces it" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    forced = run_export(training_checkpoint, "-o", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "removed artifacts of an earlier export: model.fp16.onnx" in forced.stdout


@pytest.mark.skipif("srresnet" not in zoo.shipped_models(), reason="no default (srresnet) model is shipped in this build")
def test_a_shipped_name_exports_its_generator(tmp_path):
    """`srdeploy export default` re-exports the shipped generator.pt (for --int8, --fp16)."""
    proc = run_export("default", "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    manifest = verify_manifest(tmp_path / "out")
    assert manifest["source"]["file"] == "generator.pt" and manifest["arch"] == zoo.resolve_model("default").manifest["arch"]


@pytest.mark.parametrize("where", ["under a file", "a link loop", "inside a link loop"])
def test_an_output_folder_that_cannot_be_made_is_a_usage_error_before_any_work(training_checkpoint, tmp_path, where):
    (tmp_path / "file").touch()
    (tmp_path / "loop").symlink_to("loop")
    out, why = {
        "under a file": (tmp_path / "file" / "out", "Not a directory"),
        "a link loop": (tmp_path / "loop", "it exists and is not a folder"),
        "inside a link loop": (tmp_path / "loop" / "out", "Too many levels of symbolic links"),
    }[where]
    run = run_export(training_checkpoint, "-o", out)
    assert run.returncode == 2 and f"Error: -o {out}: cannot create this folder ({why})" in run.stderr, run.stderr
    assert "unexpected" not in run.stderr and "Traceback" not in run.stderr

