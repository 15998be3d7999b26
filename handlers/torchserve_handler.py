"""The TorchServe handler: image bytes in, the 4x image out, one status per request.

It runs the same :class:`srdeploy.runtime.upscaler.Upscaler` as ``srdeploy upscale`` (same
tiling, image checks and encoders), so a request gives the bytes the CLI writes for the
same input and settings: ``--format png`` for the default, ``--tile`` as configured.

TorchServe batches requests; every item gets its own answer. A bad item (not an image,
over the pixel cap, truncated, bad options) gets a 4xx status and a JSON message through
``context.set_response_status(code, phrase, idx)`` while the others succeed:

- 400: no image, bad options, or a supported format whose data is corrupt or truncated;
- 413: more pixels than the cap (refused from the header, nothing decoded);
- 415: not an image of a supported format (text, HEIC, ...);
- 500/507: an internal failure or out of memory for that item only.

The archive's entry file subclasses :class:`UpscaleHandler` (TorchServe wants the class
defined in the entry module), so the archive carries no code of its own and needs
srdeploy installed where TorchServe runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srdeploy.handlers.config import ServeConfig, engine_threads
from srdeploy.handlers.request import RequestError, parse_request
from srdeploy.io import imaging
from srdeploy.runtime.engines import CPU_PROVIDERS
from srdeploy.runtime.upscaler import Upscaler
from srdeploy.runtime.zoo import MODEL_FILE, ModelError, resolve_model

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff", "BMP": "image/bmp"}
PHRASES = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error", 507: "Insufficient Storage"}
ERROR_TYPES = {400: "BadRequest", 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 500: "InternalServerError", 507: "InsufficientStorage"}
NOTE_HEADER = "X-Upscale-Note"  # why the output format differs from the one asked for


@dataclass(frozen=True)
class HandlerSettings:
    """The ``handler:`` section of model-config.yaml, plus the worker count."""

    max_pixels: int = ServeConfig.max_pixels
    tile: int = ServeConfig.tile
    provider: str = ServeConfig.provider
    precision: str = ServeConfig.precision
    workers: int = ServeConfig.workers

    @classmethod
    def from_model_config(cls, config: dict[str, Any] | None) -> "HandlerSettings":
        config = config or {}
        section = config.get("handler") or {}
        try:
            return cls(
                max_pixels=int(section.get("max_pixels", cls.max_pixels)),
                tile=int(section.get("tile", cls.tile)),
                provider=str(section.get("provider", cls.provider)),
                precision=str(section.get("precision", cls.precision)),
                workers=int(config.get("maxWorkers", config.get("minWorkers", cls.workers))),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"model-config.yaml: bad handler setting ({e})") from None


class UpscaleHandler:
    """TorchServe custom handler (``initialize`` once per worker, ``handle`` per batch)."""

    def __init__(self) -> None:
        self.upscaler: Upscaler | None = None
        self.settings = HandlerSettings()

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        self.settings = HandlerSettings.from_model_config(getattr(context, "model_yaml_config", None))
        model = resolve_model(model_dir / MODEL_FILE)  # checks its sha256 against the manifest beside it
        if model.manifest is None:
            raise ModelError(f"{model_dir}: the archive has no manifest.json listing {MODEL_FILE}; rebuild it with `srdeploy package`")
        gpu_id = props.get("gpu_id")
        if gpu_id is not None and self.settings.provider != "cpu":
            pin_gpu(int(gpu_id))
        # As the CLI does: Pillow's own bomb guard (89 Mpx) must not undercut a larger cap.
        imaging.allow_pixels(self.settings.max_pixels)
        threads = engine_threads(self.settings.workers)
        self.upscaler = Upscaler(model, provider=self.settings.provider, tile=self.settings.tile, threads=threads, precision=self.settings.precision)
        d = self.upscaler.describe()
        if gpu_id is not None and d["provider"] in CPU_PROVIDERS:
            # A GPU server quietly upscaling on its CPU is the failure users do not see.
            logger.warning("srdeploy handler: TorchServe gave this worker GPU %s but the model runs on the CPU (%s); "
                           "install onnxruntime-gpu (pip install 'srdeploy[serve-gpu]') or package with --provider cuda to fail instead",
                           gpu_id, self.upscaler.engine_why or f"provider {self.settings.provider}")
        logger.info(
            "srdeploy handler ready: model %s (sha256 %s), x%d, provider %s %s%s, tile %d + %d overlap, %d threads, cap %d px",
            context.model_name, d["model_sha256"][:12], d["scale"], d["provider"], d["precision"],
            f" ({self.upscaler.engine_why})" if self.upscaler.engine_why else "", d["tile"], d["overlap"], d["threads"], self.settings.max_pixels,
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """One response per request, in order; statuses set per item on ``context``."""
        if self.upscaler is None:
            raise RuntimeError("UpscaleHandler.handle called before initialize")
        return [self._answer(idx, params, context) for idx, params in enumerate(data)]

    def _answer(self, idx: int, params: Any, context: Any) -> bytes:
        request_id = context.get_request_id(idx) or str(idx)
        name = f"request {request_id}"
        start = time.perf_counter()
        try:
            request = parse_request(params, _headers(context, idx), name)
            if request.field != "body":  # a form field: the client sent several, say which one was read as the image
                name = f"{name}, field '{request.field}'"
            try:
                encoded = self.upscaler.upscale_bytes(request.data, name, request.format, request.quality, self.settings.max_pixels)
            except imaging.ImageError as e:
                raise image_refusal(e, request.data, name, self.settings.max_pixels) from None
        except RequestError as e:
            logger.info("%s refused (%d): %s", name, e.status, e)
            return _error(context, idx, e.status, str(e))
        except Exception as e:  # one item's failure must not take the batch down
            if runs_out_of_memory(e):
                logger.error("%s: out of memory: %s", name, e or type(e).__name__)
                return _error(context, idx, 507, f"{name}: out of memory while upscaling; try a smaller image")
            logger.exception("%s failed", name)
            return _error(context, idx, 500, f"{name}: upscaling failed (an internal error; the server's log has the details)")
        context.set_response_content_type(idx, CONTENT_TYPES[encoded.format])
        if encoded.note:
            context.set_response_header(idx, NOTE_HEADER, encoded.note)
        logger.debug("%s: %dx%d %s in %.3f s", name, encoded.width, encoded.height, encoded.format, time.perf_counter() - start)
        return encoded.data


def image_refusal(error: imaging.ImageError, data: bytes, name: str, max_pixels: int) -> RequestError:
    """The answer to bytes the Upscaler refused: 413 when the header declares more pixels
    than the cap, 415 when they are not an image of a supported format, else 400."""
    if isinstance(error, imaging.TooManyPixels):
        # The shared message names the CLI's --max-pixels; an API client needs the server's cap.
        cap = f"this server's cap of {max_pixels:,} pixels; send a smaller image"
        if error.width:
            return RequestError(413, f"{name}: {error.width}x{error.height} ({error.pixels:,} pixels) exceeds {cap}")
        declared = f"{'more than ' if error.at_least else ''}{error.pixels:,} pixels"
        return RequestError(413, f"{name}: its header declares {declared}, which exceeds {cap}")
    if isinstance(error, imaging.OutputTooLarge):  # the shared remedy names the CLI's --format
        return RequestError(400, f"{error.reason}; ask for PNG (header X-Output-Format: png, or form field format=png)")
    if imaging.sniff(data[:64]) not in imaging.READ_FORMATS:
        return RequestError(415, str(error))
    return RequestError(400, str(error))


def pin_gpu(gpu_id: int) -> None:
    """Make TorchServe's GPU ``gpu_id`` (an index among the visible GPUs) the only one this
    worker sees, so that ONNX Runtime's device 0 is the one TorchServe assigned. Must run
    before CUDA starts in the process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
        if gpu_id >= len(devices):
            raise ValueError(f"TorchServe assigned GPU {gpu_id} but CUDA_VISIBLE_DEVICES={visible!r} lists {len(devices)}")
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[gpu_id]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_id)


def _headers(context: Any, idx: int) -> dict[str, str]:
    """The request's HTTP headers (TorchServe mixes per-field content types in; skip those)."""
    headers = context.get_all_request_header(idx) or {}
    return {k: v for k, v in headers.items() if isinstance(v, str)}


# How the engines say their allocator failed: ONNX Runtime ("CUDA failure 2: out of memory",
# "Failed to allocate memory for requested buffer"), OpenVINO (std::bad_alloc).
_OUT_OF_MEMORY = ("out of memory", "failed to allocate memory", "bad_alloc")


def runs_out_of_memory(error: Exception) -> bool:
    """Whether Python or an engine's own allocator (a GPU's memory) ran out: 507, not 500."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(words in text for words in _OUT_OF_MEMORY)


def _error(context: Any, idx: int, status: int, message: str) -> bytes:
    """TorchServe's own error shape ({code, type, message}), as JSON."""
    context.set_response_status(status, PHRASES[status], idx)
    context.set_response_content_type(idx, "application/json")
    body = {"code": status, "type": ERROR_TYPES[status], "message": message}
    return json.dumps(body).encode("utf-8")
