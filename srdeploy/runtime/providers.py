"""ONNX Runtime's execution providers: which one starts, how its session is set up, and
the runner that turns a session into ``float32 (1, 3, h, w) -> (1, 3, sh, sw)``; also the
door to TensorRT engine files.

``cpu``, ``cuda`` and ``tensorrt`` map to ONNX Runtime's execution providers (which engine
and precision run a model at all is srdeploy.runtime.engines' choice). An explicit request
that cannot be met is a ProviderError naming what is available and how to get the rest.
ONNX Runtime itself silently drops a GPU provider that fails to load, so every session is
checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from srdeploy.io.streams import native_stderr_to
from srdeploy.runtime import contract, cpu_graph, tiling
from srdeploy.runtime.engines import ProviderError

ORT_PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
EXECUTION_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
INSTALL_HINT = {
    "cpu": "pip install 'srdeploy[cpu]'",
    "cuda": "install the GPU build of ONNX Runtime with the CUDA and cuDNN libraries it was built for (pip install 'srdeploy[gpu]' "
    "brings both; onnxruntime-gpu replaces onnxruntime), on a machine with an NVIDIA GPU and driver",
    "tensorrt": "install onnxruntime-gpu and TensorRT 10 (pip install 'srdeploy[gpu,tensorrt]') with its libraries "
    "on the library path, on a machine with an NVIDIA GPU and driver",
}


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers in this install; none without ONNX Runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def select_provider(requested: str, available: list[str]) -> str:
    """``requested`` (auto|cpu|cuda|tensorrt) -> the provider to start, given ONNX Runtime's
    available execution providers. ``auto`` never picks TensorRT: its first engine build
    takes minutes, which nobody should get without asking."""
    if requested not in ORT_PROVIDERS:
        raise ProviderError(f"unknown ONNX Runtime provider {requested!r}: use one of {', '.join(ORT_PROVIDERS)}")
    if requested == "auto":
        return "cuda" if EXECUTION_PROVIDERS["cuda"] in available else "cpu"
    if EXECUTION_PROVIDERS[requested] not in available:
        if not available:
            raise ProviderError(f"provider {requested!r} needs ONNX Runtime, which is not installed. To get it, {INSTALL_HINT[requested]}.")
        import onnxruntime as ort

        raise ProviderError(
            f"provider {requested!r} ({EXECUTION_PROVIDERS[requested]}) is not available in this ONNX Runtime "
            f"(onnxruntime {ort.__version__}; available: {', '.join(available)}). To get it, {INSTALL_HINT[requested]}."
        )
    return requested


def open_session(path: Path, provider: str, threads: int, window: int | None, options: Any = None) -> Any:
    """An ONNX Runtime session for ``provider`` (cpu|cuda|tensorrt), verified to run on it.

    ``window`` is the side of the fixed tile windows (TensorRT builds its engine profile
    for it; required for the GPU providers). ``options``: SessionOptions to use instead of
    ``session_options(provider, threads)`` (benchmarks add profiling to those). Raises
    ProviderError when a GPU provider does not start, ValueError when the CPU cannot load
    the model.
    """
    import onnxruntime as ort

    options = options or session_options(provider, threads)
    if provider == "cpu":
        try:
            model = cpu_graph.optimized_bytes(path) if cpu_graph.nchwc_cpu() else None
            return ort.InferenceSession(model or str(path), sess_options=options, providers=_provider_list(provider, window))
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise ValueError(f"{path}: ONNX Runtime cannot load this model: {e}") from None
    unloaded = load_cuda_libraries()
    log = io.StringIO()
    try:
        with native_stderr_to(log):  # a provider that cannot load is logged there, in several coloured lines
            session = ort.InferenceSession(str(path), sess_options=options, providers=_provider_list(provider, window))
    except Exception as e:
        raise ProviderError(f"ONNX Runtime could not start {provider} for {path}: {e}{unloaded}{_load_failure(log.getvalue())}") from None
    wanted = EXECUTION_PROVIDERS[provider]
    if wanted not in session.get_providers():
        raise ProviderError(
            f"{wanted} is listed by ONNX Runtime but failed to start (the session would run on "
            f"{', '.join(session.get_providers())}){unloaded}{_load_failure(log.getvalue())}; "
            f"check the GPU driver and libraries: {INSTALL_HINT[provider]}"
        )
    sys.stderr.write(log.getvalue())  # it started: what ONNX Runtime logged is the user's to see
    return session


def _load_failure(log: str) -> str:
    """Why ONNX Runtime could not load a provider's library, from its log ('' if it did not say):
    most often a library it needs (the NVIDIA driver's libcuda.so.1, CUDA, cuDNN) is missing."""
    found = re.search(r"Failed to load library (\S+) with error: ([^\n\x1b]+)", log)
    return f"; {Path(found.group(1)).name} did not load: {found.group(2).strip()}" if found else ""


def load_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries that NVIDIA's wheels installed beside ONNX Runtime
    (``onnxruntime-gpu[cuda,cudnn]``, which the ``gpu`` extra asks for) into this process.

    The CUDA provider's library names them without a search path, so without this it finds
    only a system-wide CUDA of the right major version. ONNX Runtime's ``preload_dlls``
    (1.21+; a no-op in the CPU build) knows where the wheels put them; it prints what it
    could not load, which is returned as ``"; ..."`` for the error message ('' when all
    loaded) instead of reaching stdout, where the batch's results go."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as e:  # its own checks raise RuntimeError; a library's loader, OSError
        printed.write(f"preloading the CUDA libraries failed: {e}")
    lines = [line.strip() for line in printed.getvalue().splitlines() if line.strip()]
    return "".join(f"; {line}" for line in lines)


def session_options(provider: str, threads: int) -> Any:
    """The ONNX Runtime settings every srdeploy session uses (benchmarks/ort_cpu_variants.py
    measures the alternatives)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ENABLE_ALL adds the NCHWc layout on x86, which the graph rewrites of
    # srdeploy.runtime.cpu_graph target. Each setting here was measured against its
    # alternatives: docs/results.md, "ONNX Runtime session options".
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops: nothing to run in parallel
    options.intra_op_num_threads = threads if provider == "cpu" else 1  # on a GPU the CPU only feeds it
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: a batch shares the CPU with image
    # decoding/encoding, and a server with its other workers (spinning cost CPU and lost
    # images/s).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # On the CPU, no memory pattern: planning one block for all of a run's tensors nearly
    # doubled the peak RSS of a tile window. GPU sessions keep ONNX Runtime's default.
    options.enable_mem_pattern = provider != "cpu"
    options.log_severity_level = 3
    return options


def _provider_list(provider: str, window: int | None) -> list[Any]:
    # EXHAUSTIVE cuDNN search runs once per input shape; the fixed windows keep that to a few.
    # No TF32 (on by default in ONNX Runtime): it rounds fp32 inputs to 10-bit mantissas,
    # about 1e-3, and fp32 is held to 1e-4 of the CPU; the fast GPU path is the fp16 model.
    cuda = ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE", "arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"})
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if not window:
        raise ProviderError(f"provider {provider!r} runs fixed tiles; untiled (--tile 0) is CPU-only")
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    cache = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "srdeploy" / "tensorrt")
    name = contract.INPUT_NAME
    trt = {
        "device_id": 0,
        "trt_engine_cache_enable": True,  # the engine build takes minutes: once per GPU and model
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        # Windows are window x window, except for images smaller than one window.
        "trt_profile_min_shapes": f"{name}:1x3x1x1",
        "trt_profile_opt_shapes": f"{name}:1x3x{window}x{window}",
        "trt_profile_max_shapes": f"{name}:1x3x{window}x{window}",
    }
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


class OrtRunner:
    """An ONNX Runtime session as a function float32 (1, 3, h, w) -> (1, 3, sh, sw).

    With I/O binding (the default on a GPU, ``device="cuda"``) each window shape gets
    device buffers allocated and bound once per thread; a call copies the window into
    the bound input and the result out, so no tile buffer is allocated per run and the
    whole image never sits on the device. ``device="cpu"`` runs plain ``session.run``.
    """

    def __init__(self, session: Any, scale: int, device: str = "cpu", device_id: int = 0, io_binding: bool | None = None):
        self.session, self.scale, self.device, self.device_id = session, scale, device, device_id
        self.io_binding = device != "cpu" if io_binding is None else io_binding
        self._local = threading.local()  # IOBinding objects are not shared between threads

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.io_binding:
            return self.session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})[0]
        binding, lr_value = self._bound(batch.shape)
        lr_value.update_inplace(batch)  # host -> device, into the same buffer
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _bound(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        import onnxruntime as ort

        cache: OrderedDict = self._local.__dict__.setdefault("bindings", OrderedDict())
        if shape in cache:
            cache.move_to_end(shape)
        else:
            n, c, h, w = shape
            lr_value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, self.device_id)
            sr_shape = [n, c, h * self.scale, w * self.scale]
            sr_value = ort.OrtValue.ortvalue_from_shape_and_type(sr_shape, np.float32, self.device, self.device_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(contract.INPUT_NAME, lr_value)
            binding.bind_ortvalue_output(contract.OUTPUT_NAME, sr_value)
            cache[shape] = (binding, lr_value)
            while len(cache) > tiling.SHAPES_KEPT:  # each holds device memory: a window's in and out
                cache.popitem(last=False)
        return cache[shape]


def open_engine(path: Path) -> Any:
    """A TensorRT engine file as a runner (srdeploy.runtime.tensorrt), or ProviderError
    saying what is missing (the tensorrt and cuda-python packages, a GPU)."""
    from srdeploy.runtime.tensorrt import EngineRunner, TensorRTUnavailable

    try:
        return EngineRunner(path)
    except TensorRTUnavailable as e:
        raise ProviderError(f"{path}: {e}") from None
