"""fp16 ONNX (onnxconverter-common): float32 I/O, checker-clean, and within parity bounds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from srdeploy.export import parity
from srdeploy.export.fp16 import convert_fp16
from srdeploy.runtime import contract


@pytest.fixture
def tiny_fp16(tiny_onnx):
    return convert_fp16(tiny_onnx, tiny_onnx.with_name("tiny.fp16.onnx"))


def test_fp16_graph_keeps_float32_io(tiny_onnx, tiny_fp16):
    model = onnx.load(str(tiny_fp16))
    onnx.checker.check_model(model, full_check=True)
    weights = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)
    assert set(weights) == {"FLOAT16"}  # every weight converted
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # float32 -> float16 after lr, float16 -> float32 before sr
    assert [list(c.input) for c in casts if c.input == ["lr"]] == [["lr"]] and [c for c in casts if c.output == ["sr"]]
    info = contract.validate_onnx_model(tiny_fp16)  # float32 lr/sr, dynamic N/H/W
    assert info["precision"] == "fp16" and info["scale"] == 4 and info["ir_version"] <= contract.MAX_IR_VERSION
    assert tiny_fp16.stat().st_size < 0.6 * tiny_onnx.stat().st_size


def test_fp16_parity_with_fp32_including_black_and_white(tiny_onnx, tiny_fp16):
    batches = parity.parity_batches()
    assert [name for name, _ in batches] == ["patterns", "black+white"]
    assert batches[0][1].shape == (4, 3, 37, 53) and batches[1][1].shape == (2, 3, 37, 53)
    ort32 = parity.run_backend(parity.runtime_backend(tiny_onnx), batches)
    ort16 = parity.run_backend(parity.runtime_backend(tiny_fp16), batches)
    assert all(o.dtype == np.float32 for o in ort16)
    row = parity.compare("onnxruntime fp16", ort16, "onnxruntime fp32", ort32, parity.FP16_LIMITS)
    assert row.ok, row.failures
    assert row.nonfinite == 0 and row.collapsed == 0 and row.psnr >= 45.0
    assert 0 < row.max_abs < 5e-3  # really fp16: not bit-identical, not far off
    black, white = ort16[1]
    assert not parity._flat(black) and not parity._flat(white)  # the generator's output on flat frames has content


def test_refuses_a_source_that_breaks_the_contract(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["sr"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["n", 3, "h", "w"])],
    )
    src = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    with pytest.raises(ValueError, match=r"other\.onnx: does not match"):
        convert_fp16(src, tmp_path / "other.fp16.onnx")
    assert not (tmp_path / "other.fp16.onnx").exists()
