"""The one walk over a generator's ONNX graph: how far each output pixel sees into the
input (tiling's overlap) and what the convolutions cost per input pixel (bench's GFLOP/s,
the server's response timeout).

The walk understands the graphs srdeploy exports and runs: stride-1 convolutions,
DepthToSpace (the sub-pixel upsamplers), channel Slices (the int8 export's padded tail)
and ops that mix no pixels across space, Quantize/DequantizeLinear included so that int8
QDQ exports are read too. A graph holding anything else gets no answer (None), and the
callers fall back to a stated bound instead of guessing from half a graph.

Nodes are visited in file order (ONNX stores them topologically sorted), carrying for
every tensor how far its values reach into the input, in input pixels, and its
resolution relative to the input (2 after one x2 upsampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Ops that mix no pixels across space (operands that are all constants are skipped).
POINTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Max", "Min",
    "Relu", "PRelu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "Tanh", "Erf", "Gelu", "Clip",
    "Identity", "Cast", "Sin", "Cos", "Softplus", "Mish", "HardSwish", "BatchNormalization",  # BN at inference: per-pixel affine
    "QuantizeLinear", "DequantizeLinear",  # an int8 (QDQ) export's per-value (de)quantisation
})


@dataclass(frozen=True)
class GraphReach:
    """What the walk found for one graph."""

    receptive_radius: float  # input pixels each side that one output pixel depends on
    conv_flop_per_lr_pixel: float  # 2 x multiply-adds of every Conv, per input pixel

    def conv_flops(self, height: int, width: int) -> int:
        """Conv FLOPs of one ``height`` x ``width`` input (stride-1 'same' convs: every
        conv's output is its input's size, so the cost is linear in the pixels)."""
        return round(self.conv_flop_per_lr_pixel * height * width)


def analyze(graph: Any) -> GraphReach | None:
    """Walk ``graph`` (an ``onnx.GraphProto``); None when it holds an op the walk does not
    know (see the module docstring)."""
    weights = {t.name: list(t.dims) for t in graph.initializer}
    # In a QDQ graph a conv's weight is a DequantizeLinear of an int8 initializer.
    weights.update({n.output[0]: weights[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights})
    reach: dict[str, tuple[float, float]] = {v.name: (0.0, 1.0) for v in graph.input if v.name not in weights}
    flops = 0.0
    for node in graph.node:
        inputs = [reach[name] for name in node.input if name in reach]
        if not inputs:
            continue  # constants only
        radius, resolution = max(r for r, _ in inputs), max(f for _, f in inputs)
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv":
            dims = weights.get(node.input[1])
            extent = _conv_extent(attrs, dims)
            if extent is None or dims is None or len(dims) != 4:
                return None
            radius += extent / resolution
            out_channels, in_per_group, kh, kw = dims
            flops += 2.0 * out_channels * in_per_group * kh * kw * resolution**2  # its output pixels per input pixel
        elif node.op_type == "DepthToSpace":
            if "blocksize" not in attrs or attrs["blocksize"].i < 1:
                return None  # malformed: the engine will say so when it opens the file
            resolution *= attrs["blocksize"].i
        elif node.op_type == "Slice":
            if not _channel_slice(node, graph):
                return None
        elif node.op_type not in POINTWISE:
            return None
        for name in node.output:
            reach[name] = (radius, resolution)
    outputs = [reach.get(v.name) for v in graph.output]
    if not outputs or any(o is None for o in outputs):
        return None
    return GraphReach(max(r for r, _ in outputs), flops)


def _channel_slice(node: Any, graph: Any) -> bool:
    """Whether a Slice cuts only channels (axis 1 of NCHW), as the int8 export's padded
    tail does: then it moves no pixels."""
    from onnx import numpy_helper

    if len(node.input) < 4:
        return False  # no axes: every axis may be cut
    axes = next((t for t in graph.initializer if t.name == node.input[3]), None)
    return axes is not None and all(int(a) in (1, -3) for a in numpy_helper.to_array(axes).reshape(-1))


def _conv_extent(attrs: dict[str, Any], weight_dims: list[int] | None) -> float | None:
    """Input pixels a stride-1 conv reaches beyond the output pixel, on its worse side."""
    if any(s != 1 for s in getattr(attrs.get("strides"), "ints", [])):
        return None
    kernel = list(getattr(attrs.get("kernel_shape"), "ints", [])) or (weight_dims[2:] if weight_dims else [])
    if not kernel:
        return None
    dilations = list(getattr(attrs.get("dilations"), "ints", [])) or [1] * len(kernel)
    spans = [(k - 1) * d for k, d in zip(kernel, dilations)]
    auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return float(max(math.ceil(s / 2) for s in spans))
    pads = list(getattr(attrs.get("pads"), "ints", [])) or [0] * (2 * len(kernel))
    return float(max(max(pads[i], spans[i] - pads[i]) for i in range(len(kernel))))
