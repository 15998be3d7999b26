"""export_artifacts in-process: stale artifacts, manifest metadata, the TensorRT fail-fast order."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from srdeploy.export.pipeline import _jsonable, export_artifacts
from srdeploy.runtime.manifest import verify_manifest
from srdeploy.runtime.tensorrt import TensorRTUnavailable


def test_earlier_artifacts_are_removed_and_onnx_survives_missing_tensorrt(tiny_generator, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed: the fail-fast path is not reachable here")
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.fp16.onnx").write_bytes(b"fp16 model of last week's weights")
    (out / "model.fp32.engine").write_bytes(b"engine of last week's weights")
    (out / "notes.txt").write_text("not ours: left alone")
    with pytest.raises(TensorRTUnavailable):
        export_artifacts(tiny_generator, out, meta={"config": {"lr": 1e-4}}, tensorrt=True)
    assert sorted(p.name for p in out.iterdir()) == ["generator.pt", "manifest.json", "model.onnx", "notes.txt"]
    manifest = verify_manifest(out)
    assert list(manifest["files"]) == ["model.onnx", "generator.pt"]  # notes.txt is not a model file of this export
    assert manifest["training_config"] == {"lr": 1e-4} and manifest["source"] is None
    assert manifest["receptive_radius_lr"] == tiny_generator.receptive_radius
    assert "parity" not in manifest  # --check was not asked for


def test_result_reports_what_was_removed(tiny_generator, tmp_path):
    (tmp_path / "model.fp16.engine").write_bytes(b"old")
    result = export_artifacts(tiny_generator, tmp_path)
    assert result.removed == ["model.fp16.engine"] and list(result.models) == ["model.onnx"]
    assert set(result.seconds) == {"onnx fp32"} and not result.failures


def test_a_re_export_stopped_before_its_manifest_leaves_a_model_that_runs(tiny_generator, tmp_path, monkeypatch):
    """Ctrl-C during the fp16 conversion of a second export: the new model.onnx must not
    sit beside the first export's manifest, which would call it damaged."""
    from srdeploy.export import fp16
    from srdeploy.runtime.zoo import resolve_model

    export_artifacts(tiny_generator, tmp_path, fp16=True)

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(fp16, "convert_fp16", interrupted)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in tiny_generator.parameters():
            p.add_(0.01 * torch.randn_like(p))  # other weights: another model.onnx
    with pytest.raises(KeyboardInterrupt):
        export_artifacts(tiny_generator, tmp_path, fp16=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "model.onnx"]  # the new weights, both
    assert resolve_model(tmp_path / "model.onnx").path == tmp_path / "model.onnx"


def test_checkpoint_metadata_becomes_json():
    import torch

    meta = {"crop": (96, 96), "best_psnr": float("inf"), "step": torch.tensor(7), "path": object(), "nested": {1: [None, True]}}
    as_json = _jsonable(meta)
    assert as_json["crop"] == [96, 96] and as_json["best_psnr"] == "inf" and as_json["step"] == 7
    assert as_json["nested"] == {"1": [None, True]} and isinstance(as_json["path"], str)
    json.dumps(as_json, allow_nan=False)


@pytest.fixture
def ema_checkpoint(tiny_generator, tmp_path):
    from srdeploy.training.checkpoint import save_checkpoint

    ema = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in tiny_generator.state_dict().items()}
    state = {"generator": tiny_generator.state_dict(), "generator_ema": ema, "arch": tiny_generator.arch(), "config": {"ema": 0.999}, "step": 5,
             "best": 31.25}
    return save_checkpoint(state, tmp_path / "last.pt"), ema


@pytest.mark.parametrize("weights, expected", [("auto", "generator_ema"), ("ema", "generator_ema"), ("raw", "generator")])
def test_weights_choice(ema_checkpoint, tiny_generator, weights, expected):
    import torch

    from srdeploy.export.pipeline import load_export_generator

    path, ema = ema_checkpoint
    generator, meta = load_export_generator(path, weights)
    assert meta["weights"] == expected and meta["step"] == 5 and not generator.training
    assert meta["metrics"] == {"best_val_psnr_y": 31.25}  # the manifest's training_metrics
    source = ema if expected == "generator_ema" else tiny_generator.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in generator.state_dict().items())


def test_generator_pt_holds_the_exported_weights(ema_checkpoint, tmp_path):
    """generator.pt is the state_dict model.onnx was made from (EMA here), loadable weights-only."""
    import torch

    from srdeploy.export.pipeline import load_export_generator

    path, ema = ema_checkpoint
    generator, meta = load_export_generator(path)
    export_artifacts(generator, tmp_path / "export", meta=meta, source=path)
    saved = torch.load(tmp_path / "export" / "generator.pt", weights_only=True)
    assert saved.keys() == ema.keys() and all(torch.equal(saved[k], ema[k]) for k in ema)
    assert verify_manifest(tmp_path / "export")["files"]["generator.pt"]["bytes"] > 0


def test_ema_asked_for_but_absent(tiny_generator, tmp_path):
    import torch

    from srdeploy.export.pipeline import load_export_generator

    bare = tmp_path / "bare.pt"
    torch.save(tiny_generator.state_dict(), bare)
    assert load_export_generator(bare)[1]["weights"] == "state_dict"
    with pytest.raises(ValueError, match=r"bare\.pt: has no generator_ema weights"):
        load_export_generator(bare, "ema")
    broken = tmp_path / "broken.pt"
    torch.save({"generator": {k: v for k, v in tiny_generator.state_dict().items() if k != "tail.bias"}}, broken)
    with pytest.raises(ValueError, match=r"broken\.pt: not a generator .*missing: tail\.bias"):
        load_export_generator(broken)


@pytest.mark.parametrize(
    "hostile, reason",
    [
        # A 4 MB file stating a 3,000-block model took 1.6 GB and 10 s before it was refused.
        (lambda sd: {"generator": sd, "arch": {"num_blocks": 3000, "channels": 8, "scale": 4}}, r"its arch .* does not match its weights"),
        (lambda sd: {"generator": sd, "arch": [1, 2]}, r"its arch \[1, 2\] does not match"),
        (lambda sd: {"generator": sd, "arch": {"num_blocks": "8"}}, r"does not match its weights"),
        (lambda sd: {**sd, "blocks.2999.body.0.weight": sd["blocks.0.body.0.weight"]}, r"blocks\.1 is missing among blocks\.0-2999"),
        (lambda sd: {**sd, "tail.bias": "text"}, r"'tail\.bias' is not a named tensor"),
    ],
)
def test_a_hostile_checkpoint_is_refused_in_one_line_before_anything_is_built(tiny_generator, tmp_path, hostile, reason):
    import torch

    from srdeploy.export.pipeline import load_export_generator

    path = tmp_path / "hostile.pt"
    torch.save(hostile(tiny_generator.state_dict()), path)
    with pytest.raises(ValueError, match=r"hostile\.pt: .*" + reason):
        load_export_generator(path)
