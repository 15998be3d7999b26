"""What runs a model: a provider (the engine) and a precision, chosen for this machine.

Providers: ``cpu`` (ONNX Runtime's CPU execution provider), ``openvino`` (OpenVINO's CPU
plugin), ``cuda`` and ``tensorrt`` (ONNX Runtime's GPU providers; ``.engine`` files run on
TensorRT itself). Precisions: ``fp32``; ``bf16`` (OpenVINO, on CPUs with bf16 units);
``int8`` and ``fp16``, which are properties of the model file (``srdeploy export --int8``
or ``--fp16``), not of the engine.

``auto`` picks, in this order: CUDA when ONNX Runtime can start it (the Upscaler tries);
else the CPU engine and precision measured fastest on this class of CPU among those that
meet the default quality contract, at most 0.02 dB PSNR-Y below ONNX Runtime fp32 on the
CelebA-HQ test split. int8 is never picked by ``auto``: it is a model of its own, with its
own bound (0.2 dB), and it runs on the engine it was quantised for. What ``auto`` picked,
and why, is printed, journalled and logged. An explicit request that this machine cannot
honour is an error, never a quiet substitute; one it can honour at a cost (an int8 file on
the engine it was not made for) runs, and the cost is said the same way. The measurements
behind the rules are in docs/results.md ("Engines per CPU").
"""

from __future__ import annotations

from dataclasses import dataclass

from srdeploy.runtime.cpus import CpuInfo

PROVIDERS = ("auto", "cpu", "openvino", "cuda", "tensorrt")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
CPU_PROVIDERS = ("cpu", "openvino")
GPU_PROVIDERS = ("cuda", "tensorrt")


class ProviderError(RuntimeError):
    """The requested engine or precision is missing, unsupported here, or failed to start."""


@dataclass(frozen=True)
class Engine:
    """The engine that runs a model, and why: what ``auto`` decided, or what an explicit
    choice costs (None when there is nothing to say). The first line of a run, the journal
    and the handler's log carry it."""

    provider: str  # cpu | openvino | cuda | tensorrt
    precision: str  # fp32 | bf16 | fp16 | int8
    why: str | None = None


def fastest_cpu_engine(cpu: CpuInfo, model_precision: str, openvino: bool, openvino_bf16: bool, int8_engine: str = "cpu") -> Engine:
    """The CPU engine ``auto`` takes on ``cpu`` for a model computing in ``model_precision``
    (fp32 or int8). ``openvino``: OpenVINO is installed; ``openvino_bf16``: its CPU
    plugin lists BF16; ``int8_engine``: the engine an int8 model was quantised for
    (srdeploy.runtime.contract.META_INT8_ENGINE). The rules follow the measurements in
    docs/results.md."""
    if model_precision == "int8":
        # Each engine kept int8's 0.2 dB bound only on the file made for it, on AVX2, AVX-512
        # and AMX CPUs alike (docs/results.md, "INT8: which file, which engine").
        if int8_engine == "openvino" and openvino:
            # Without VNNI too (with a note): on the AVX2 EPYC NNCF's file lost as much on ONNX
            # Runtime as on OpenVINO, and ran there slower than fp32.
            cost = _int8_cost("int8", int8_engine, "openvino", cpu)
            return Engine("openvino", "int8", "auto: an int8 model quantised for OpenVINO (NNCF), OpenVINO int8" + (f"; but {cost}" if cost else ""))
        if int8_engine == "openvino":
            return Engine("cpu", "int8", "auto: an int8 model quantised for OpenVINO, which is not installed: ONNX Runtime int8 (pip install 'srdeploy[cpu]')")
        return Engine("cpu", "int8", "auto: an int8 model from ONNX Runtime's quantiser, ONNX Runtime int8")
    if not openvino:
        return Engine("cpu", model_precision, f"auto: ONNX Runtime {model_precision} (OpenVINO is not installed: pip install 'srdeploy[cpu]')")
    if cpu.has_bf16 and openvino_bf16:
        return Engine("openvino", "bf16", "auto: bf16 units on this CPU, OpenVINO bf16 (within 0.02 dB PSNR-Y of fp32 on the shipped models)")
    return Engine("openvino", "fp32", "auto: no bf16 units on this CPU, OpenVINO fp32")


def check_request(provider: str, precision: str, model_precision: str) -> None:
    """Raise ProviderError for a request no machine can honour (what depends on the
    machine is left to :func:`resolve`): an int8 or fp16 file computes in its own
    precision, int8 needs an int8 file, bf16 runs on OpenVINO only, and OpenVINO takes no
    fp16 file. ``srdeploy package`` checks an archive's settings with it."""
    if model_precision in ("int8", "fp16"):  # the file decides the arithmetic
        if precision not in ("auto", model_precision):
            raise ProviderError(f"this is an {model_precision} model, which computes in {model_precision}; for {precision}, pass its fp32 model.onnx")
    elif precision == "int8":
        raise ProviderError("int8 needs an int8 model: srdeploy export CHECKPOINT -o OUT --int8 --calibration FOLDER, then --model OUT/model.int8.onnx")
    if provider == "openvino" and model_precision == "fp16":
        raise ProviderError("an fp16 model is for GPUs (--provider cuda), and on a CPU runs on ONNX Runtime (--provider cpu); "
                            "for OpenVINO use the fp32 model.onnx, which it runs in bf16 on CPUs with bf16 units")
    if precision == "bf16" and provider not in ("auto", "openvino"):
        raise ProviderError(f"provider {provider!r} has no bf16 path; bf16 runs on --provider openvino (CPUs with bf16 units)")


def resolve(provider: str, precision: str, model_precision: str, cpu: CpuInfo, openvino: bool, openvino_bf16: bool, int8_engine: str = "cpu") -> Engine:
    """The engine for a request on this machine, before any GPU is tried: ``provider`` in
    PROVIDERS, ``precision`` in PRECISIONS, ``model_precision`` what the file computes in
    (fp32 | fp16 | int8), ``int8_engine`` what an int8 file was quantised for. ``auto``
    resolves to the CPU choice here; the Upscaler tries CUDA first. Raises ProviderError
    for a combination this machine cannot honour."""
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    if precision not in PRECISIONS:
        raise ProviderError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    bf16_here = cpu.has_bf16 and openvino_bf16
    check_request(provider, precision, model_precision)
    if provider == "auto":
        if precision == "bf16":
            provider = "openvino"  # the only engine with a bf16 path
        else:
            engine = fastest_cpu_engine(cpu, "int8" if model_precision == "int8" else "fp32", openvino, openvino_bf16, int8_engine)
            if model_precision == "fp16":
                return Engine("cpu", "fp16", "auto: an fp16 model without a GPU, ONNX Runtime")
            if precision == "fp32" and engine.precision == "bf16":
                return Engine("openvino", "fp32", "auto: fp32 as asked, OpenVINO on this CPU")
            return engine
    if provider == "openvino":
        if not openvino:
            raise ProviderError("provider 'openvino' needs the openvino package, which is not installed: pip install 'srdeploy[cpu]'")
        if model_precision == "int8":
            return Engine("openvino", "int8", _int8_cost("int8", int8_engine, "openvino", cpu))
        if precision == "bf16" and not bf16_here:
            raise ProviderError(f"bf16 needs a CPU with bf16 units (avx512_bf16 or amx_bf16), and this is {cpu.describe()}; "
                                "OpenVINO would quietly compute in fp32. Use --precision fp32")
        if precision == "auto":
            return Engine("openvino", "bf16" if bf16_here else "fp32", f"auto precision: {'bf16 units' if bf16_here else 'no bf16 units'} on this CPU")
        return Engine("openvino", precision)
    return Engine(provider, model_precision if model_precision in ("int8", "fp16") else "fp32", _int8_cost(model_precision, int8_engine, provider, cpu))


def _int8_cost(model_precision: str, int8_engine: str, provider: str, cpu: CpuInfo) -> str | None:
    """What running an int8 file on ``provider`` here costs, from docs/results.md (said, never
    refused): another CPU engine than the one it was quantised for, or NNCF's file on a CPU
    without int8 dot products; else None."""
    if model_precision != "int8" or provider not in CPU_PROVIDERS:
        return None
    if provider == "openvino" and int8_engine == "openvino":
        if cpu.has_int8_dot:
            return None
        return ("this CPU has no VNNI or AMX, where OpenVINO's loss of PSNR-Y on such a file went past int8's 0.2 dB: "
                "for this CPU, export with --int8-engine cpu")
    if provider == "openvino":
        return ("as asked, on an int8 file quantised for ONNX Runtime: OpenVINO's loss of PSNR-Y on such files went past int8's 0.2 dB; "
                "srdeploy export --int8 --int8-engine openvino makes one for OpenVINO")
    if int8_engine == "openvino":
        return "as asked, on an int8 file quantised for OpenVINO: ONNX Runtime ran such files slower than its fp32; auto runs it on OpenVINO"
    return None
