"""export_onnx: the graph meets the contract and matches the PyTorch generator."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from srdeploy.export.onnx_export import ContractGenerator, export_onnx
from srdeploy.runtime import contract
from srdeploy.training.models import Generator


def _torch_sr(generator, lr: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ContractGenerator(generator).eval()(torch.from_numpy(lr)).numpy()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_graph_is_clean_and_self_contained(tiny_generator, tmp_path):
    from srdeploy.export.onnx_export import export_onnx

    exported = export_onnx(tiny_generator, tmp_path / "tiny.onnx")  # not the cached fixture: what an export leaves
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert "BatchNormalization" not in ops and ops["Conv"] == 7  # head, 2 per block, body tail, 2 upsamplers, tail
    assert ops["Clip"] == 1 and ops["Tanh"] == 1  # rescale and clamp live in the graph
    assert model.ir_version <= contract.MAX_IR_VERSION
    assert [o.version for o in model.opset_import if o.domain == ""] == [18]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not any(n.metadata_props for n in model.graph.node)  # no stack traces with local paths
    assert list(tmp_path.iterdir()) == [exported]  # one file, no temp or .data files


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (3, 3, 16, 16), (1, 3, 37, 53), (3, 3, 24, 9), (2, 3, 1, 1)])
def test_dynamic_shapes_match_torch(tiny_generator, tiny_onnx, shape, rng):
    lr = rng.random(shape, dtype=np.float32)
    (sr,) = _session(tiny_onnx).run(None, {"lr": lr})
    n, c, h, w = shape
    assert sr.shape == (n, c, 4 * h, 4 * w) and sr.dtype == np.float32
    assert 0.0 <= sr.min() and sr.max() <= 1.0
    np.testing.assert_allclose(sr, _torch_sr(tiny_generator, lr), atol=1e-4, rtol=0)


def test_export_is_byte_reproducible_and_restores_training_mode(tiny_generator, tiny_onnx, tmp_path):
    tiny_generator.train()
    again = export_onnx(tiny_generator, tmp_path / "again.onnx")
    assert tiny_generator.training  # put back as the caller had it
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (tiny_onnx, again)]
    assert digest[0] == digest[1]  # eval-mode export either way; no timestamps or paths inside


def test_opset_17_via_the_version_converter(tiny_generator, tmp_path, rng):
    path = export_onnx(tiny_generator, tmp_path / "op17.onnx", opset=17)
    info = contract.validate_onnx_model(path)
    assert info["opset"] == 17 and info["ir_version"] <= contract.MAX_IR_VERSION
    lr = rng.random((2, 3, 11, 7), dtype=np.float32)
    np.testing.assert_allclose(_session(path).run(None, {"lr": lr})[0], _torch_sr(tiny_generator, lr), atol=1e-4, rtol=0)


def test_an_opset_the_converter_cannot_reach_is_an_error_not_the_native_one(tiny_generator, tmp_path):
    """The exporter falls back to opset 18 when conversion fails; nothing is written then."""
    import onnx

    too_new = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(ValueError, match=f"opset {too_new} was asked for and the exporter wrote opset 18"):
        export_onnx(tiny_generator, tmp_path / "new.onnx", opset=too_new)
    assert not list(tmp_path.iterdir())


def test_bn_statistics_are_folded_not_dropped(tiny_generator, tiny_onnx, rng):
    """Outputs must differ from a generator whose BN stats are reset: folding used them."""
    lr = rng.random((1, 3, 12, 12), dtype=np.float32)
    fresh = Generator(num_blocks=1, channels=8, scale=4)
    fresh.load_state_dict({k: v for k, v in tiny_generator.state_dict().items() if "running" not in k}, strict=False)
    ours = _session(tiny_onnx).run(None, {"lr": lr})[0]
    assert np.abs(ours - _torch_sr(fresh.eval(), lr)).max() > 1e-3
    np.testing.assert_allclose(ours, _torch_sr(tiny_generator, lr), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_real_b8_generator_exports_and_matches(tmp_path, rng):
    torch.manual_seed(1)
    generator = Generator(num_blocks=8, channels=64, scale=4).eval()  # the seed's configuration
    path = export_onnx(generator, tmp_path / "b8.onnx")
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    assert "BatchNormalization" not in ops and ops["Conv"] == 2 * 8 + 5
    assert 3.5 * 2**20 < path.stat().st_size < 4 * 2**20  # ~0.96M fp32 parameters, inline
    lr = rng.random((2, 3, 37, 53), dtype=np.float32)
    np.testing.assert_allclose(_session(path).run(None, {"lr": lr})[0], _torch_sr(generator, lr), atol=1e-4, rtol=0)
