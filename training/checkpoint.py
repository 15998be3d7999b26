"""Checkpoints: atomic writes, safe loads, and generator reconstruction.

A training checkpoint is a dict of plain tensors and builtins (loadable with
``weights_only=True``)::

    {"generator": state_dict, "arch": {"num_blocks", "channels", "scale"},
     "generator_ema": state_dict | None, "discriminator": state_dict | None,
     "g_optimizer": ..., "d_optimizer": ..., "scaler": ...,
     "step": int, "epoch": int, "epoch_step": int, "best": float, "minutes": float,
     "rng": {...}, "config": {...}}

(written by srdeploy.training.state.Models.state; a slim copy keeps what export needs).

A bare generator state_dict is accepted wherever a generator is needed; its architecture
is read off the tensor shapes.
"""

from __future__ import annotations

import math

import os
import re
from pathlib import Path
from typing import Any

import torch

from srdeploy.io.files import atomic_writer
from srdeploy.io.image_guard import sniff
from srdeploy.training.models import Generator


TORCH_ZIP = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE = b"\x80"  # the legacy format: a pickle (protocol 2 or later)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temp file in the same folder and os.replace,
    so a crash mid-write never leaves a truncated checkpoint behind."""
    with atomic_writer(path) as f:
        torch.save(state, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` (no pickle code execution); no unsafe fallback."""
    path = Path(path)
    if path.is_dir():  # a run folder given for its checkpoint
        raise FileNotFoundError(f"{path} is a folder; give a checkpoint file in it, such as {path / 'last.pt'}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head.startswith((TORCH_ZIP, PICKLE)):  # torch.load would say "KeyError: 105" of a text file
        kind = sniff(head)
        what = "the file holds text" if kind == "text" else f"a {kind} file" if kind else "neither a torch zip archive nor a pickle"
        raise ValueError(f"{path}: not a PyTorch checkpoint ({what})")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {_load_failure(e)}); "
                         "srdeploy loads tensors and plain data only, never code") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint or state_dict, got {type(obj).__name__}")
    return obj


def _load_failure(error: Exception) -> str:
    """torch's reason in one line. Its weights-only refusal is paragraphs long and advises
    weights_only=False, which would run the file's code: only the unpickler's own reason
    (what it met in the file) is kept."""
    if isinstance(error, EOFError) and not str(error):
        return "the file ends early (truncated)"
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    advice = ("Weights only load failed", "weights_only", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not any(a in line for a in advice)]
    return lines[0].split(". ")[0].rstrip(".") if lines else "the file holds more than tensors and plain data"  # its first sentence


def infer_arch(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Read num_blocks, channels and scale off a generator state_dict.

    Only what the file holds counts: blocks and upsamplers must be numbered 0..N-1, so the
    architecture read here is never larger than the weights stored for it."""
    odd = next((k for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if odd is not None:
        raise ValueError(f"not a generator state_dict: {odd!r} is not a named tensor")
    if "head.0.weight" not in state_dict:
        raise ValueError("not a generator state_dict: missing key 'head.0.weight'")
    channels = state_dict["head.0.weight"].shape[0]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    ups = {int(m.group(1)) for k in state_dict if (m := re.match(r"upsample\.(\d+)\.", k))}
    if not blocks or not ups:
        raise ValueError("not a generator state_dict: no residual blocks or upsamplers found")
    for label, found in (("blocks", blocks), ("upsample", ups)):
        if found != set(range(len(found))):
            gap = min(set(range(max(found) + 1)) - found)
            raise ValueError(f"not a generator state_dict: {label}.{gap} is missing among {label}.0-{max(found)}")
    return {"num_blocks": len(blocks), "channels": int(channels), "scale": 2 ** len(ups)}


def generator_state(obj: dict[str, Any], weights: str = "auto") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a loaded checkpoint into (generator state_dict, metadata).

    ``weights``: "ema" takes ``generator_ema`` (what a run with --ema validates and selects
    on, so the model to ship), "raw" the trained ``generator``, "auto" the EMA weights when
    present. ``meta["weights"]`` records which were taken.
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be auto, ema or raw, got {weights!r}")
    if not ("generator" in obj and isinstance(obj["generator"], dict)):  # a bare state_dict
        if weights == "ema":
            raise ValueError("has no generator_ema weights (a bare state_dict); use weights 'raw'")
        return obj, {"weights": "state_dict"}
    meta = {k: v for k, v in obj.items() if k in ("arch", "config", "step", "epoch")}
    if isinstance(obj.get("best"), (int, float)) and math.isfinite(obj["best"]):  # a run that validated
        meta["metrics"] = {"best_val_psnr_y": float(obj["best"])}
    ema = obj.get("generator_ema")
    if weights == "ema" and not isinstance(ema, dict):
        raise ValueError("has no generator_ema weights (trained without --ema); use weights 'raw'")
    if isinstance(ema, dict) and weights != "raw":
        meta["weights"] = "generator_ema"
        return ema, meta
    meta["weights"] = "generator"
    return obj["generator"], meta


def build_generator(state_dict: dict[str, torch.Tensor], arch: dict[str, int] | None = None) -> Generator:
    """Instantiate a Generator and load ``state_dict`` strictly, with an error that names
    the missing, unexpected and mis-shaped keys.

    The architecture comes from the weights; a checkpoint's stated ``arch`` must agree
    with them. Nothing is allocated before the shapes match (they are compared on the
    meta device), so a file that claims a huge model costs nothing to refuse."""
    found = infer_arch(state_dict)
    if arch is not None and (not isinstance(arch, dict) or {k: arch.get(k) for k in found} != found):
        raise ValueError(f"its arch {arch!r} does not match its weights, which are {found}")
    with torch.device("meta"):
        shapes = Generator(**found)
    mismatch = state_dict_mismatch(shapes, state_dict)
    if mismatch:
        raise ValueError(f"not a generator with {found}: {mismatch}")
    g = Generator(**found)
    g.load_state_dict(state_dict)
    return g.eval()


def state_dict_mismatch(model: torch.nn.Module, state_dict: dict[str, Any]) -> str | None:
    """How ``state_dict`` differs from ``model``'s, in one line (at most five keys of each
    kind), or None when it fits."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [
        f"{k}: {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts) or None


def load_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                   weights: str = "auto") -> tuple[Generator, dict[str, Any]]:
    """A training checkpoint or bare state_dict -> (Generator in eval mode, metadata).
    Errors name the file and what differs (keys, shapes, missing EMA weights)."""
    obj = load_checkpoint(path, map_location)
    try:
        state_dict, meta = generator_state(obj, weights)
        g = build_generator(state_dict, meta.get("arch"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return g, meta


GENERATOR_KEYS = ("generator", "generator_ema", "arch", "step", "epoch", "best", "minutes", "config")


def slim_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy only what export, evaluation and ``--init`` read from a training checkpoint
    (both generator weights, architecture, step, config): no discriminator, optimiser or
    RNG state (most of an SRGAN checkpoint's size: docs/results.md, "Training memory and
    file sizes"). A slim checkpoint cannot be resumed."""
    obj = load_checkpoint(src)
    if not isinstance(obj.get("generator"), dict):
        raise ValueError(f"{src}: not a training checkpoint (no 'generator' entry)")
    return save_checkpoint({k: obj[k] for k in GENERATOR_KEYS if k in obj}, dst)
