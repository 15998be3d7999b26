"""TensorRT engines from the contract ONNX files (the runner is srdeploy.runtime.tensorrt).

Precision comes from the ONNX file, not from builder flags: the network is built
*strongly typed*, so ``model.onnx`` gives an fp32 engine and ``model.fp16.onnx`` (fp16
weights and compute, float32 I/O) an fp16 engine. The weakly typed ``BuilderFlag.FP16``
path is deprecated since TensorRT 10.12 and gone in 11; strong typing works on 10.x and
11.x, and the fp16 engine then computes the very graph whose ONNX Runtime parity was
checked. TF32 is switched off so the fp32 engine keeps full fp32 accuracy (TF32's 10-bit
mantissa would miss the 1e-4 parity bound).

An engine is specific to the GPU model and TensorRT version that built it.
"""

from __future__ import annotations

import os
from pathlib import Path

from srdeploy.io.files import atomic_write_bytes
from srdeploy.runtime import contract
from srdeploy.runtime.tensorrt import TileProfile, require_tensorrt


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    profile: TileProfile = TileProfile(),
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and write a serialised engine to
    ``engine_path`` (atomically). ``timing_cache`` is read if it exists and rewritten with
    the tactics timed in this build, so the next build (fp16 after fp32, or a rebuild)
    skips re-timing them."""
    trt = require_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    contract.validate_onnx_model(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(contract.INPUT_NAME, profile.min_shape, profile.opt_shape, profile.max_shape)
    config.add_optimization_profile(shapes)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    # A cache from another GPU or TensorRT version is refused (ignore_mismatch=False):
    # its timings would pick tactics tuned for different hardware.
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{engine_path.name}: TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return engine_path
