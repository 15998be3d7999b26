"""Tiled inference that gives the same output as running the whole image at once.

An output pixel of a convolutional generator depends only on LR pixels within its
receptive radius R. Each tile contributes only its *core* (at most ``tile`` LR pixels a
side) and is run inside a *window* that extends the core by ``overlap >= R`` pixels on
every side that is not the image border. Every core pixel then sees exactly the inputs
(and the same zero padding at true image borders) it would see untiled, so tiled equals
untiled up to float rounding: no seams, nothing to blend.

Windows are all ``tile + 2 * overlap`` a side wherever the image is that large (windows
near the border slide inwards instead of shrinking), so a GPU session sees a handful of
fixed shapes and its kernel choice is made once. Memory is bounded by the window, not the
image: one window in, one window's output out, written straight into the result.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from srdeploy.runtime.graph import analyze

# Used when a model's receptive field cannot be read off its graph; covers SRResNet
# generators up to B=12 (radius 4 + 2B + 3.5).
FALLBACK_OVERLAP = 32

# Window shapes a runner keeps ready (compiled, or with device buffers bound) at once: a
# batch of mixed image sizes meets one shape per image smaller than a window, plus the
# window itself, so a long batch or server must let the oldest go.
SHAPES_KEPT = 8

Runner = Callable[[np.ndarray], np.ndarray]  # float32 (1, 3, h, w) -> float32 (1, 3, s*h, s*w)


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in LR pixels: the window run through the model and the
    core (inside the window) whose output is kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def axis_spans(length: int, tile: int | None, overlap: int) -> list[Span]:
    """Split ``[0, length)`` into cores of at most ``tile`` pixels, balanced in size, each
    inside a window of ``tile + 2 * overlap`` pixels clamped into the image."""
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    window = None if not tile else tile + 2 * overlap
    if window is None or length <= window:
        return [Span(0, length, 0, length)]
    count = math.ceil(length / tile)
    bounds = [round(i * length / count) for i in range(count + 1)]
    spans = []
    for core_start, core_stop in zip(bounds[:-1], bounds[1:]):
        start = min(max(core_start - overlap, 0), length - window)
        spans.append(Span(start, start + window, core_start, core_stop))
    return spans


def axis_window_pixels(length: int, tile: int | None, overlap: int) -> int:
    """Pixels along one axis that the model runs on: the summed window lengths of
    :func:`axis_spans`, without listing them (a full window per core once tiled)."""
    window = None if not tile else tile + 2 * overlap
    return length if window is None or length <= window else math.ceil(length / tile) * window


def plan_tiles(height: int, width: int, tile: int | None, overlap: int) -> list[tuple[Span, Span]]:
    """(row span, column span) of every tile, row-major."""
    rows, cols = axis_spans(height, tile, overlap), axis_spans(width, tile, overlap)
    return [(r, c) for r in rows for c in cols]


def upscale_tiled(
    run: Runner,
    lr: np.ndarray,
    scale: int,
    tile: int | None,
    overlap: int,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Upscale ``lr`` float32 (H, W, 3) in [0, 1] window by window.

    ``finish`` maps each float32 (h, w, 3) output core to what is stored (e.g. quantised
    uint8, or one luma plane), so a large result is never held as float32. Returns
    (sH, sW, ...) with ``finish``'s dtype; float32 (sH, sW, 3) without it.
    """
    if lr.ndim != 3 or lr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {lr.shape}")
    height, width = lr.shape[:2]
    out: np.ndarray | None = None
    for rows, cols in plan_tiles(height, width, tile, overlap):
        window = lr[rows.start : rows.stop, cols.start : cols.stop]
        batch = np.ascontiguousarray(window.transpose(2, 0, 1)[None], dtype=np.float32)  # (1, 3, h, w)
        sr = run(batch)
        expected = (1, 3, batch.shape[2] * scale, batch.shape[3] * scale)
        if tuple(sr.shape) != expected:
            raise RuntimeError(f"model returned shape {tuple(sr.shape)} for an input of {batch.shape}; expected {expected} (x{scale})")
        top, left = (rows.core_start - rows.start) * scale, (cols.core_start - cols.start) * scale
        h, w = (rows.core_stop - rows.core_start) * scale, (cols.core_stop - cols.core_start) * scale
        core = sr[0, :, top : top + h, left : left + w].transpose(1, 2, 0)  # (h, w, 3) float32
        core = finish(core) if finish is not None else core
        if out is None:
            out = np.empty((height * scale, width * scale, *core.shape[2:]), dtype=core.dtype)
        out[rows.core_start * scale : rows.core_stop * scale, cols.core_start * scale : cols.core_stop * scale] = core
    assert out is not None  # plan_tiles returns at least one tile
    return out


def srresnet_receptive_radius(num_blocks: int, scale: int = 4) -> float:
    """LR pixels each side seen by one output pixel of the SRResNet generator: 9x9 head (4),
    two 3x3 convs per residual block (2B), 3x3 after the blocks (1), one 3x3 per x2
    upsampler at 1, 1/2, ... of its resolution, and the 9x9 tail at full resolution (4/s).
    23.5 for B=8, s=4."""
    ups = int(math.log2(scale))
    return 4 + 2 * num_blocks + 1 + sum(2.0**-i for i in range(ups)) + 4 / scale


def overlap_of(graph: Any) -> int:
    """Tile overlap for a model: its receptive radius read off the graph (an
    ``onnx.GraphProto``), rounded up; FALLBACK_OVERLAP when the graph cannot be read."""
    reach = analyze(graph)
    return FALLBACK_OVERLAP if reach is None else math.ceil(reach.receptive_radius)


def overlap_of_file(onnx_path: str | os.PathLike) -> int:
    """overlap_of for an ONNX file (its external data, refused elsewhere, is not read)."""
    import onnx

    return overlap_of(onnx.load(os.fspath(onnx_path), load_external_data=False).graph)


def tile_problem(tile: int, overlap: int, untiled: bool = True) -> str | None:
    """Why a ``tile`` is refused for a model of ``overlap``, or None. Any tile gives the same
    bytes, but one smaller than the overlap runs windows mostly made of halo. ``untiled``:
    whether the advice may offer 0 (a server always tiles)."""
    if not tile or tile >= overlap:
        return None
    window = tile + 2 * overlap
    return (f"tile {tile} is smaller than this model's {overlap} px overlap: each tile would run a {window} px window, "
            f"{(window / tile) ** 2:.0f}x its pixels; use {'0 (untiled) or ' if untiled else ''}a tile of at least {overlap}")
