"""fp32 contract ONNX -> INT8 ONNX: ONNX Runtime static quantisation, QDQ, per-channel weights.

Each choice below was measured on the B=8 SRResNet (CelebA-HQ faces, 64x64 LR); the
numbers, and the comparison with NNCF's post-training quantisation that this path won,
are in docs/results.md ("INT8 on the CPU").

- QDQ format: ORT's CPU provider fuses DequantizeLinear -> Conv -> QuantizeLinear into
  QLinearConv (and Add into QLinearAdd), and OpenVINO runs the same file as int8, so the
  file stays a plain ONNX graph that any runtime can read, and the fusion is the engine's.
- uint8 activations, int8 weights with ``reduce_range`` (7-bit weights): without VNNI,
  MLAS's u8 x s8 kernel adds pairs of products in int16 (vpmaddubsw) and saturates with
  full 8-bit weights; 7-bit weights cannot saturate and run at the same speed. u8 x u8
  avoids it too, but ran slower.
- Per-channel weight scales; per-tensor activations (what QLinearConv takes).
- The graph is rewritten before quantisation (srdeploy.runtime.cpu_graph.INT8_REWRITES; exact in
  fp32): the 9x9 tail conv moved before the last pixel shuffle, every PReLU turned into
  two 1x1 depthwise convs, a ReLU and an Add (ORT has no quantised PReLU: as fp32
  between DequantizeLinear and QuantizeLinear the upsamplers' PReLUs were a large share
  of the int8 run), and the tail's 12 output channels padded to 16 (MLAS's int8 kernels
  run output channels in blocks of 16).
- Kept fp32 (``fp32_nodes``): the head conv (it reads the image, and quantising it cost
  quality for a small share of the work) and its PReLU (see ``_head_activation``), and
  everything after the tail conv (channel slice, pixel shuffle, tanh, rescale, clamp). A
  tail with a channel count MLAS cannot run at full rate (the 3-channel 9x9 conv of a
  graph the rewrites do not match) stays fp32 too: as QLinearConv it ran far slower.
- So the graph is uint8 from the head's PReLU to the tail conv's output.

For OpenVINO, :func:`quantize_int8_for_openvino` uses NNCF instead (``srdeploy export
--int8 --int8-engine openvino``): OpenVINO lost more than int8's 0.2 dB on the file above,
and ONNX Runtime runs NNCF's graphs slowly, so each engine gets the file made for it and
the file says which (srdeploy.runtime.contract.META_INT8_ENGINE). NNCF's own preset
(PERFORMANCE: symmetric activations, which OpenVINO's CPU plugin runs as int8) on the graph
OpenVINO runs (the tail conv before the last pixel shuffle), with the head conv kept in
float as above (the tail kept too cost 0.007 dB less and ran 1.4x slower on large
windows): asymmetric activations (preset MIXED) kept quality but OpenVINO then ran every
conv in f32.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from srdeploy.export import parity
from srdeploy.export.calibration import CalibrationReader, CalibrationSet
from srdeploy.io.files import atomic_write_bytes
from srdeploy.runtime import contract, cpu_graph

MIN_PSNR_Y = parity.INT8_MIN_PSNR_Y

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "percentile"
# Two-sided, of each activation over the calibration set: the one of 99.99, 99.999, 99.9999
# and min-max that lost least against ground truth (docs/results.md, "INT8 on the CPU").
PERCENTILE = 99.9999
NNCF_MISSING = "--int8-engine openvino quantises with NNCF, which is not installed: pip install 'srdeploy[export]'"
WEIGHTS = "int8 per output channel, symmetric, 7-bit range (reduce_range: no int16 saturation without VNNI)"
ACTIVATIONS = "uint8 per tensor, asymmetric"


def fp32_nodes(model: onnx.ModelProto) -> list[dict[str, str]]:
    """Nodes to keep in fp32, each ``{"node", "op", "why"}``: the convs that read the
    input ``lr``, the tail conv unless its output channels fill MLAS's int8 blocks (the
    export pads them: see srdeploy.runtime.cpu_graph), and every node after the tail conv."""
    graph = model.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs:
        raise ValueError("no Conv node: not an srdeploy generator graph")
    heads = [n for n in convs if contract.INPUT_NAME in n.input]
    keep = [{"node": n.name, "op": n.op_type, "why": "head: reads the RGB input (3 channels, a small share of the work)"} for n in heads]
    weights = {t.name: t for t in graph.initializer}
    keep += _head_activation(graph, heads, weights)
    tail = convs[-1]
    tail_channels = weights[tail.input[1]].dims[0] if tail.input[1] in weights else None
    if tail_channels is None or tail_channels % cpu_graph.INT8_CHANNEL_BLOCK:
        keep.append({"node": tail.name, "op": tail.op_type, "why": f"tail: {tail_channels} output channels run slower as QLinearConv than fp32; 8-bit output steps would land in the image"})
    downstream = set(tail.output)
    for node in graph.node[list(graph.node).index(tail) + 1 :]:  # ONNX nodes are topologically sorted
        if downstream.intersection(node.input):
            downstream.update(node.output)
            keep.append({"node": node.name, "op": node.op_type, "why": "after the tail conv: channel slice, pixel shuffle, tanh -> [0, 1] rescale and clamp"})
    unnamed = [k for k in keep if not k["node"]]
    if unnamed:
        raise ValueError(f"unnamed {unnamed[0]['op']} node: nodes_to_exclude needs node names")
    return keep


def _head_activation(graph: onnx.GraphProto, heads: list[onnx.NodeProto], weights: dict[str, onnx.TensorProto]) -> list[dict[str, str]]:
    """The nodes computed from the head convs' outputs alone, up to the first full conv:
    the head's PReLU (as depthwise convs, a ReLU and an Add).

    Its output is the first uint8 tensor, and the first residual block's conv amplifies
    that tensor's rounding error. In fp32 the tensor is rounded once instead of three
    times (after each depthwise conv and the Add), which kept the int8 model within its
    0.2 dB bound for a little speed (docs/results.md, "INT8 on the CPU")."""
    reached = {out for n in heads for out in n.output}
    keep = []
    for node in graph.node:
        inputs = [name for name in node.input if name and name not in weights]
        if node in heads or not inputs or not all(name in reached for name in inputs):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("group", 1) == 1:
            continue  # a full conv: where the trunk starts
        reached.update(node.output)
        keep.append({"node": node.name, "op": node.op_type, "why": "the head's activation: its output's rounding error is amplified by the first block (see _head_activation)"})
    return keep


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: CalibrationSet, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Write an INT8 copy of the fp32 contract model ``src`` to ``dst`` (atomically: on any
    error no file appears at ``dst``). Returns the manifest's ``quantization`` entry."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    src, dst = Path(src), Path(dst)
    contract.validate_onnx_model(src)
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[method]
    # One batch per calibration pass keeps ORT's intermediate tensors to one batch's worth.
    extra: dict[str, Any] = {"CalibStridedMinMax": 1}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="srdeploy-int8-") as tmp:
        prepared, pre, out = Path(tmp) / "prepared.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # The exact CPU rewrites, the int8-only ones included, go in before quantisation:
        # ORT does not rewrite a quantised graph, and the quantiser must see the
        # depthwise PReLUs and the padded tail to put them in uint8 (srdeploy.runtime.cpu_graph).
        source = onnx.load(str(src))
        rewritten, rewrites = cpu_graph.rewrite_for_cpu(source, cpu_graph.INT8_REWRITES)  # a copy
        onnx.save(rewritten, str(prepared))
        # Shape inference next, as ORT's quantisation guide asks: the quantiser needs every
        # tensor's shape to place Q/DQ pairs and per-channel axes. Without ORT's basic
        # optimisation pass: the exported graph has nothing left for it to fold, and its
        # constant sharing would tie the weights of convs kept in fp32 to quantised ones.
        quant_pre_process(str(prepared), str(pre), skip_optimization=True)
        keep = fp32_nodes(onnx.load(str(pre)))
        # The histogram calibrators print their settings to stdout; the CLI prints its own summary.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre),
                str(out),
                CalibrationReader(calibration.lr, contract.INPUT_NAME),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
                nodes_to_exclude=[k["node"] for k in keep],
                extra_options=extra,
            )
        model = onnx.load(str(out))
    summary = _finish(model, source, dst)
    return {
        "tool": "onnxruntime.quantization.quantize_static (after quant_pre_process)",
        "engine": "cpu",
        "format": "QDQ",
        "activations": ACTIVATIONS,
        "weights": WEIGHTS,
        "calibration_method": f"percentile {PERCENTILE}" if method == "percentile" else method,
        "graph_rewrites": rewrites,
        "fp32_nodes": keep,
        "quantized_convs": summary["quantized_convs"],
        "qdq_nodes": summary["quantize_linear"] + summary["dequantize_linear"],
    }


def quantize_int8_for_openvino(src: str | os.PathLike, dst: str | os.PathLike, calibration: CalibrationSet) -> dict[str, Any]:
    """Write an INT8 copy of the fp32 contract model ``src`` to ``dst`` for OpenVINO, by
    NNCF's post-training quantisation (see the module docstring); atomically. Returns the
    manifest's ``quantization`` entry. Needs the ``nncf`` package (the export extra)."""
    try:
        import nncf
    except ImportError:
        raise ImportError(NNCF_MISSING) from None
    import logging

    src, dst = Path(src), Path(dst)
    contract.validate_onnx_model(src)
    source = onnx.load(str(src))
    rewritten, rewrites = cpu_graph.rewrite_for_cpu(source, cpu_graph.OPENVINO_REWRITES["fp32"])
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    keep = [{"node": convs[0].name, "op": "Conv", "why": "head: reads the RGB input (3 channels, a small share of the work)"}]
    dataset = nncf.Dataset([{contract.INPUT_NAME: lr[None]} for lr in calibration.lr])
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bars; the CLI prints its own summary
        model = nncf.quantize(rewritten, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration.lr),
                              ignored_scope=nncf.IgnoredScope(names=[k["node"] for k in keep]))
    summary = _finish(model, source, dst, engine="openvino")
    return {
        "tool": f"nncf.quantize {nncf.__version__} (preset PERFORMANCE)",
        "engine": "openvino",
        "format": "QDQ",
        "activations": "int8/uint8 per tensor, symmetric (NNCF preset PERFORMANCE)",
        "weights": "int8 per output channel, symmetric",
        "calibration_method": f"NNCF min/max statistics over {len(calibration.lr)} inputs",
        "graph_rewrites": rewrites,
        "fp32_nodes": keep,
        "quantized_convs": summary["quantized_convs"],
        "qdq_nodes": summary["quantize_linear"] + summary["dequantize_linear"],
    }


def _finish(model: onnx.ModelProto, source: onnx.ModelProto, dst: Path, engine: str = "cpu") -> dict[str, int]:
    """Mark the model int8 (quantised for ``engine``), check it like every export, write it
    atomically; returns its qdq_summary. ``source`` is the fp32 model it was quantised from."""
    # Symbolic shape inference renamed the dynamic output dims (e.g. "DepthToSpace_40_o0__d2");
    # the fp32 model's declared I/O ("batch", "4*height", ...) is the contract's wording.
    for mine, theirs in ((model.graph.input, source.graph.input), (model.graph.output, source.graph.output)):
        declared = {v.name: v for v in theirs}
        for value in mine:
            if value.name in declared:
                value.type.CopyFrom(declared[value.name].type)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({p.key: p.value for p in source.metadata_props})
    props[contract.META_PRECISION] = "int8"
    props[contract.META_INT8_ENGINE] = engine
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    if model.ir_version > contract.MAX_IR_VERSION:
        raise RuntimeError(f"{dst.name}: quantiser wrote IR version {model.ir_version}; the runtimes read <= {contract.MAX_IR_VERSION}")
    summary = qdq_summary(model)
    if not summary["quantized_convs"] or summary["per_tensor_weights"]:
        raise RuntimeError(f"{dst.name}: quantisation did not give per-channel int8 convs ({summary})")
    onnx.checker.check_model(model, full_check=True)
    contract.check_onnx_io(model, dst.name)
    atomic_write_bytes(dst, model.SerializeToString())
    return summary


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts that show what the quantiser did: Q and DQ nodes, convs whose weight comes
    through an int8 DequantizeLinear, and how many of those have per-tensor scales."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dq_of = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    quantized = per_tensor = 0
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        dq = dq_of.get(conv.input[1])
        if dq is None or dq.input[0] not in inits or inits[dq.input[0]].data_type != onnx.TensorProto.INT8:
            continue
        quantized += 1
        scale = inits.get(dq.input[1])
        per_tensor += scale is None or int(np.prod(scale.dims)) <= 1
    ops = [n.op_type for n in graph.node]
    return {
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "quantized_convs": quantized,
        "per_tensor_weights": per_tensor,
    }


def quality_vs_fp32(fp32: str | os.PathLike, int8: str | os.PathLike, calibration: CalibrationSet, batches: list | None = None) -> dict[str, Any]:
    """The int8 model against the fp32 one: PSNR-Y on the natural check images (bounded
    by MIN_PSNR_Y, image by image) and PSNR on the [0, 1] output over the parity inputs
    (recorded: synthetic patterns such as noise lie outside the calibrated ranges, so
    they get no bound of their own)."""
    from srdeploy.quality.metrics import psnr_y
    from srdeploy.runtime.upscaler import Upscaler

    # The sessions upscale runs: ONNX Runtime fp32 (the reference of every bound), and the
    # engine `auto` picks for this int8 file (the one it was quantised for, where installed).
    int8_runner = Upscaler(int8, provider="auto", tile=None)
    reference, candidate = parity.runtime_backend(fp32, "cpu"), int8_runner.infer
    ref, out = _as_uint8_images(reference(calibration.check_lr)), _as_uint8_images(candidate(calibration.check_lr))
    per_image = [psnr_y(o, r) for o, r in zip(out, ref)]
    batches = batches if batches is not None else parity.parity_batches()
    rows = parity.compare("int8", parity.run_backend(candidate, batches), "fp32", parity.run_backend(reference, batches), parity.INT8_LIMITS)
    natural = {
        "images": calibration.check_files,
        "held_out": calibration.check_held_out,
        "psnr_y_db_mean": round(float(np.mean(per_image)), 3),
        "psnr_y_db_min": round(float(np.min(per_image)), 3),
        "min_psnr_y_db": MIN_PSNR_Y,
    }
    failures = [f"{Path(int8).name}: PSNR-Y {p:.2f} dB < {MIN_PSNR_Y:g} dB vs fp32 on {name}" for p, name in zip(per_image, calibration.check_files) if p < MIN_PSNR_Y]
    failures += rows.failures  # NaN/Inf or collapsed outputs
    return {
        "reference": f"onnxruntime fp32 ({Path(fp32).name})",
        "engine": f"{int8_runner.provider} {int8_runner.precision}",
        "natural_images": natural,
        "parity_inputs": {"psnr_db": round(rows.psnr, 3), "max_abs": round(rows.max_abs, 5), "mean_abs": round(rows.mean_abs, 6)},
        "ok": not failures,
        "failures": failures,
    }


def _as_uint8_images(sr: np.ndarray) -> np.ndarray:
    """float32 (N, 3, H, W) in [0, 1] -> uint8 (N, H, W, 3), rounded as every output is."""
    return np.rint(np.clip(sr, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
