"""Measured ceilings: what a large matrix product reaches on these cores, per precision.

A clock-based peak (srdeploy.bench.peak) counts fp32 FMA lanes and says nothing about
int8 dot-product units (VNNI, AMX-INT8) or bf16 ones (AVX512-BF16, AMX-BF16): an int8 row
can exceed 100% of it. So every precision gets its own ceiling, measured now on the same
threads as the rows: the best ``side`` x ``side`` x ``side`` product among the engines that
run that precision here, in GFLOP/s (GOP/s for int8: a multiply and an add per term, as
the convolutions are counted).

- fp32: numpy's sgemm, ONNX Runtime's MatMul (MLAS), OpenVINO's MatMul and, where torch
  is installed, torch.matmul (oneDNN);
- int8: ONNX Runtime's MatMulInteger, uint8 x int8 -> int32 (MLAS's int8 GEMM, the one
  behind its int8 convolutions), and OpenVINO's u8 x s8 MatMul (oneDNN's, VNNI or AMX
  where the CPU has them: its int8 convolutions run faster than MLAS's GEMM);
- bf16: OpenVINO's MatMul with the bf16 precision hint (which converts its f32 input) and
  torch.matmul on bf16 tensors (oneDNN's AMX kernels on such CPUs), only where the CPU has
  bf16 units (elsewhere it would compute fp32 and the number would mean nothing).

Each figure is the best of a few runs after a warm-up.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

SIDE = 2048


def _best_rate(run: Callable[[], object], side: int, repeats: int = 3) -> float:
    run()  # warm-up: thread pools, page faults, kernel choice
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best / 1e9


def _ort_matmul(threads: int, side: int, int8: bool) -> float | None:
    """ONNX Runtime's MatMul (fp32) or MatMulInteger (uint8 x int8); None without ORT."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    if int8:
        a = rng.integers(0, 256, (side, side), dtype=np.uint8)
        weight, op, a_type, c_type = rng.integers(-64, 64, (side, side), dtype=np.int8), "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        a = rng.random((side, side), dtype=np.float32)
        weight, op, a_type, c_type = rng.random((side, side), dtype=np.float32), "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", a_type, [side, side])],
        [helper.make_tensor_value_info("c", c_type, [side, side])], [numpy_helper.from_array(weight, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _best_rate(lambda: session.run(None, {"a": a}), side)


def _openvino_matmul(threads: int, side: int, precision: str) -> float | None:
    """OpenVINO's MatMul with the ``f32`` or ``bf16`` precision hint, or ``int8``: the
    product between FakeQuantize nodes (levels 256 on the input, 255 on the weights), which
    its low-precision passes run as a u8 x s8 kernel, as they do the QDQ convolutions; None
    without OpenVINO."""
    from srdeploy.runtime import openvino_engine

    if not openvino_engine.available():
        return None
    import openvino as ov
    import openvino.opset13 as ops

    def quantized(node, low: float, high: float, levels: int):
        low_c, high_c = (ops.constant(np.array(v, dtype=np.float32)) for v in (low, high))
        return ops.fake_quantize(node, low_c, high_c, low_c, high_c, levels)

    rng = np.random.default_rng(0)
    a = ops.parameter([side, side], ov.Type.f32, name="a")
    weight = ops.constant(rng.uniform(-1.0, 1.0, (side, side)).astype(np.float32))
    if precision == "int8":
        product = ops.matmul(quantized(a, 0.0, 1.0, 256), quantized(weight, -1.0, 1.0, 255), False, False)
        hints = {"INFERENCE_NUM_THREADS": threads}
    else:
        product = ops.matmul(a, weight, False, False)
        hints = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(ov.Model([product], [a], "gemm"), "CPU", hints)
    request = compiled.create_infer_request()
    x = rng.random((side, side), dtype=np.float32)
    return _best_rate(lambda: request.infer({0: x}), side)


def _torch_matmul(threads: int, side: int, dtype: str) -> float | None:
    """torch.matmul of two ``dtype`` (float32 | bfloat16) matrices; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.rand(side, side, generator=generator).to(getattr(torch, dtype)) for _ in range(2))
        return _best_rate(lambda: a @ b, side)
    finally:
        torch.set_num_threads(before)


def _numpy_sgemm(threads: int, side: int) -> float | None:
    """numpy's BLAS on ``threads`` threads (threadpoolctl caps its pool); None where it
    cannot be capped and would use more cores than the rows it is compared with."""
    from srdeploy.runtime.cpus import available_cpus

    a = np.random.default_rng(0).random((side, side), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _best_rate(lambda: a @ a, side) if threads >= available_cpus() else None
    with threadpool_limits(limits=threads, user_api="blas"):
        return _best_rate(lambda: a @ a, side)


def measure(threads: int, side: int = SIDE) -> dict[str, dict]:
    """Per precision: ``{"gflop_per_s": best or None, "by": {engine: GFLOP/s}}`` (None:
    that precision cannot be measured on this machine)."""
    from srdeploy.runtime import openvino_engine
    from srdeploy.runtime.cpus import cpu_info

    candidates = {
        "fp32": {"numpy sgemm": _numpy_sgemm(threads, side), "ORT MatMul": _ort_matmul(threads, side, int8=False),
                 "OpenVINO MatMul": _openvino_matmul(threads, side, "f32"), "torch matmul": _torch_matmul(threads, side, "float32")},
        "int8": {"ORT MatMulInteger u8s8": _ort_matmul(threads, side, int8=True), "OpenVINO MatMul u8s8": _openvino_matmul(threads, side, "int8")},
        "bf16": {},
    }
    if openvino_engine.native_bf16():
        candidates["bf16"]["OpenVINO MatMul bf16"] = _openvino_matmul(threads, side, "bf16")
    if cpu_info().has_bf16:  # torch's own check: it needs no OpenVINO
        candidates["bf16"]["torch matmul bf16"] = _torch_matmul(threads, side, "bfloat16")
    out = {}
    for precision, by in candidates.items():
        by = {k: round(v, 1) for k, v in by.items() if v is not None}
        out[precision] = {"gflop_per_s": max(by.values()) if by else None, "by": by}
    return out
