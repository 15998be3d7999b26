"""srdeploy.runtime.cpu_graph: the CPU-session rewrites keep outputs (to float rounding) and the
receptive radius, apply where they pay, and leave everything else alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_toy import build_toy_sr

from srdeploy.runtime.cpu_graph import INT8_REWRITES, rewrite_for_cpu
from srdeploy.runtime.graph import analyze
from srdeploy.runtime.zoo import resolve_model

TAIL = "tail conv moved before the last pixel shuffle"


def receptive_radius(graph):
    """The walk's radius, None when it cannot read the graph."""
    reach = analyze(graph)
    return None if reach is None else reach.receptive_radius


@pytest.mark.parametrize("blocksize", [None, 0])
def test_a_malformed_depth_to_space_is_a_graph_the_walk_does_not_know(blocksize):
    # A hostile file's missing or zero blocksize raised KeyError / ZeroDivisionError here.
    from onnx import TensorProto, helper

    attrs = {} if blocksize is None else {"blocksize": blocksize}
    node = helper.make_node("DepthToSpace", ["lr"], ["sr"], **attrs)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("lr", "sr")]
    assert analyze(helper.make_graph([node], "g", io[:1], io[1:])) is None


def run(model: onnx.ModelProto, lr: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"lr": lr})[0]


def assert_same_network(model: onnx.ModelProto, rewritten: onnx.ModelProto, rng) -> None:
    onnx.checker.check_model(rewritten, full_check=True)
    lr = rng.random((1, 3, 24, 40), dtype=np.float32)  # not square: rows and columns must not mix
    assert np.abs(run(rewritten, lr) - run(model, lr)).max() < 1e-5
    assert receptive_radius(rewritten.graph) == receptive_radius(model.graph)  # tiling stays exact


def test_shipped_generator_keeps_its_outputs(rng):
    model = onnx.load(str(resolve_model("default").path))
    rewritten, done = rewrite_for_cpu(model)
    assert done == [TAIL, "9 PRelu as depthwise convs"]  # the head's and the 8 blocks'
    assert_same_network(model, rewritten, rng)
    ops = Counter(n.op_type for n in rewritten.graph.node)
    assert ops["PRelu"] == 2  # the upsamplers' stay: their tensors are 16x larger
    weights = {t.name: tuple(t.dims) for t in rewritten.graph.initializer}
    last_conv = [n for n in rewritten.graph.node if n.op_type == "Conv"][-1]
    assert weights[last_conv.input[1]] == (12, 256, 5, 5)  # 9x9 at 4x -> 5x5 at 2x, 4x channels in and out
    assert model.graph.node[0].op_type == "Conv" and len(model.graph.node) == 47  # the input is not modified


def test_int8_rewrites_keep_outputs_and_leave_no_prelu(rng):
    """What the int8 export quantises: every PReLU as a depthwise pair (the first
    upsampler's moved before its shuffle), the tail padded to 16 channels, then sliced."""
    model = onnx.load(str(resolve_model("default").path))
    rewritten, done = rewrite_for_cpu(model, INT8_REWRITES)
    assert done == [TAIL, "1 PRelu moved before its pixel shuffle", "11 PRelu as depthwise convs", "tail conv padded to 16 output channels"]
    assert_same_network(model, rewritten, rng)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "PRelu" not in ops and ops[-6:] == ["Slice", "DepthToSpace", "Tanh", "Add", "Mul", "Clip"]
    weights = {t.name: tuple(t.dims) for t in rewritten.graph.initializer}
    last_conv = [n for n in rewritten.graph.node if n.op_type == "Conv"][-1]
    assert weights[last_conv.input[1]] == (16, 256, 5, 5)


def test_unknown_rewrites_are_refused():
    with pytest.raises(ValueError, match="unknown graph rewrite"):
        rewrite_for_cpu(onnx.load(str(resolve_model("default").path)), ("tail", "fold_everything"))


def test_tiny_generator_keeps_its_outputs(tiny_onnx, rng):
    model = onnx.load(str(tiny_onnx))
    rewritten, done = rewrite_for_cpu(model)
    assert done == [TAIL, "2 PRelu as depthwise convs"]  # B=1: the head's and the block's
    assert_same_network(model, rewritten, rng)


def test_small_tail_kernels_stay_and_slopes_above_one_keep_their_prelu(tmp_path, rng):
    model = onnx.load(str(build_toy_sr(tmp_path / "toy.onnx")))  # 3x3 tail: cheaper where it is
    rewritten, done = rewrite_for_cpu(model)
    assert done == ["1 PRelu as depthwise convs"]
    assert_same_network(model, rewritten, rng)

    slope = next(t for t in model.graph.initializer if t.name == "slope")
    values = numpy_helper.to_array(slope).copy()
    values[::2] = 1.5  # a*y + Relu((1-a)*y) needs a <= 1
    slope.CopyFrom(numpy_helper.from_array(values, "slope"))
    unchanged, done = rewrite_for_cpu(model)
    assert done == []
    assert [n.op_type for n in unchanged.graph.node] == [n.op_type for n in model.graph.node]


def test_quantised_graphs_are_left_alone(tiny_onnx, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp_path / "tiny.int8.onnx"
    quantize_dynamic(str(tiny_onnx), str(quantized), weight_type=QuantType.QUInt8)
    model = onnx.load(str(quantized))
    same, done = rewrite_for_cpu(model)
    assert done == [] and same is model


@pytest.mark.parametrize("tile", [0, 16])
def test_cpu_upscaler_matches_the_file_as_exported(tiny_onnx, rng, tile):
    from srdeploy.runtime.upscaler import Upscaler

    lr = rng.random((40, 40, 3), dtype=np.float32)
    expected = run(onnx.load(str(tiny_onnx)), np.ascontiguousarray(lr.transpose(2, 0, 1)[None]))[0].transpose(1, 2, 0)
    got = Upscaler(tiny_onnx, provider="cpu", tile=tile).upscale_array(lr)
    assert np.abs(got - expected).max() < 1e-5
