"""Running a serialised TensorRT engine: float32 (N, 3, H, W) in [0, 1] -> (N, 3, sH, sW).

Torch-free, like the rest of the runtime: device memory, copies and the stream come from
NVIDIA's cuda-python bindings (``cuda.bindings.runtime``), the engine from ``tensorrt``;
both are in the ``tensorrt`` extra. srdeploy.export.tensorrt_engine builds the engines
(with torch available there) and shares :class:`TileProfile` and :func:`require_tensorrt`.

Unverified: no session of this project has had TensorRT on a GPU. The code follows
TensorRT 10's name-based I/O API (set_input_shape, set_tensor_address, execute_async_v3);
the CPU tests cover the profile and the messages for a missing package or GPU only.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srdeploy.runtime import contract

INSTALL_HINT = (
    "pip install 'srdeploy[tensorrt]' (NVIDIA's tensorrt and cuda-python wheels, matching your CUDA driver) "
    "on a machine with an NVIDIA GPU"
)


# The default engine profile (``srdeploy export --tile/--overlap/--max-batch``): 128x128 LR
# tiles plus the shipped models' 24-px halo on each side, up to 4 windows a call.
PROFILE_TILE, PROFILE_OVERLAP, PROFILE_MAX_BATCH = 128, 24, 4
_SIDE = PROFILE_TILE + 2 * PROFILE_OVERLAP


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which and how to get it."""


def require_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module, or raise TensorRTUnavailable."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT engines need the `tensorrt` Python package, which is not installed ({e}). Install it: {INSTALL_HINT}.") from None
    devices = cuda_device_count()
    if not devices:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed but the CUDA runtime sees no GPU; TensorRT engines are built and run on a GPU.")
    return trt


@dataclass(frozen=True)
class TileProfile:
    """The ``lr`` shapes (N, 3, H, W) an engine accepts: TensorRT tunes kernels for ``opt``
    and accepts anything between ``min`` and ``max`` elementwise.

    The defaults fit the PROFILE_* tiles (the engine's tile, which the Upscaler reads back
    from the engine) with their halo; a window is smaller only where the image is (windows
    are clamped into it), so down to 1x1: a 300x10 image's windows are 10 rows high.
    """

    min_shape: tuple[int, int, int, int] = (1, 3, 1, 1)
    opt_shape: tuple[int, int, int, int] = (1, 3, _SIDE, _SIDE)
    max_shape: tuple[int, int, int, int] = (PROFILE_MAX_BATCH, 3, _SIDE, _SIDE)

    def __post_init__(self) -> None:
        for label, shape in (("min", self.min_shape), ("opt", self.opt_shape), ("max", self.max_shape)):
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise ValueError(f"profile {label} shape {shape} is not (N, 3, H, W) with positive sizes")
        if not all(a <= b <= c for a, b, c in zip(self.min_shape, self.opt_shape, self.max_shape)):
            raise ValueError(f"profile needs min <= opt <= max elementwise, got {self.min_shape} / {self.opt_shape} / {self.max_shape}")

    @classmethod
    def for_tiles(cls, tile: int = PROFILE_TILE, overlap: int = PROFILE_OVERLAP, max_batch: int = PROFILE_MAX_BATCH) -> "TileProfile":
        """Profile for the runtime's tiles of ``tile`` LR pixels plus ``overlap`` each side."""
        side = tile + 2 * overlap
        return cls((1, 3, 1, 1), (1, 3, side, side), (max_batch, 3, side, side))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min_shape, shape, self.max_shape))

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)}


def _cudart() -> Any:
    """NVIDIA's CUDA runtime bindings (cuda-python 12.6 and newer; ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as e:
            raise TensorRTUnavailable(f"running TensorRT engines needs NVIDIA's cuda-python package ({e}). Install it: {INSTALL_HINT}.") from None
    return runtime


def _checked(result: Any, what: str) -> Any:
    """cuda-python returns (error, *values): raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA {what} failed: {error}")
    return values[0] if len(values) == 1 else values


def cuda_device_count() -> int:
    """GPUs the CUDA runtime sees (0 without a driver or a GPU)."""
    try:
        cudart = _cudart()
        return int(_checked(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
    except (TensorRTUnavailable, RuntimeError):
        return 0


class EngineRunner:
    """A serialised engine on batches: float32 (N, 3, H, W) in [0, 1] -> (N, 3, sH, sW).

    Device buffers for the profile's largest batch are allocated once; a call copies the
    batch in, runs the engine on its own stream and copies the result out. Batches larger
    than the profile's maximum are split. One execution context: calls are serialised.
    """

    def __init__(self, engine_path: str | os.PathLike):
        trt = require_tensorrt()
        self.cudart = _cudart()
        self.path = Path(engine_path)
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
        self.max_side = int(self.profile.max_shape[2])
        self.context.set_input_shape(contract.INPUT_NAME, self.profile.max_shape)
        self._in_bytes = 4 * int(np.prod(self.profile.max_shape))  # float32
        self._out_bytes = 4 * int(np.prod(tuple(self.context.get_tensor_shape(contract.OUTPUT_NAME))))
        self._lr = _checked(self.cudart.cudaMalloc(self._in_bytes), "cudaMalloc")
        self._sr = _checked(self.cudart.cudaMalloc(self._out_bytes), "cudaMalloc")
        self._stream = _checked(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected a float32 (N, 3, H, W) batch, got shape {lr.shape}")
        step = self.profile.max_shape[0]
        with self._lock:
            return np.concatenate([self._run(lr[i : i + step]) for i in range(0, lr.shape[0], step)])

    def _run(self, lr: np.ndarray) -> np.ndarray:
        if not self.profile.accepts(lr.shape):
            raise ValueError(f"{self.path.name}: input shape {lr.shape} is outside the engine's profile {self.profile.as_dict()}")
        cudart, host = self.cudart, np.ascontiguousarray(lr, dtype=np.float32)
        self.context.set_input_shape(contract.INPUT_NAME, tuple(host.shape))
        out = np.empty(tuple(self.context.get_tensor_shape(contract.OUTPUT_NAME)), np.float32)
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _checked(cudart.cudaMemcpyAsync(self._lr, host.ctypes.data, host.nbytes, to_device, self._stream), "copy to the GPU")
        self.context.set_tensor_address(contract.INPUT_NAME, int(self._lr))
        self.context.set_tensor_address(contract.OUTPUT_NAME, int(self._sr))
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed for input shape {lr.shape}")
        _checked(cudart.cudaMemcpyAsync(out.ctypes.data, self._sr, out.nbytes, to_host, self._stream), "copy from the GPU")
        _checked(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def __del__(self) -> None:
        cudart = getattr(self, "cudart", None)
        for buffer in (getattr(self, "_lr", None), getattr(self, "_sr", None)):
            if cudart is not None and buffer is not None:
                cudart.cudaFree(buffer)
        stream = getattr(self, "_stream", None)
        if cudart is not None and stream is not None:
            cudart.cudaStreamDestroy(stream)
