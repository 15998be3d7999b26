"""What ``srdeploy package`` writes besides the model: the archive's model-config.yaml and
the server's config.properties, and how their numbers are sized.

Sizing, in brief (the reasons are next to each function):

- pixel cap: the handler refuses inputs over ``max_pixels`` LR pixels before decoding
  (default 512x512: a 2048x2048 output). The request/response size limits follow from it.
- responseTimeout: one batch of ``batch_size`` of the costliest images under the cap, tiled, on a slow CPU,
  estimated from the model's own convolutions (FLOPs per LR pixel read off the graph).
- threads: one worker by default, whose engine (OpenVINO or ONNX Runtime) takes the cores available to
  it (affinity and cgroup quota, divided among the model's workers; see
  :func:`engine_threads`); TorchServe's Netty pools stay small.
- safety: every listener on 127.0.0.1, token authorisation on, the model register/delete
  API off, models loadable only from the store's own .mar files.
"""

from __future__ import annotations

import math
import os
import random
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srdeploy import SCALE
from srdeploy.runtime.cpus import available_cpus
from srdeploy.runtime.engines import PRECISIONS, PROVIDERS
from srdeploy.runtime.tiling import axis_window_pixels
from srdeploy.runtime.upscaler import DEFAULT_TILE

MODEL_CONFIG_NAME = "model-config.yaml"
# TensorRT's engine builds take minutes per shape: not something a worker does at start.
SERVED_PROVIDERS = tuple(p for p in PROVIDERS if p != "tensorrt")
CONFIG_PROPERTIES_NAME = "config.properties"
# A served request's default pixel cap: far below upscale's (a file on disk), because a
# server holds each request's bytes and output in memory and answers within a timeout.
SERVED_MAX_PIXELS = 512 * 512
# Throughput assumed for the timeout: well below one busy core, so that an image at the cap
# gets a few times the time a loaded CPU took before TorchServe kills the worker
# (docs/results.md, "TorchServe").
ASSUMED_CPU_FLOPS = 5e9
# FLOPs per LR pixel when the graph holds ops the estimate does not know: about the
# 16-block generator of the SRGAN paper (the 8-block one is 3.3e6).
FALLBACK_FLOP_PER_LR_PIXEL = 5e6
CODEC_SECONDS_PER_IMAGE = 5  # decode + PNG encode of a capped image, with room to spare
MIN_RESPONSE_TIMEOUT = 60
# Largest sample a response can carry per output pixel: 16-bit RGBA PNG, plus the PNG
# filter byte per row and deflate's stored-block overhead on incompressible data.
RESPONSE_BYTES_PER_PIXEL = 8 * 1.01
METADATA_ALLOWANCE = 8 << 20  # EXIF/ICC/XMP an upload may carry beside its pixels
RESPONSE_ALLOWANCE = 1 << 20  # the PNG's chunks and the ICC profile carried over
JAVA_INT_MAX = 2**31 - 1  # TorchServe reads max_request_size and max_response_size as Java ints


@dataclass(frozen=True)
class ServeConfig:
    """The knobs of a served model; validated on construction."""

    batch_size: int = 1
    """Requests TorchServe hands the handler at once (mixed sizes are fine). Each image is
    still its own tiled run, so a batch saves only per-request overhead (milliseconds
    against seconds of CPU work) while every answer in it waits for the whole batch: on a
    CPU, larger batches gave the same images/s at a higher latency (docs/results.md,
    "TorchServe"). Raise it where requests are cheap (GPU)."""
    max_batch_delay_ms: int = 50
    """How long TorchServe waits to fill a batch (batch_size > 1): small against a CPU
    upscale (seconds)."""
    workers: int = 1
    """Worker processes; they share the cores, so one worker with all of them is the
    default (ONNX Runtime already uses every core for one image)."""
    max_pixels: int = SERVED_MAX_PIXELS
    """Largest input in LR pixels (width x height), refused with 413 before decoding."""
    tile: int = DEFAULT_TILE
    """LR tile side, as ``srdeploy upscale --tile`` (same value, same bytes out)."""
    provider: str = "auto"
    """Engine of the worker, as `srdeploy upscale --provider`: auto (CUDA when it works,
    else the fastest CPU engine for the worker's CPU) | cpu | openvino | cuda."""
    precision: str = "auto"
    """As `srdeploy upscale --precision`: auto | fp32 | bf16 (an int8 model runs in int8)."""
    queue_size: int = 32
    """Requests TorchServe queues before answering 503: a bound on waiting time."""
    response_timeout_s: int | None = None
    """Seconds a worker may take for one batch before TorchServe restarts it; None sizes
    it from the model (see :func:`response_timeout`)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "workers", "max_pixels", "tile", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {self.max_batch_delay_ms}")
        if self.provider not in SERVED_PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(SERVED_PROVIDERS)}, got {self.provider!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.response_timeout_s is not None and self.response_timeout_s < 1:
            raise ValueError(f"response_timeout_s must be >= 1, got {self.response_timeout_s}")
        if max(max_request_bytes(self), max_response_bytes(self)) > JAVA_INT_MAX:
            largest = math.floor((JAVA_INT_MAX - RESPONSE_ALLOWANCE) / (SCALE * SCALE * RESPONSE_BYTES_PER_PIXEL))
            raise ValueError(f"max_pixels {self.max_pixels:,} makes the largest response ({max_response_bytes(self):,} bytes) too "
                             f"large for TorchServe, whose size limits are Java ints; the most it can serve is {largest:,} pixels")


@dataclass(frozen=True)
class Ports:
    """TorchServe's listeners, one block of consecutive loopback ports from ``base``."""

    base: int = 8080
    inference: int = field(init=False)
    management: int = field(init=False)
    metrics: int = field(init=False)
    grpc_inference: int = field(init=False)
    grpc_management: int = field(init=False)
    workers: int = field(init=False)  # first backend worker port (a Unix socket name on Linux)

    def __post_init__(self) -> None:
        if not 1 <= self.base <= 65535 - 16:
            raise ValueError(f"port must be from 1 to {65535 - 16}, got {self.base}")
        for offset, name in enumerate(("inference", "management", "metrics", "grpc_inference", "grpc_management", "workers")):
            object.__setattr__(self, name, self.base + offset)


# --- sizing ---------------------------------------------------------------------------


def free_port_block(count: int = 6) -> int:
    """A base port whose ``count`` successors are all free on 127.0.0.1 right now (for
    tests and benchmarks that start their own TorchServe)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports found on 127.0.0.1")


def engine_threads(workers: int, cores: int | None = None) -> int:
    """Engine threads (OpenVINO's or ONNX Runtime's) for one of ``workers`` worker processes: the cores
    available to it, shared, so that the workers together do not oversubscribe them."""
    cores = available_cpus() if cores is None else cores
    return max(1, cores // max(1, workers))


def response_timeout(config: ServeConfig, onnx_path: str | os.PathLike) -> int:
    """Seconds for one full batch of the costliest images under the pixel cap, tiled, at
    ASSUMED_CPU_FLOPS (see :func:`_tiled_pixels`)."""
    import onnx

    from srdeploy.runtime import graph, tiling

    model = onnx.load(str(onnx_path), load_external_data=False).graph
    reach = graph.analyze(model)
    flops = reach.conv_flop_per_lr_pixel if reach else FALLBACK_FLOP_PER_LR_PIXEL
    overlap = tiling.overlap_of(model)
    pixels = _tiled_pixels(config.max_pixels, config.tile, overlap)
    per_image = pixels * flops / ASSUMED_CPU_FLOPS + CODEC_SECONDS_PER_IMAGE
    return max(MIN_RESPONSE_TIMEOUT, math.ceil(config.batch_size * per_image))


def _tiled_pixels(max_pixels: int, tile: int, overlap: int) -> int:
    """LR pixels the model runs on, windows included, for the costliest shape of at most
    ``max_pixels``. Windows are full-sized, so a ragged shape costs more than a square of
    the same area (859x305 under 512x512 runs twice the square's window pixels)."""
    def cost(height: int) -> int:  # the widest image of that height costs the most
        return axis_window_pixels(height, tile, overlap) * axis_window_pixels(max_pixels // height, tile, overlap)

    return max(cost(height) for height in range(1, math.isqrt(max_pixels) + 1))


def max_request_bytes(config: ServeConfig) -> int:
    """An upload at the cap: 16-bit RGBA stored uncompressed, plus metadata."""
    return config.max_pixels * 8 + METADATA_ALLOWANCE


def max_response_bytes(config: ServeConfig) -> int:
    """The upscaled output of an input at the cap in the largest encoding the handler writes."""
    return math.ceil(config.max_pixels * SCALE * SCALE * RESPONSE_BYTES_PER_PIXEL) + RESPONSE_ALLOWANCE


# --- rendering --------------------------------------------------------------------------


def model_config_yaml(config: ServeConfig, timeout_s: int, name: str) -> str:
    """model-config.yaml inside the archive: TorchServe's worker/batch keys at the top
    level, the handler's own settings under ``handler``."""
    return f"""\
# srdeploy package: worker and batching settings for the {name} model (read by TorchServe)
minWorkers: {config.workers}
maxWorkers: {config.workers}
batchSize: {config.batch_size}
maxBatchDelay: {config.max_batch_delay_ms}  # ms TorchServe waits to fill a batch
responseTimeout: {timeout_s}  # s for one batch at the pixel cap on a slow CPU; then the worker restarts
# Read by srdeploy.handlers.torchserve_handler
handler:
  max_pixels: {config.max_pixels}  # LR pixels per input; larger ones get 413
  tile: {config.tile}  # LR tile side, as `srdeploy upscale --tile`
  provider: {config.provider}  # engine: {' | '.join(SERVED_PROVIDERS)}
  precision: {config.precision}  # {' | '.join(PRECISIONS)}
"""


def config_properties(store: Path, name: str, config: ServeConfig, timeout_s: int, ports: Ports = Ports()) -> str:
    """config.properties for ``torchserve --ts-config``: safe defaults (see module doc)."""
    store = Path(store).resolve()
    # allowed_urls holds regular expressions: only .mar files directly in this store.
    store_url = "file://" + re.escape(store.as_posix()) + r"/[^/]+\.mar"
    netty = min(2, available_cpus())
    rows: list[tuple[str, Any]] = [
        ("inference_address", f"http://127.0.0.1:{ports.inference}"),
        ("management_address", f"http://127.0.0.1:{ports.management}"),
        ("metrics_address", f"http://127.0.0.1:{ports.metrics}"),
        ("grpc_inference_address", "127.0.0.1"),
        ("grpc_inference_port", ports.grpc_inference),
        ("grpc_management_address", "127.0.0.1"),
        ("grpc_management_port", ports.grpc_management),
        ("initial_worker_port", ports.workers),
        ("disable_token_authorization", "false"),
        ("enable_model_api", "false"),
        ("enable_envvars_config", "false"),
        ("install_py_dep_per_model", "false"),
        ("model_store", store.as_posix()),
        ("load_models", f"{name}={name}.mar"),
        ("allowed_urls", store_url),
        ("max_request_size", max_request_bytes(config)),
        ("max_response_size", max_response_bytes(config)),
        ("default_workers_per_model", config.workers),
        ("default_response_timeout", timeout_s),
        ("job_queue_size", config.queue_size),
        ("number_of_netty_threads", netty),
        ("netty_client_threads", min(netty, config.workers)),
        ("metrics_mode", "prometheus"),
    ]
    lines = [
        "# Written by `srdeploy package`. Safe by default: every listener on 127.0.0.1, token",
        "# authorisation on (tokens in key_file.json, in the folder torchserve starts from),",
        "# no model register/delete API, models only from this store. Size limits follow the",
        f"# handler's pixel cap ({config.max_pixels:,} LR pixels); the engine threads of each",
        "# worker are set by the handler from the cores available to it.",
    ]
    lines += [f"{key}={_property_value(str(value))}" for key, value in rows]
    return "\n".join(lines) + "\n"


def _property_value(text: str) -> str:
    """Escape a value for Java's Properties.load: backslashes, and non-ASCII as \\uXXXX."""
    if any(c in text for c in "\r\n"):
        raise ValueError(f"a config.properties value cannot hold a line break: {text!r}")
    out = text.replace("\\", "\\\\")
    units = out.encode("utf-16-be")  # characters beyond U+FFFF become surrogate pairs
    codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
    return "".join(chr(c) if c < 0x80 else f"\\u{c:04x}" for c in codes)
