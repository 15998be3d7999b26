"""Exact rewrites of a generator's ONNX graph that the CPU engines run faster. Applied in
memory when a CPU session opens; model files are never changed. What each rewrite is
worth, per engine and CPU, is measured in docs/results.md ("CPU graph rewrites",
"Engines per CPU"); the sets in use are FP32_REWRITES (ONNX Runtime), OPENVINO_REWRITES
and INT8_REWRITES (the graph the int8 export quantises).

At ORT_ENABLE_ALL, ONNX Runtime runs convolutions in its blocked NCHWc layout (channels
in blocks of 8 on AVX2, 16 on AVX-512), converting tensors back to NCHW for every op
that layout does not cover. Two things in the SRResNet graph defeat it:

1. PRelu is not an NCHWc op, so each PReLU costs a ReorderOutput, the PRelu itself and a
   ReorderInput, and the residual Adds run outside the convolutions.
   ``PRelu(y, a) = a*y + Relu((1-a)*y)`` (exact for slopes a <= 1) in two depthwise 1x1
   convolutions keeps the low-resolution trunk NCHWc end to end: the Relu fuses into the
   first, the Add into the second, the skip Adds into the next conv. (The upsamplers'
   PReLUs stay, for memory: see _prelus_as_depthwise.)
2. The 9x9 tail conv (64 -> 3 channels at 4x resolution) has its 3 output channels padded
   to a block of 8, and the full-resolution DepthToSpace and PRelu sit in front of it: it
   took far more of the time than of the FLOPs. A conv after a pixel shuffle equals a
   conv before it: ``Conv_k(PRelu(D2S_r(x)))`` = ``D2S_r(Conv_k'(PRelu'(x)))`` with k' = 5
   for k = 9, r = 2, r^2 times the channels in and out, the weights scattered by
   sub-pixel phase and the slopes repeated. That conv (256 -> 12 channels at 2x) costs
   1.2x the multiply-adds but runs several times faster. OpenVINO gains from this one too.

The INT8 export (srdeploy.export.int8) quantises a rewritten graph, with two more
rewrites that only pay off there (``INT8_REWRITES``):

3. Every PReLU as the depthwise pair, the upsamplers' too (the one after the first pixel
   shuffle moved before it: slopes repeated, as in 2.). ORT's PRelu is a branch per
   value, and in a quantised graph each also needs a DequantizeLinear before it and a
   QuantizeLinear after it. As 1x1 depthwise QLinearConvs, a ReLU folded into the
   requantisation and a QLinearAdd, the upsamplers stay in uint8. In fp32 the
   upsamplers' pairs would cost memory (see 1.).
4. The tail conv's 12 output channels padded with zero filters to 16, and a Slice after
   it: MLAS's int8 convolution runs output channels in blocks of 16.

Outputs match the original graph to float rounding (~1e-6; tests/test_cpu_graph.py).
Graphs without these patterns, or quantised graphs, are returned unchanged.
"""

from __future__ import annotations

import copy
import os
import platform
from typing import Any

import numpy as np

from srdeploy.runtime.contract import QUANTISED_OPS

NCHWC_BLOCK = 8  # AVX2; cost comparisons below assume ORT pads channels to this
INT8_CHANNEL_BLOCK = 16  # MLAS's int8 convolutions run output channels in blocks of this
FP32_REWRITES = ("tail", "prelu")
# What helps OpenVINO's CPU plugin, per precision (docs/results.md, "Engines per CPU"): the
# tail alone, in fp32 (AVX2 and AMX CPUs) and in bf16 (AMX), where the PReLU rewrite ORT
# needs made OpenVINO slower.
OPENVINO_REWRITES = {"fp32": ("tail",), "bf16": ("tail",)}
INT8_REWRITES = ("tail", "prelu", "upsampler_prelu", "pad_tail")


def nchwc_cpu() -> bool:
    """Whether this CPU gets ONNX Runtime's NCHWc layout, which these rewrites target
    (x86-64; elsewhere depthwise 1x1 convolutions would be slower than PRelu)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def optimized_bytes(path: str | os.PathLike, rewrites: tuple[str, ...] = FP32_REWRITES) -> bytes | None:
    """The model at ``path`` rewritten, serialised for a session; None when no rewrite
    applies (open the file itself)."""
    import onnx

    model, done = rewrite_for_cpu(onnx.load(os.fspath(path), load_external_data=False), rewrites)
    return model.SerializeToString() if done else None


def rewrite_for_cpu(model: Any, rewrites: tuple[str, ...] = FP32_REWRITES) -> tuple[Any, list[str]]:
    """An optimised copy of ``model`` (onnx.ModelProto) and what was rewritten. ``rewrites``
    picks among "tail", "prelu" (the trunk's), "upsampler_prelu" (the upsamplers' too)
    and "pad_tail" (benchmarks measure each alone; FP32_REWRITES and INT8_REWRITES are
    the two sets srdeploy uses)."""
    unknown = set(rewrites) - set(INT8_REWRITES)
    if unknown:
        raise ValueError(f"unknown graph rewrite(s): {', '.join(sorted(unknown))}")
    if any(n.op_type in QUANTISED_OPS for n in model.graph.node):
        return model, []  # quantised graphs have their own fusions; leave them alone
    model = copy.deepcopy(model)
    done = []
    if "tail" in rewrites and _tail_before_shuffle(model.graph):
        done.append("tail conv moved before the last pixel shuffle")
    if "upsampler_prelu" in rewrites:
        moved = _prelus_before_shuffles(model.graph)
        if moved:
            done.append(f"{moved} PRelu moved before its pixel shuffle")
    if "prelu" in rewrites:
        count = _prelus_as_depthwise(model.graph, upsamplers="upsampler_prelu" in rewrites)
        if count:
            done.append(f"{count} PRelu as depthwise convs")
    if "pad_tail" in rewrites:
        padded = _pad_tail_channels(model.graph, INT8_CHANNEL_BLOCK)
        if padded:
            done.append(f"tail conv padded to {padded} output channels")
    return model, done


class _Graph:
    """Lookups over an onnx.GraphProto: float initializers, producers, consumers."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.graph = graph
        self.weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == 1}  # float32
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {v.name for v in graph.output}
        self.taken = {t.name for t in graph.initializer} | set(self.producer) | set(self.consumers)

    def only_consumer(self, tensor: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def add_weight(self, name: str, value: np.ndarray, dtype: type = np.float32) -> str:
        from onnx import numpy_helper

        name = self.unique(name)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype), name))
        if dtype == np.float32:
            self.weights[name] = value
        return name

    def drop_unused_weights(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def unique(self, name: str) -> str:
        """``name``, or ``name_N`` if a tensor is already called that; reserved from now on."""
        candidate, i = name, 1
        while candidate in self.taken:
            candidate, i = f"{name}_{i}", i + 1
        self.taken.add(candidate)
        return candidate


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _channel_slopes(g: _Graph, prelu: Any) -> np.ndarray | None:
    """A PRelu's slopes as a (C,) vector when they are one constant per channel."""
    slope = g.weights.get(prelu.input[1])
    if slope is None or slope.size < 2 or slope.ndim not in (3, 4) or slope.shape[-2:] != (1, 1):
        return None
    if slope.ndim == 4 and slope.shape[0] != 1:
        return None
    return slope.reshape(-1)


def _tail_before_shuffle(graph: Any) -> bool:
    """Rewrite ``X -> DepthToSpace(r, CRD) -> [PRelu] -> Conv_k`` as
    ``X -> [PRelu'] -> Conv_k' -> DepthToSpace(r, CRD)`` where that lowers the padded
    multiply-adds per output pixel (a large kernel with few output channels: the tail)."""
    from onnx import helper

    g = _Graph(graph)
    for shuffle in list(graph.node):
        r = _crd_shuffle_factor(shuffle)
        if not r:
            continue
        prelu = g.only_consumer(shuffle.output[0])
        slopes = None
        if prelu is not None and prelu.op_type == "PRelu":
            slopes = _channel_slopes(g, prelu)
            if slopes is None:
                continue
            conv = g.only_consumer(prelu.output[0])
        else:
            conv, prelu = prelu, None
        if conv is None or conv.op_type != "Conv" or not _plain_conv(g, conv):
            continue
        weight, bias = g.weights[conv.input[1]], g.weights.get(conv.input[2]) if len(conv.input) > 2 else None
        cout, cin, k, _ = weight.shape
        pad = int(_attrs(conv).get("pads", [0, 0, 0, 0])[0])
        low, high = (0 - pad) // r, (r - 1 + k - 1 - pad) // r  # low-resolution rows a high-res output reaches
        k_low = high - low + 1
        old_cost = _padded(cout) * cin * k * k
        new_cost = _padded(cout * r * r) * cin * r * r * k_low * k_low / (r * r)  # per high-res output pixel
        if new_cost >= old_cost:
            continue
        low_weight = _subpixel_weight(weight, r, pad, low, k_low)
        low_bias = np.repeat(bias if bias is not None else np.zeros(cout, np.float32), r * r)
        source = shuffle.input[0]
        nodes = []
        if prelu is not None:
            nodes.append(_subpixel_prelu(g, prelu, slopes, r, source))
            source = nodes[-1].output[0]
        w_name = g.add_weight(f"{conv.input[1]}_subpixel", low_weight)
        b_name = g.add_weight(f"{conv.input[1]}_subpixel_bias", low_bias)
        low_out = g.unique(f"{conv.output[0]}_subpixel")
        nodes.append(helper.make_node("Conv", [source, w_name, b_name], [low_out], name=low_out,
                                      kernel_shape=[k_low, k_low], pads=[-low, -low, high, high]))
        nodes.append(helper.make_node("DepthToSpace", [low_out], [conv.output[0]], name=g.unique(f"{conv.output[0]}_shuffle"), blocksize=r, mode="CRD"))
        _replace(graph, [shuffle, *([prelu] if prelu is not None else []), conv], nodes)
        g.drop_unused_weights()
        return True
    return False


def _crd_shuffle_factor(node: Any) -> int:
    """The blocksize of a CRD DepthToSpace (PyTorch's PixelShuffle), else 0."""
    if node.op_type != "DepthToSpace":
        return 0
    a = _attrs(node)
    return int(a["blocksize"]) if a.get("mode", b"DCR") == b"CRD" else 0


def _subpixel_prelu(g: _Graph, prelu: Any, slopes: np.ndarray, r: int, source: str) -> Any:
    """``prelu`` as it runs before a CRD pixel shuffle of factor r, on ``source``:
    pre-shuffle channel c*r^2 + i belongs to output channel c, so it gets slope c's."""
    from onnx import helper

    slope = g.add_weight(f"{prelu.input[1]}_subpixel", np.repeat(slopes, r * r).reshape(-1, 1, 1))
    activated = g.unique(f"{prelu.output[0]}_subpixel")
    return helper.make_node("PRelu", [source, slope], [activated], name=activated)


def _prelus_before_shuffles(graph: Any) -> int:
    """Rewrite ``X -> DepthToSpace(r, CRD) -> PRelu(a)`` as ``X -> PRelu(a repeated r^2)
    -> DepthToSpace(r, CRD)`` (exact: the shuffle only moves values). Returns how many."""
    from onnx import helper

    g = _Graph(graph)
    count = 0
    for shuffle in list(graph.node):
        r = _crd_shuffle_factor(shuffle)
        prelu = g.only_consumer(shuffle.output[0]) if r else None
        slopes = _channel_slopes(g, prelu) if prelu is not None and prelu.op_type == "PRelu" else None
        if slopes is None:
            continue
        activated = _subpixel_prelu(g, prelu, slopes, r, shuffle.input[0])
        moved = helper.make_node("DepthToSpace", activated.output, [prelu.output[0]], name=g.unique(f"{shuffle.name or prelu.output[0]}_moved"), blocksize=r, mode="CRD")
        _replace(graph, [shuffle, prelu], [activated, moved])
        count += 1
    g.drop_unused_weights()
    return count


def _pad_tail_channels(graph: Any, block: int) -> int:
    """Give the last conv zero filters up to a multiple of ``block`` output channels and
    slice the extra channels off after it. Returns the padded count (0: nothing to do)."""
    from onnx import helper

    g = _Graph(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs or convs[-1].input[1] not in g.weights:
        return 0
    conv = convs[-1]
    weight = g.weights[conv.input[1]]
    bias = g.weights.get(conv.input[2]) if len(conv.input) > 2 else np.zeros(weight.shape[0], np.float32)
    if bias is None:
        return 0
    cout = weight.shape[0]
    padded = -(-cout // block) * block
    if padded == cout:
        return 0
    extra = padded - cout
    w_name = g.add_weight(f"{conv.input[1]}_padded", np.concatenate([weight, np.zeros((extra, *weight.shape[1:]), np.float32)]))
    b_name = g.add_weight(f"{conv.input[1]}_padded_bias", np.concatenate([bias, np.zeros(extra, np.float32)]))
    bounds = [g.add_weight(f"{conv.output[0]}_slice_{part}", np.array([value]), np.int64) for part, value in (("starts", 0), ("ends", cout), ("axes", 1))]
    wide = g.unique(f"{conv.output[0]}_padded")
    new_conv = copy.deepcopy(conv)
    del new_conv.input[:]
    new_conv.input.extend([conv.input[0], w_name, b_name])
    new_conv.output[0] = wide
    new_conv.name = wide
    cut = helper.make_node("Slice", [wide, *bounds], [conv.output[0]], name=g.unique(f"{conv.output[0]}_slice"))
    _replace(graph, [conv], [new_conv, cut])
    g.drop_unused_weights()
    return padded


def _plain_conv(g: _Graph, conv: Any) -> bool:
    """A square, odd, stride-1, undilated, ungrouped conv with constant weights and
    symmetric 'same' padding."""
    weight = g.weights.get(conv.input[1])
    if weight is None or weight.ndim != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        return False
    if len(conv.input) > 2 and conv.input[2] not in g.weights:
        return False
    a = _attrs(conv)
    k = weight.shape[2]
    return (
        a.get("group", 1) == 1 and set(a.get("strides", [1, 1])) == {1} and set(a.get("dilations", [1, 1])) == {1}
        and a.get("auto_pad", b"NOTSET") == b"NOTSET" and list(a.get("pads", [])) == [k // 2] * 4
    )


def _padded(channels: int) -> int:
    return -(-channels // NCHWC_BLOCK) * NCHWC_BLOCK


def _subpixel_weight(weight: np.ndarray, r: int, pad: int, low: int, k_low: int) -> np.ndarray:
    """Weights of the conv that runs before a CRD pixel shuffle of factor r.

    High-res output row Y = r*I + P reads input row Y + dy - pad = r*(I + ky + low) + p,
    i.e. low-res row offset ky + low at sub-pixel phase p, when dy = r*(ky + low) + p - P + pad.
    Output channel o at phase (P, Q) is low-res channel o*r^2 + P*r + Q; input channel c
    at phase (p, q) is c*r^2 + p*r + q (CRD order). Taps no original weight reaches stay 0.
    """
    cout, cin, k, _ = weight.shape
    out = np.zeros((cout * r * r, cin * r * r, k_low, k_low), np.float32)
    for P in range(r):
        for Q in range(r):
            for p in range(r):
                for q in range(r):
                    for ky in range(k_low):
                        dy = r * (ky + low) + p - P + pad
                        if not 0 <= dy < k:
                            continue
                        for kx in range(k_low):
                            dx = r * (kx + low) + q - Q + pad
                            if 0 <= dx < k:
                                out[P * r + Q :: r * r, p * r + q :: r * r, ky, kx] = weight[:, :, dy, dx]
    return out


def _prelus_as_depthwise(graph: Any, upsamplers: bool = False) -> int:
    """Rewrite each ``Conv -> PRelu(a)`` of the low-resolution trunk (upstream of every
    DepthToSpace) with per-channel slopes a <= 1 as ``Add(DWConv_a(y), Relu(DWConv_{1-a}(y)))``:
    for y > 0 that is a*y + (1-a)*y = y, for y <= 0 it is a*y + 0. Returns how many.

    The PReLUs after an upsampler stay unless ``upsamplers``: there the tensors are 16x
    larger, and in fp32 the rewrite keeps one more of them alive at a time, which cost a
    large upscale more memory than it gained speed. In uint8 that tensor is a quarter the
    size and the rewrite pays (docs/results.md, "CPU graph rewrites")."""
    from onnx import helper

    g = _Graph(graph)
    upsampled = set() if upsamplers else _downstream_of(graph, "DepthToSpace")
    count = 0
    for prelu in list(graph.node):
        if prelu.op_type != "PRelu" or prelu.input[0] in upsampled:
            continue
        producer = g.producer.get(prelu.input[0])
        slopes = _channel_slopes(g, prelu)
        if producer is None or producer.op_type != "Conv" or slopes is None or not (slopes <= 1).all():
            continue
        channels, y, name = slopes.size, prelu.input[0], prelu.output[0]
        zero = g.add_weight(f"{name}_zero_bias", np.zeros(channels, np.float32))
        keep = g.add_weight(f"{name}_positive_part", (1 - slopes).reshape(-1, 1, 1, 1))
        scale = g.add_weight(f"{name}_slope", slopes.reshape(-1, 1, 1, 1))
        scaled, positive, negative = (g.unique(f"{name}_{part}") for part in ("scaled", "positive", "negative"))
        depthwise = dict(group=channels, kernel_shape=[1, 1])
        nodes = [
            helper.make_node("Conv", [y, keep, zero], [scaled], name=scaled, **depthwise),  # (1-a)*y
            helper.make_node("Relu", [scaled], [positive], name=positive),
            helper.make_node("Conv", [y, scale, zero], [negative], name=negative, **depthwise),  # a*y
            helper.make_node("Add", [negative, positive], [prelu.output[0]], name=g.unique(f"{name}_sum")),
        ]
        _replace(graph, [prelu], nodes)
        count += 1
    g.drop_unused_weights()
    return count


def _downstream_of(graph: Any, op_type: str) -> set[str]:
    """Names of the tensors computed from an output of any ``op_type`` node."""
    reached: set[str] = set()
    for node in graph.node:  # topologically sorted, as ONNX requires
        if node.op_type == op_type or any(name in reached for name in node.input):
            reached.update(node.output)
    return reached


def _replace(graph: Any, old: list[Any], new: list[Any]) -> None:
    """Put ``new`` where the first of ``old`` was (keeping the order topological); nodes
    are told apart by their outputs, which are unique in a graph."""
    gone = {tuple(n.output) for n in old}
    nodes = list(graph.node)
    at = min(i for i, n in enumerate(nodes) if tuple(n.output) in gone)
    kept = [n for n in nodes if tuple(n.output) not in gone]
    kept[at:at] = new
    del graph.node[:]
    graph.node.extend(kept)
