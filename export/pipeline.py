"""One export run: generator -> model.onnx [+ model.fp16.onnx] [+ model.int8.onnx]
[+ engines] + manifest.json.

Order matters for the user: the calibration images (for int8) and the parity images
(--images) are read before anything is written, so a bad folder costs nothing; the ONNX files and a manifest describing them
are written next, so a missing TensorRT (checked next, failing fast) still leaves usable
ONNX outputs; parity runs last, and its figures go into the manifest.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from srdeploy import __version__
from srdeploy.export import parity
from srdeploy.io.files import atomic_writer, sha256_file
from srdeploy.runtime import contract, zoo
from srdeploy.runtime.manifest import write_manifest
from srdeploy.runtime.tensorrt import TileProfile
from srdeploy.runtime.zoo import GENERATOR_FILE

FP32_ONNX = zoo.MODEL_FILE
FP16_ONNX = "model.fp16.onnx"
INT8_ONNX = zoo.INT8_FILE
TIMING_CACHE = "tensorrt.timing.cache"
# The reference each artifact is held to: ORT fp32 against torch, the rest
# against ORT fp32, with the fp32 or fp16 bounds.
REFERENCE = "onnxruntime fp32"


def engine_name(precision: str) -> str:
    return f"model.{precision}.engine"


# Written only on request, so removed first (model.onnx is always rewritten in place).
STALE_CANDIDATES = (FP16_ONNX, INT8_ONNX, engine_name("fp32"), engine_name("fp16"))


class InputsRefused(ValueError):
    """The calibration or parity images cannot be used: refused before anything is written."""


@dataclass(frozen=True)
class Int8Request:
    """What ``--int8`` asks for."""

    calibration: Path  # folder of HR images (recursive); each becomes a 64x64 LR input
    limit: int = 300  # calibration images used (the first ones, sorted by path)
    engine: str = "cpu"  # the engine the file is quantised for: cpu (ONNX Runtime's quantiser) | openvino (NNCF)


@dataclass
class ExportResult:
    out_dir: Path
    models: dict[str, dict[str, Any]]  # file name -> description (format, precision, ...)
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall seconds
    parity: list[parity.ParityRow] = field(default_factory=list)
    parity_inputs: list[str] = field(default_factory=list)  # "name NxCxHxW" per batch
    removed: list[str] = field(default_factory=list)  # earlier exports' artifacts deleted, not rewritten
    int8_failures: list[str] = field(default_factory=list)  # int8 vs fp32 quality bound, checked on every int8 export

    @property
    def failures(self) -> list[str]:
        return [f for row in self.parity for f in row.failures] + self.int8_failures


def export_artifacts(
    generator,
    out_dir: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    source: Path | None = None,
    fp16: bool = False,
    int8: Int8Request | None = None,
    tensorrt: bool = False,
    opset: int | None = None,
    check: bool = False,
    profile: TileProfile = TileProfile(),
    images_dir: Path | None = None,
) -> ExportResult:
    """Write the requested artifacts and manifest.json into ``out_dir``.

    Raises InputsRefused naming the folder or file, before writing anything, when ``int8``
    names a calibration folder without readable images or ``images_dir`` holds a bad one; TensorRTUnavailable (after the ONNX files
    and their manifest are written) when ``tensorrt`` is asked for without TensorRT or a
    GPU. Parity and int8 quality failures do not raise: they are in ``result.failures``
    and the manifest.
    """
    from srdeploy.export.fp16 import convert_fp16
    from srdeploy.export.onnx_export import export_onnx

    calibration = None
    try:
        if int8 is not None:
            from srdeploy.export.calibration import load_calibration

            calibration = load_calibration(int8.calibration, int8.limit)
        # The parity inputs (synthetic patterns and the --images folder), decoded once for the
        # int8 quality check and --check; before anything is written, as the calibration images.
        batches = parity.parity_batches(images_dir=images_dir) if int8 is not None or check else []
    except ValueError as e:
        raise InputsRefused(str(e)) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(out_dir, models={})
    # Artifacts of an earlier export into the same folder would sit beside the new ones
    # unvouched for by the new manifest (an old engine still runs, with old weights). Its
    # manifest goes first: until the new one is written (after fp16, int8 and their
    # checks: minutes), a stopped export leaves a model.onnx with no manifest, which runs,
    # not one the old manifest calls damaged.
    (out_dir / contract.MANIFEST_NAME).unlink(missing_ok=True)
    for name in STALE_CANDIDATES:
        if (out_dir / name).is_file():
            (out_dir / name).unlink()
            result.removed.append(name)

    with _timed(result, "onnx fp32"):
        export_onnx(generator, out_dir / FP32_ONNX, opset=opset)
    result.models[FP32_ONNX] = _onnx_entry(out_dir / FP32_ONNX)
    _write_generator(generator, out_dir / GENERATOR_FILE)
    if fp16:
        with _timed(result, "onnx fp16"):
            convert_fp16(out_dir / FP32_ONNX, out_dir / FP16_ONNX)
        result.models[FP16_ONNX] = {**_onnx_entry(out_dir / FP16_ONNX), "built_from": FP32_ONNX, "tool": "onnxconverter-common float16 (keep_io_types)"}
    if int8 is not None:
        _write_int8(result, int8, calibration, batches)
    _write(result, generator, meta, source)

    if tensorrt:
        from srdeploy.export.tensorrt_engine import build_engine
        from srdeploy.runtime.tensorrt import require_tensorrt

        trt = require_tensorrt()  # fails fast, the ONNX outputs are already on disk
        for precision, onnx_name in (("fp32", FP32_ONNX), ("fp16", FP16_ONNX)):
            if onnx_name not in result.models:
                continue
            name = engine_name(precision)
            with _timed(result, f"tensorrt {precision}"):
                build_engine(out_dir / onnx_name, out_dir / name, profile, timing_cache=out_dir / TIMING_CACHE)
            result.models[name] = {"format": "tensorrt", "precision": precision, "built_from": onnx_name, "tensorrt": trt.__version__, "gpu": _gpu_name(), "profile": profile.as_dict()}
        _write(result, generator, meta, source)

    if check:
        result.parity_inputs = [f"{name} {'x'.join(map(str, b.shape))}" for name, b in batches]
        with _timed(result, "parity"):
            result.parity = check_parity(generator, out_dir, result.models, batches)
        _write(result, generator, meta, source)
    result.removed = [name for name in result.removed if name not in result.models]
    return result


def _write_int8(result: ExportResult, request: Int8Request, calibration, batches: list[tuple[str, parity.Batch]]) -> None:
    """Quantise model.onnx into model.int8.onnx and measure it against model.onnx."""
    from srdeploy.export.int8 import quality_vs_fp32, quantize_int8, quantize_int8_for_openvino

    out_dir = result.out_dir
    with _timed(result, "onnx int8"):
        if request.engine == "openvino":
            quantization = quantize_int8_for_openvino(out_dir / FP32_ONNX, out_dir / INT8_ONNX, calibration)
        else:
            quantization = quantize_int8(out_dir / FP32_ONNX, out_dir / INT8_ONNX, calibration)
    with _timed(result, "int8 quality"):
        quality = quality_vs_fp32(out_dir / FP32_ONNX, out_dir / INT8_ONNX, calibration, batches)
    result.models[INT8_ONNX] = {
        **_onnx_entry(out_dir / INT8_ONNX),
        "built_from": FP32_ONNX,
        "quantization": quantization,
        "calibration": {**calibration.describe(), "limit": request.limit, "method": quantization["calibration_method"]},
        "parity": quality,
    }
    result.int8_failures = list(quality["failures"])


def load_export_generator(path: Path, weights: str = "auto"):
    """(Generator in eval mode, checkpoint metadata) for export; see
    ``srdeploy.training.checkpoint.generator_state`` for ``weights``."""
    from srdeploy.training.checkpoint import load_generator

    return load_generator(path, weights=weights)


def check_parity(generator, out_dir: Path, models: dict[str, dict[str, Any]], batches: list[tuple[str, parity.Batch]]) -> list[parity.ParityRow]:
    """Rows for torch fp32 (reference), ORT fp32 vs torch, then every other engine and
    artifact vs ORT fp32, each on the session `srdeploy upscale` runs: OpenVINO fp32 (and
    bf16 where the CPU has bf16 units) on model.onnx, fp16 on ONNX Runtime, int8 on ONNX
    Runtime and OpenVINO, TensorRT engines."""
    from srdeploy.runtime import openvino_engine

    reference = parity.run_backend(parity.torch_backend(generator), batches)
    rows = [parity.reference_row("torch fp32", reference)]
    ort32 = parity.run_backend(parity.runtime_backend(out_dir / FP32_ONNX, "cpu"), batches)
    rows.append(parity.compare(f"{REFERENCE} ({FP32_ONNX})", ort32, "torch fp32", reference, parity.FP32_LIMITS))
    openvino = openvino_engine.available()
    engines = [("openvino", "fp32")] if openvino else []
    if openvino_engine.native_bf16():
        engines.append(("openvino", "bf16"))
    for provider, precision in engines:
        backend = parity.runtime_backend(out_dir / FP32_ONNX, provider, precision)
        rows.append(parity.compare(f"{provider} {precision} ({FP32_ONNX})", parity.run_backend(backend, batches), REFERENCE, ort32, parity.LIMITS[precision]))
    for name, entry in models.items():
        if name == FP32_ONNX:
            continue
        limits = parity.LIMITS[entry["precision"]]
        if entry["format"] == "onnx":
            providers = ["cpu", "openvino"] if entry["precision"] == "int8" and openvino else ["cpu"]
            for provider in providers:
                label = f"{'onnxruntime' if provider == 'cpu' else provider} {entry['precision']} ({name})"
                rows.append(parity.compare(label, parity.run_backend(parity.runtime_backend(out_dir / name, provider), batches), REFERENCE, ort32, limits))
            continue
        from srdeploy.runtime.tensorrt import EngineRunner

        label, backend = f"tensorrt {entry['precision']} ({name})", EngineRunner(out_dir / name)
        rows.append(parity.compare(label, parity.run_backend(backend, batches), REFERENCE, ort32, limits))
    return rows


def build_manifest_info(generator, meta: dict[str, Any] | None, source: Path | None, result: ExportResult) -> dict[str, Any]:
    """Everything manifest.json says besides the file hashes (write_manifest adds those)."""
    meta = meta or {}
    io = {"dtype": "float32", "layout": "NCHW", "channels": "RGB"}
    fp32 = result.models[FP32_ONNX]
    info: dict[str, Any] = {
        "kind": "srdeploy-export",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scale": int(generator.scale),
        "arch": generator.arch(),
        "receptive_radius_lr": int(generator.receptive_radius),
        "input": {"name": contract.INPUT_NAME, "shape": fp32["input_shape"], "range": list(contract.INPUT_RANGE), **io},
        "output": {"name": contract.OUTPUT_NAME, "shape": fp32["output_shape"], "range": list(contract.OUTPUT_RANGE), **io},
        "opset": fp32["opset"],
        "ir_version": fp32["ir_version"],
        "models": result.models,
        "source": _source_entry(source, meta),
        "training_config": _jsonable(meta.get("config")),
        "training_metrics": _jsonable(meta.get("metrics")),
        "exporter": "torch.onnx.export(dynamo=True)",  # of model.onnx; each file made from it names its own tool
        "versions": _versions(),
        "export_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }
    if result.parity:
        info["parity"] = {
            "inputs": result.parity_inputs,
            "patterns": "gradient, noise, edges, checkerboard; black+white: all-0 and all-1 frames; images: centre squares of a folder at 64x64",
            "limits": {
                "fp32_max_abs": parity.FP32_LIMITS.max_abs,
                "fp16_min_psnr_db": parity.FP16_LIMITS.min_psnr,
                "int8": f"no NaN/Inf or flat outputs here; PSNR-Y >= {parity.INT8_MIN_PSNR_Y:g} dB vs fp32 on natural images (models.{INT8_ONNX}.parity)",
            },
            "rows": [r.as_dict() for r in result.parity],
        }
    return info


def _write_generator(generator, path: Path) -> None:
    """The exported weights as a bare state_dict: what `srdeploy bench` runs its PyTorch
    row on and `srdeploy train --init` starts from (a few MB; the .mar leaves it out)."""
    import torch

    with atomic_writer(path) as f:
        torch.save(generator.state_dict(), f)


def _write(result: ExportResult, generator, meta, source) -> None:
    names = [*result.models, GENERATOR_FILE] + ([TIMING_CACHE] if (result.out_dir / TIMING_CACHE).is_file() and any(m["format"] == "tensorrt" for m in result.models.values()) else [])
    write_manifest(result.out_dir, build_manifest_info(generator, meta, source, result), files=names)


def _onnx_entry(path: Path) -> dict[str, Any]:
    info = contract.validate_onnx_model(path)
    keep = ("precision", "opset", "ir_version", "input_shape", "output_shape")
    return {"format": "onnx", **{k: info[k] for k in keep}, "io_dtype": "float32"}


def _source_entry(source: Path | None, meta: dict[str, Any]) -> dict[str, Any] | None:
    if source is None:
        return None
    entry: dict[str, Any] = {"file": source.name, "sha256": sha256_file(source)}
    entry.update({k: meta[k] for k in ("weights", "step", "epoch") if k in meta})
    return entry


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"srdeploy": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnxconverter-common"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    # NVIDIA ships tensorrt under several distribution names (tensorrt, tensorrt-cu12...);
    # the module knows its own version.
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        versions["tensorrt"] = None
    return versions


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def _jsonable(value: Any) -> Any:
    """Checkpoint metadata as JSON: tuples -> lists, inf/nan -> strings, other objects -> str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # 0-d tensors
        return _jsonable(value.item())
    return str(value)


class _timed:
    def __init__(self, result: ExportResult, step: str):
        self.result, self.step = result, step

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.result.seconds[self.step] = time.perf_counter() - self.start
