"""Figures a person looks at: the evaluation comparison, the per-epoch sample grid and
the loss curves.

matplotlib is imported inside each function and drawn on an explicit Agg canvas (no
pyplot, no global backend switch), so importing this module costs nothing and works on
machines without a display. Every PNG is written atomically (temp file + os.replace).
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

PANEL_INCHES = 2.4  # width of one image panel; height follows the image aspect


def _as_display(img: np.ndarray) -> np.ndarray:
    """uint8 or float [0, 1] image, (H, W), (H, W, 1) or (H, W, 3) -> uint8 (H, W, 3)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W[, 3]) image, got shape {img.shape}")
    return img


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG and write it atomically (readers never see half a file)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from srdeploy.io.files import atomic_write_bytes

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def save_image_grid(
    rows: Sequence[Sequence[tuple[np.ndarray, str]]], path: str | os.PathLike, suptitle: str | None = None
) -> Path:
    """A grid of captioned image panels, one figure row per entry of ``rows``.

    Each panel is ``(image, caption)``; images in a row may differ in size (an LR panel
    should be enlarged by the caller, e.g. nearest-neighbour, so the rows line up).
    """
    from matplotlib.figure import Figure

    if not rows or not all(rows):
        raise ValueError("save_image_grid needs at least one row with at least one panel")
    ncols = max(len(r) for r in rows)
    aspect = max(np.shape(img)[0] / np.shape(img)[1] for r in rows for img, _ in r)  # tallest panel
    # 0.6 in per row for two-line captions; constrained layout keeps them off the images.
    fig = Figure(figsize=(PANEL_INCHES * ncols, (PANEL_INCHES * aspect + 0.6) * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(row):
                img, caption = row[c]
                ax.imshow(_as_display(img), interpolation="nearest")
                ax.set_title(caption, fontsize=9)
    if suptitle:  # wrapped to the figure width (10-pt DejaVu Sans: about 11 characters an inch), else clipped
        fig.suptitle(textwrap.fill(suptitle, width=int(11 * PANEL_INCHES * ncols)), fontsize=10)
    return _save_figure(fig, path)


def save_sample_grid(rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike, title: str | None = None) -> Path:
    """The training loop's per-epoch samples: each row is ``(bicubic, sr, hr)``, images as
    uint8 or float [0, 1] HWC arrays of the same size."""
    labelled = []
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise ValueError(f"sample row {i} has {len(row)} images; expected (bicubic, sr, hr)")
        labelled.append(list(zip(row, ("bicubic", "SR", "HR"))))
    return save_image_grid(labelled, path, suptitle=title)


# Fields of a metrics.jsonl record that are coordinates or bookkeeping, not curves.
_NON_CURVE_FIELDS = {
    "step", "epoch", "split", "lr", "samples_per_s", "data_wait", "minutes", "images", "time", "elapsed_s",
}


def _curves(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (steps, values). A record's ``split`` (e.g. "train"/"val") prefixes its
    field names, so a train and a validation loss of the same name become two curves."""
    curves: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for i, rec in enumerate(records):
        x = rec.get("step", rec.get("epoch", i))
        prefix = f"{rec['split']}/" if isinstance(rec.get("split"), str) else ""
        for key, value in rec.items():
            if key in _NON_CURVE_FIELDS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):  # a diverged step: leave a gap, keep the axis readable
                continue
            xs, ys = curves[prefix + key]
            xs.append(float(x))
            ys.append(float(value))
    return dict(curves)


LOSS_PANEL, PSNR_PANEL, SCORE_PANEL = "loss", "PSNR (dB)", "SSIM, D(x) and HF ratio"


def _panel_of(name: str) -> str:
    """Curves share a panel when they share a scale: dB, scores around [0, 1], or losses."""
    field = name.rsplit("/", 1)[-1]
    if "psnr" in field:
        return PSNR_PANEL
    if "ssim" in field or field in ("d_real", "d_fake", "hf_ratio"):
        return SCORE_PANEL
    return LOSS_PANEL


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics.jsonl file; a torn last line (a run killed mid-write) is
    ignored, any other malformed line is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        records.append(rec)
    return records


def save_loss_curves(metrics_jsonl_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Training and validation curves against the step, from a metrics.jsonl of one JSON
    object per line (the training loop's ``{"split": "train"|"val", "step": ..., ...}``).

    Every numeric field is a curve except the bookkeeping in ``_NON_CURVE_FIELDS``; curves
    go to one of three panels by scale (``_panel_of``): losses (log scale across decades),
    PSNR in dB, and scores around [0, 1]. The x axis is ``step``, else ``epoch``, else the line.
    """
    from matplotlib.figure import Figure

    curves = _curves(read_metrics_jsonl(metrics_jsonl_path))
    if not curves:
        raise ValueError(f"{metrics_jsonl_path}: no numeric metrics to plot")
    panels: dict[str, dict] = {}
    for title in (LOSS_PANEL, PSNR_PANEL, SCORE_PANEL):
        group = {k: v for k, v in curves.items() if _panel_of(k) == title}
        if group:
            panels[title] = group
    fig = Figure(figsize=(5.5 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, group) in zip(axes, panels.items()):
        for name, (xs, ys) in sorted(group.items()):
            # Markers while points are few: one validation pass would be an invisible line.
            ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, markersize=3)
        values = [y for _, ys in group.values() for y in ys]
        if title == LOSS_PANEL and min(values) > 0 and max(values) > 10 * min(values):  # log only across decades
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save_figure(fig, png_path)
