"""srdeploy.runtime.contract.validate_onnx_model: what the runtimes refuse and what they learn.

The refusal cases use small hand-built graphs (onnx.helper), so they run in milliseconds
and each breaks exactly one rule of the contract.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from srdeploy.runtime.contract import validate_onnx_model

DYNAMIC = ["batch", 3, "height", "width"]


def _model(in_name="lr", out_name="sr", in_type=TensorProto.FLOAT, in_shape=DYNAMIC, out_shape=("batch", 3, "4*height", "4*width"), extra_inputs=()):
    """A valid-by-the-checker graph with the given I/O declarations: sr = DepthToSpace(Conv(lr))."""
    weight = numpy_helper.from_array(np.full((48, 3, 1, 1), 0.01, np.float32), "weight")
    nodes = [
        helper.make_node("Cast", [in_name], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "weight"], ["y"]),
        helper.make_node("DepthToSpace", ["y"], [out_name], blocksize=4, mode="CRD"),
    ]
    inputs = [helper.make_tensor_value_info(in_name, in_type, list(in_shape) if in_shape is not None else None), *extra_inputs]
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_shape))]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _save(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_accepts_the_contract_and_reports_it(tmp_path):
    info = validate_onnx_model(_save(_model(), tmp_path))
    assert info["opset"] == 18 and info["ir_version"] == 10
    assert (info["input_name"], info["output_name"]) == ("lr", "sr")
    assert info["input_shape"] == DYNAMIC
    assert info["scale"] == 4  # read off the '4*height' output dimension
    assert info["precision"] is None  # not an srdeploy export: it does not say


def test_exported_model_carries_scale_and_precision(tiny_onnx):
    info = validate_onnx_model(tiny_onnx)
    assert info["scale"] == 4 and info["precision"] == "fp32"
    assert info["output_shape"][:2] == ["batch", 3]


def test_refuses_external_data(tmp_path):
    model = _model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").is_file()
    with pytest.raises(ValueError, match=r"ext\.onnx: refusing an ONNX model with external data \(weight"):
        validate_onnx_model(path)


def test_refuses_external_data_even_when_the_data_file_is_gone(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(_model(), str(path), save_as_external_data=True, location="gone.data", size_threshold=0)
    (tmp_path / "gone.data").unlink()
    with pytest.raises(ValueError, match="external data"):
        validate_onnx_model(path)


def _external(name, location="secret"):
    """A tensor whose bytes an engine would read from ``location`` beside the model (or in
    the working folder when the model reaches it as bytes)."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[8], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _hide_in_sparse_constant(model):
    sparse = onnx.SparseTensorProto(dims=[8], values=_external("sparse_values"), indices=numpy_helper.from_array(np.arange(8), "i"))
    model.graph.node.append(helper.make_node("Constant", [], ["c"], sparse_value=sparse))


def _hide_in_sparse_initializer_indices(model):
    values = numpy_helper.from_array(np.ones(8, np.uint8), "v")
    model.graph.sparse_initializer.append(onnx.SparseTensorProto(dims=[8], values=values, indices=_external("sparse_indices")))


def _hide_in_function_body(model):
    body = [helper.make_node("Constant", [], ["k"], value=_external("function_constant"))]
    model.functions.append(helper.make_function("local", "leak", [], ["k"], body, [helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("hide", [_hide_in_sparse_constant, _hide_in_sparse_initializer_indices, _hide_in_function_body])
def test_refuses_external_data_wherever_a_tensor_hides(tmp_path, hide):
    # A reviewer's model read a file from the working folder into its output through a
    # sparse Constant; every place a TensorProto can sit is searched, not a list of them.
    model = _model()
    hide(model)
    with pytest.raises(ValueError, match="refusing an ONNX model with external data"):
        validate_onnx_model(_save(model, tmp_path))


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"in_name": "input"}, r"inputs are \['input'\], expected \['lr'\]"),
        ({"out_name": "output"}, r"outputs are \['output'\], expected \['sr'\]"),
        ({"in_type": TensorProto.FLOAT16}, "input 'lr' has element type float16, expected float32"),
        ({"in_type": TensorProto.UINT8}, "input 'lr' has element type uint8"),
        ({"in_shape": ["batch", 3, "height"]}, r"input 'lr' has rank 3 .*expected 4"),
        ({"in_shape": ["batch", 1, "height", "width"]}, "input 'lr' has 1 channels, expected 3"),
        ({"in_shape": [1, 3, 64, 64]}, r"input 'lr' has fixed N/H/W"),
        ({"in_shape": None}, "input 'lr' has no declared shape"),
        ({"extra_inputs": [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1])]}, r"inputs are \['lr', 'mask'\]"),
    ],
)
def test_refuses_wrong_io(tmp_path, kwargs, reason):
    path = _save(_model(**kwargs), tmp_path, "wrong_io.onnx")
    with pytest.raises(ValueError, match=reason) as err:
        validate_onnx_model(path)
    assert "wrong_io.onnx: does not match the srdeploy ONNX contract" in str(err.value)


def test_not_onnx_and_missing_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffthis is not protobuf" * 10)
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX model"):
        validate_onnx_model(junk)
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        validate_onnx_model(tmp_path / "absent.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")  # protobuf reads it as a model with no graph
    with pytest.raises(ValueError, match=r"empty.onnx: empty file \(0 bytes\), not an ONNX model"):
        validate_onnx_model(tmp_path / "empty.onnx")


def test_weights_listed_as_graph_inputs_are_not_model_inputs(tmp_path):
    """Older exporters (keep_initializers_as_inputs) list every weight as a graph input."""
    model = _model()
    weight_input = helper.make_tensor_value_info("weight", TensorProto.FLOAT, [48, 3, 1, 1])
    model.graph.input.insert(0, weight_input)
    info = validate_onnx_model(_save(model, tmp_path))
    assert info["input_shape"] == DYNAMIC


def test_a_scale_in_the_metadata_counts_only_in_ascii_digits(tmp_path):
    # '²'.isdigit() is True, and int('²') raised an error that named no file.
    model = _model()
    helper.set_model_props(model, {"srdeploy.scale": "²"})
    assert validate_onnx_model(_save(model, tmp_path))["scale"] == 4  # from the output's '4*height'
