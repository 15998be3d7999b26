"""The exported-model contract every runtime relies on (docs/export.md, "What it writes").

input ``lr``: float32 NCHW, RGB in [0, 1]; output ``sr``: float32 NCHW in [0, 1], ``scale``
times larger; batch, height and width dynamic; one self-contained file (no external data).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
INPUT_RANGE = (0.0, 1.0)
OUTPUT_RANGE = (0.0, 1.0)
MANIFEST_NAME = "manifest.json"

# The highest ONNX IR version any runtime srdeploy supports reads (onnx 1.19 era); the
# exporter writes IR 10 at opset 18, which every pinned runtime, back to onnxruntime 1.18, reads.
MAX_IR_VERSION = 13
# The opset the exporter writes unless asked otherwise: torch.onnx's native one.
DEFAULT_OPSET = 18
# Model-level metadata_props srdeploy writes into every exported ONNX file.
META_SCALE = "srdeploy.scale"
META_PRECISION = "srdeploy.precision"  # "fp32" | "fp16" | "int8" (compute; the I/O stays float32)
META_CONTRACT = "srdeploy.contract"
# The engine an int8 model was quantised for ("cpu": ONNX Runtime's quantiser, the default
# export; "openvino": NNCF's). Each engine keeps int8's quality bound only on its own file
# (docs/results.md, "INT8: which file, which engine"); absent means "cpu".
META_INT8_ENGINE = "srdeploy.int8_engine"
INT8_ENGINES = ("cpu", "openvino")
CONTRACT_TEXT = "lr: float32 NCHW RGB [0,1] -> sr: float32 NCHW RGB [0,1], batch/height/width dynamic"

_FLOAT = 1  # onnx.TensorProto.FLOAT; spelled out so this module imports without onnx
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL (data_location)


def validate_onnx_model(path: str | os.PathLike) -> dict[str, Any]:
    """Refuse an ONNX file the runtimes cannot trust; describe one they can.

    Raises FileNotFoundError for a missing file and ValueError (naming the file and the
    reason) for a file that is not ONNX, keeps tensors in external data files, or whose
    inputs/outputs differ from the contract. Returns ``{"path", "opset", "ir_version",
    "input_name", "output_name", "input_shape", "output_shape", "scale", "precision",
    "int8_engine"}``; shapes hold ints for fixed and strings for dynamic dimensions, ``scale``
    and ``precision`` are None when the file does not say; ``int8_engine`` (int8 models
    only, else None) is what META_INT8_ENGINE says, "cpu" when it says nothing.
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError("validating ONNX models needs the `onnx` package: pip install 'srdeploy[cpu]'") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    if path.stat().st_size == 0:  # protobuf parses it as a model with no graph: say what it is
        raise ValueError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        # Never follow external-data references: they are refused below, not read.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    external = _external_tensors(model)
    if external:
        more = f" (+{len(external) - 3} more)" if len(external) > 3 else ""
        raise ValueError(
            f"{path}: refusing an ONNX model with external data ({', '.join(external[:3])}{more} "
            "stored outside the file); srdeploy loads only self-contained models"
        )
    check_onnx_io(model, str(path))
    lr = next(v for v in model.graph.input if v.name == INPUT_NAME)  # not input[0]: old exporters list weights first
    props = {p.key: p.value for p in model.metadata_props}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    precision = _precision_of(model.graph, props.get(META_PRECISION))
    int8_engine = props.get(META_INT8_ENGINE) if props.get(META_INT8_ENGINE) in INT8_ENGINES else "cpu"
    return {
        "path": str(path),
        "opset": opset,
        "ir_version": model.ir_version,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": _shape(lr),
        "output_shape": _shape(model.graph.output[0]),
        "scale": _scale(props, model.graph.output[0]),
        "precision": precision,
        "int8_engine": int8_engine if precision == "int8" else None,
    }


def check_onnx_io(model: Any, where: str) -> None:
    """Raise ValueError unless ``model`` (an onnx.ModelProto) has exactly one input ``lr``
    and one output ``sr``, both float32 rank 4 with 3 channels and dynamic N/H/W."""
    initializers = {t.name for t in model.graph.initializer}
    # Old exporters list the weights as graph inputs too; those are not model inputs.
    inputs = [v for v in model.graph.input if v.name not in initializers]
    outputs = list(model.graph.output)
    problems: list[str] = []
    for role, values, name in (("input", inputs, INPUT_NAME), ("output", outputs, OUTPUT_NAME)):
        names = [v.name for v in values]
        if names != [name]:
            problems.append(f"{role}s are {names}, expected ['{name}']")
            continue
        problems += [f"{role} '{name}' {p}" for p in _tensor_problems(values[0])]
    if problems:
        raise ValueError(f"{where}: does not match the srdeploy ONNX contract ({CONTRACT_TEXT}): " + "; ".join(problems))


def _tensor_problems(value: Any) -> list[str]:
    if not value.type.HasField("tensor_type"):
        return ["is not a tensor"]
    ttype = value.type.tensor_type
    problems = []
    if ttype.elem_type != _FLOAT:
        problems.append(f"has element type {_elem_name(ttype.elem_type)}, expected float32")
    if not ttype.HasField("shape"):
        return problems + ["has no declared shape, expected rank 4 (N, 3, H, W)"]
    shape = _shape(value)
    if len(shape) != 4:
        return problems + [f"has rank {len(shape)} {shape}, expected 4 (N, 3, H, W)"]
    if shape[1] != 3:
        problems.append(f"has {shape[1]} channels, expected 3 (RGB)")
    fixed = [axis for axis, d in zip("NHW", (shape[0], shape[2], shape[3])) if isinstance(d, int)]
    if fixed:
        problems.append(f"has fixed {'/'.join(fixed)} in shape {shape}, expected them dynamic")
    return problems


def _shape(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _elem_name(elem_type: int) -> str:
    try:
        import onnx

        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except (ImportError, ValueError):
        return f"type {elem_type}"


def _scale(props: dict[str, str], output: Any) -> int | None:
    """From srdeploy's metadata, else from an output dimension named like '4*height'."""
    if re.fullmatch(r"[0-9]{1,3}", props.get(META_SCALE, "")):  # ASCII digits: isdigit() also takes '²'
        return int(props[META_SCALE])
    shape = _shape(output)
    if len(shape) == 4 and isinstance(shape[2], str):
        m = re.fullmatch(r"(\d+)\*\w+", shape[2])
        if m:
            return int(m.group(1))
    return None


QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def _precision_of(graph: Any, stated: str | None) -> str | None:
    """What a model computes in: int8 when its graph holds quantisation ops (whatever
    metadata a quantiser copied from the fp32 source says), else what srdeploy's metadata
    states, else fp16 when its weights are half floats, else None (fp32)."""
    if any(node.op_type in QUANTISED_OPS for node in graph.node):
        return "int8"
    if stated:
        return stated
    if any(t.data_type == _FLOAT16 for t in graph.initializer):
        return "fp16"
    return None


def _external_tensors(model: Any) -> list[str]:
    """Names of the tensors anywhere in ``model`` kept in external files.

    Every message of the model is visited, not a list of the places tensors usually sit:
    a tensor can also hide in a sparse initializer's indices, a sparse Constant, a
    subgraph or a model-local function, and the engines would read any of them from a
    file beside the model, or in the working folder when the model is handed over as bytes.
    """
    found = []
    pending = [model]
    while pending:  # iterative: nesting depth is the file's to choose
        message = pending.pop()
        if message.DESCRIPTOR.full_name == "onnx.TensorProto" and (message.data_location == _EXTERNAL or len(message.external_data)):
            found.append(message.name or "<unnamed>")
        for field, value in message.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            pending.extend([value] if hasattr(value, "DESCRIPTOR") else value)  # one message, or a repeated field (ONNX has no maps)
    return found
