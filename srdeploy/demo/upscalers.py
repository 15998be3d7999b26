"""One Upscaler per (model, provider, precision), made on first use and kept.

Switching the page back to a setting it used before costs nothing. Each new Upscaler
runs one 64x64 picture before it is handed out: OpenVINO compiles the model for each
window shape on first sight, and 64x64 is the face size the shipped models were trained
on, so the first such request pays only for its own upscale.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from srdeploy.io.imaging import Picture
from srdeploy.runtime.upscaler import Upscaler

WARM_UP_SIDE = 64  # LR pixels: the shipped models' training input


@dataclass(frozen=True)
class Loaded:
    """An Upscaler and what getting it cost this request."""

    upscaler: Upscaler
    seconds: float  # time to open and warm up; 0.0 when it came from the cache


class Upscalers:
    """The cache. ``get`` raises what Upscaler raises (ModelError, ProviderError,
    ValueError) for a setting that cannot run; nothing is cached then."""

    def __init__(self, tile: int):
        self.tile = tile
        self._made: dict[tuple[str, str, str], Upscaler] = {}
        self._lock = threading.Lock()  # one load at a time: two would share the CPU and both be slow

    def get(self, model: str, provider: str, precision: str) -> Loaded:
        key = (model, provider, precision)
        with self._lock:
            if key in self._made:
                return Loaded(self._made[key], 0.0)
            start = time.perf_counter()
            upscaler = Upscaler(model, provider=provider, tile=self.tile, precision=precision)
            upscaler.upscale_picture(Picture(np.zeros((WARM_UP_SIDE, WARM_UP_SIDE, 3), np.uint8)))
            self._made[key] = upscaler
            return Loaded(upscaler, time.perf_counter() - start)

    def __len__(self) -> int:
        return len(self._made)
