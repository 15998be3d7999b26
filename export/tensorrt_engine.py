"""TensorRT engines from the contract ONNX files, and a small runner for parity checks.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srdeploy.io.files import atomic_write_bytes
from srdeploy.runtime import contract

INSTALL_HINT = (
    "pip install 'srdeploy[tensorrt]' (NVIDIA's tensorrt wheel, matching your CUDA driver) "
    "on a machine with an NVIDIA GPU"
)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which and how to get it."""


def require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise TensorRTUnavailable."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT engines need the `tensorrt` Python package, which is not installed ({e}). Install it: {INSTALL_HINT}.") from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is installed but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); TensorRT engines are built and run on a GPU."
        )
    return trt


@dataclass(frozen=True)
class TileProfile:
    """The ``lr`` shapes (N, 3, H, W) an engine accepts: TensorRT tunes kernels for ``opt``
    and accepts anything between ``min`` and ``max`` elementwise.

    The defaults fit 128x128 LR tiles (the engine's tile, which the Upscaler reads back
    from the engine) plus a 24-px halo on each side: 176x176; edge tiles and small whole
    images go down to 16x16.
    """

    min_shape: tuple[int, int, int, int] = (1, 3, 16, 16)
    opt_shape: tuple[int, int, int, int] = (1, 3, 176, 176)
    max_shape: tuple[int, int, int, int] = (4, 3, 176, 176)

    def __post_init__(self) -> None:
        for label, shape in (("min", self.min_shape), ("opt", self.opt_shape), ("max", self.max_shape)):
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise ValueError(f"profile {label} shape {shape} is not (N, 3, H, W) with positive sizes")
        if not all(a <= b <= c for a, b, c in zip(self.min_shape, self.opt_shape, self.max_shape)):
            raise ValueError(f"profile needs min <= opt <= max elementwise, got {self.min_shape} / {self.opt_shape} / {self.max_shape}")

    @classmethod
    def for_tiles(cls, tile: int = 128, overlap: int = 24, max_batch: int = 4, min_side: int = 16) -> "TileProfile":
        """Profile for the runtime's tiles of ``tile`` LR pixels plus ``overlap`` each side."""
        side = tile + 2 * overlap
        low = min(min_side, side)
        return cls((1, 3, low, low), (1, 3, side, side), (max_batch, 3, side, side))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min_shape, shape, self.max_shape))

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)}


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


class EngineRunner:
    """Run a serialised engine on batches: float32 (N, 3, H, W) in [0, 1] -> (N, 3, sH, sW).

    Device buffers are torch CUDA tensors; the engine runs on torch's current stream.
    Batches larger than the profile's maximum are split.
    """

    def __init__(self, engine_path: str | os.PathLike, device: str = "cuda:0"):
        import torch

        trt = require_tensorrt()
        self.path = Path(engine_path)
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{self.path}: not an engine this TensorRT {trt.__version__} / GPU can load (engines are GPU- and version-specific)")
        names = {self.engine.get_tensor_name(i): self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) for i in range(self.engine.num_io_tensors)}
        wanted = {contract.INPUT_NAME: trt.TensorIOMode.INPUT, contract.OUTPUT_NAME: trt.TensorIOMode.OUTPUT}
        if names != wanted:
            raise ValueError(f"{self.path}: engine I/O {sorted(names)} does not match the contract ({contract.CONTRACT_TEXT})")
        for name in wanted:
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise ValueError(f"{self.path}: tensor '{name}' is {self.engine.get_tensor_dtype(name)}, expected float32")
        lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(contract.INPUT_NAME, 0))
        self.profile = TileProfile(lo, opt, hi)
        self.context = self.engine.create_execution_context()

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected a float32 (N, 3, H, W) batch, got shape {lr.shape}")
        step = self.profile.max_shape[0]
        return np.concatenate([self._run(lr[i : i + step]) for i in range(0, lr.shape[0], step)])

    def _run(self, lr: np.ndarray) -> np.ndarray:
        import torch

        if not self.profile.accepts(lr.shape):
            raise ValueError(f"{self.path.name}: input shape {lr.shape} is outside the engine's profile {self.profile.as_dict()}")
        x = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32)).to(self.device)
        self.context.set_input_shape(contract.INPUT_NAME, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(contract.OUTPUT_NAME)), dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(contract.INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(contract.OUTPUT_NAME, y.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed for input shape {lr.shape}")
        stream.synchronize()
        return y.cpu().numpy()
