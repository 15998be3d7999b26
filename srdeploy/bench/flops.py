"""FLOPs of an exported generator, counted off its ONNX graph for one input size.

A convolution producing (Cout, Hout, Wout) from Cin input channels in ``groups`` groups
with a kH x kW kernel costs ``2 * Cin/groups * kH * kW * Cout * Hout * Wout`` FLOPs per
image (one multiply and one add per weight tap; the bias add is left out, as is usual).
Everything else in the SRResNet graph is pointwise (PRelu, Add, Tanh, the [0, 1]
rescale and Clip) or data movement (DepthToSpace); the pointwise ops are counted
separately, one FLOP per output element, and are well under 0.1% of the total.

The B=8, 64-filter x4 generator costs 3.26 MFLOP per LR pixel: 13.34 GFLOP for a 64x64
input, 203.5 kFLOP per output pixel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from srdeploy.runtime import contract

POINTWISE_OPS = {"Add", "Sub", "Mul", "Div", "PRelu", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Max", "Min"}


@dataclass(frozen=True)
class GraphFlops:
    """FLOPs of one image of ``height`` x ``width`` LR pixels."""

    height: int
    width: int
    conv: int  # the convolutions: what GFLOP/s figures are computed from
    pointwise: int  # one per output element of each pointwise op
    output_pixels: int  # of the output image, scale^2 x the input's

    @property
    def per_output_pixel(self) -> float:
        return self.conv / self.output_pixels


def count_flops(model: Any, height: int, width: int) -> GraphFlops:
    """FLOPs of ``model`` (an onnx.ModelProto meeting the srdeploy contract) on one
    ``(1, 3, height, width)`` input. Raises ValueError when a Conv's shapes cannot be
    inferred (weights that are not initializers, say)."""
    shapes = _inferred_shapes(model, height, width)
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    conv = pointwise = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv":
            weight = weights.get(node.input[1])
            if weight is None or out is None:
                raise ValueError(f"Conv {node.name or node.output[0]}: cannot read its weight or output shape")
            cout, cin_per_group, *kernel = weight
            taps = cin_per_group
            for k in kernel:
                taps *= k
            _, out_channels, *spatial = out
            pixels = 1
            for s in spatial:
                pixels *= s
            conv += 2 * taps * out_channels * pixels
        elif node.op_type in POINTWISE_OPS and out is not None:
            elements = 1
            for d in out[1:]:
                elements *= d
            pointwise += elements
    sr = shapes.get(contract.OUTPUT_NAME)
    if sr is None:
        raise ValueError(f"cannot infer the shape of the output {contract.OUTPUT_NAME!r}")
    return GraphFlops(height, width, conv, pointwise, sr[2] * sr[3])


def _inferred_shapes(model: Any, height: int, width: int) -> dict[str, list[int]]:
    """Tensor name -> static shape, from ONNX shape inference on a copy of ``model``
    whose input is fixed to (1, 3, height, width)."""
    import onnx

    fixed = copy.deepcopy(model)
    lr = next(v for v in fixed.graph.input if v.name == contract.INPUT_NAME)
    for dim, size in zip(lr.type.tensor_type.shape.dim, (1, 3, height, width)):
        dim.ClearField("dim_param")
        dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes
