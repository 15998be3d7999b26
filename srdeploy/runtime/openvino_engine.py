"""OpenVINO's CPU plugin as a tile runner: float32 (1, 3, h, w) -> (1, 3, sh, sw).

The model is read once (an ONNX file, or the bytes of a graph srdeploy.runtime.cpu_graph
rewrote) and compiled for each window shape it meets: the tile windows have a handful of
fixed sizes, and a static shape lets the plugin pick its kernels and memory layout once.
Compiled shapes are kept in a small LRU cache; each thread gets its own infer request
(a request must not run two windows at once).

Precision: ``fp32`` keeps f32 everywhere; ``bf16`` asks the plugin to compute in bf16
(f32 accumulation) on CPUs with bf16 units; an int8 (QDQ) model runs its quantised
convolutions as int8, and what it keeps in float (the head convolution of srdeploy's NNCF
export, the ops around the Q/DQ pairs) in bf16 where the CPU has bf16 units, else f32
(docs/results.md, "On the AMX Xeon"). The plugin would quietly run f32 where bf16 is not
supported: srdeploy.runtime.engines refuses that choice before a runner is made.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from typing import Any

# OpenVINO's telemetry, when its package is there, starts a thread and a child process on
# import that send a request to a web analytics service on every run and write ~/intel:
# a Ctrl-C in the first second could deadlock on the import lock, print the child's
# traceback, or be swallowed. OpenVINO runs without it (it imports it optionally).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

import numpy as np

from srdeploy.runtime import contract, tiling

MAX_COMPILED_SHAPES = tiling.SHAPES_KEPT
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 comes from the graph's Q/DQ; its float parts: see bf16_units
INSTALL_HINT = "install OpenVINO: pip install 'srdeploy[cpu]' (it carries openvino)"


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def capabilities() -> set[str]:
    """What OpenVINO's CPU plugin says this CPU can do (FP32, BF16, INT8, ...)."""
    import openvino as ov

    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def native_bf16() -> bool:
    """Whether OpenVINO computes in bf16 here: it is installed, the CPU has bf16 units
    (srdeploy.runtime.cpus) and its CPU plugin lists BF16. Elsewhere a bf16 hint would
    quietly run f32."""
    from srdeploy.runtime.cpus import cpu_info

    return available() and cpu_info().has_bf16 and "BF16" in capabilities()


def version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


class OpenVinoRunner:
    """An ONNX model on OpenVINO's CPU plugin (see the module docstring).

    ``model``: a path to an .onnx file or the serialised bytes of one. ``threads``: CPU
    threads of the plugin's pool. ``bf16_units``: the CPU computes bf16 natively (an int8
    model's float parts then run in bf16). Raises ValueError when OpenVINO cannot read the
    model.
    """

    def __init__(self, model: str | os.PathLike | bytes, precision: str, threads: int, bf16_units: bool = False):
        import openvino as ov

        if precision not in PRECISION_HINTS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)}, got {precision!r}")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(model, b"") if isinstance(model, bytes) else self.core.read_model(os.fspath(model))
        except Exception as e:  # OpenVINO raises its own RuntimeError subclasses
            raise ValueError(f"OpenVINO cannot read this model: {openvino_reason(e)}") from None
        self.precision = precision
        self.config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "int8" and bf16_units else PRECISION_HINTS[precision],
            "INFERENCE_NUM_THREADS": threads,
            # One window at a time on all the threads: the batch overlaps file work with
            # it on other threads, and the server runs one request per worker.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Pinned, every process's threads go to the same first cores: two 1-thread
            # processes (Ray actors, TorchServe workers) then share one core and each runs
            # at half speed. Unpinned costs nothing alone (docs/results.md).
            "ENABLE_CPU_PINNING": False,
        }
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._compiling = threading.Lock()
        self._local = threading.local()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        shape = tuple(batch.shape)
        compiled = self.compiled_for(shape)
        requests = self._local.__dict__.setdefault("requests", {})  # shape -> (compiled, its request)
        if shape not in requests or requests[shape][0] is not compiled:
            requests[shape] = (compiled, compiled.create_infer_request())
            for gone in [s for s in requests if s not in self._compiled]:  # evicted from the cache
                del requests[gone]
        outputs = requests[shape][1].infer({contract.INPUT_NAME: batch})
        return outputs[contract.OUTPUT_NAME].copy()  # the request reuses its output buffer

    def compiled_for(self, shape: tuple[int, ...]) -> Any:
        """The model compiled for one static input shape (compiled on first use, cached)."""
        with self._compiling:
            if shape in self._compiled:
                self._compiled.move_to_end(shape)
                return self._compiled[shape]
            model = self.model.clone()
            model.reshape({contract.INPUT_NAME: list(shape)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self._compiled[shape] = compiled
            while len(self._compiled) > MAX_COMPILED_SHAPES:
                self._compiled.popitem(last=False)
            return compiled


def openvino_reason(error: Exception) -> str:
    """OpenVINO's report in one line: its messages run over several lines, each stage of
    the C++ call stack ("Exception from src/...", "Check 'x' failed at ...") on its own;
    only the lines that say what is wrong are kept."""
    stack = ("Exception from ", "Check '")
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith(stack)]
    return "; ".join(lines) or str(error).strip().replace("\n", " ")
