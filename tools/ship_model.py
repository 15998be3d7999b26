"""Ship a trained generator as package data: srdeploy/models/<name>/.

    python tools/ship_model.py runs/srresnet/best.pt --name srresnet \
        --test-data ../shared/data/celeba_hq_256/test --test-list ../shared/data/celeba_hq_256/test.txt \
        --command "srdeploy train srresnet ..." --compute "2-core CPU, 125 min"

Writes model.onnx (the export contract, parity-checked against PyTorch), generator.pt (the
bare generator state_dict, so `srdeploy train srgan --init default` can fine-tune from it)
and manifest.json (sha256 of both, training data and command, steps, and the test-split
metrics measured here through the same Upscaler as `srdeploy upscale`; the regression test
tests/test_default_model.py holds the shipped model to them).

A candidate replaces the shipped model only when it is better at that model's job, measured
on the same test images in the same run (``--force`` ships it anyway): an SRResNet by a
higher PSNR-Y; an SRGAN, whose job is texture, by a higher HF ratio (fine detail, see
srdeploy.quality.metrics) while it keeps at least SRGAN_MIN_GAIN_DB over bicubic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from srdeploy.runtime.zoo import SHIPPED

REPO = Path(__file__).resolve().parents[1]
SRGAN_MIN_GAIN_DB = 1.0  # PSNR-Y over bicubic an SRGAN must keep: texture, not a worse picture
SHIPPED_FILES = ("model.onnx", "generator.pt", "manifest.json")  # the manifest last: it vouches for the other two
LICENCE = ("Trained on CelebA-HQ, which is for non-commercial research use only; these weights "
           "inherit that restriction.")


def training_data(config: dict) -> str:
    """What the model was trained on, from its run's stored config (not assumed)."""
    subset = f", the images listed in {config['data_list']}" if config.get("data_list") else ""
    method = config.get("downsample", "bicubic")
    return f"{config.get('data', '?')}{subset}; LR = {method} x4 with antialias (srdeploy.quality.degrade)"


def why_not_ship(name: str, bicubic: dict, candidate: dict, shipped: dict | None) -> str | None:
    """Why the candidate must not replace the shipped model (rows of one evaluation), or
    None when it is better at the model's job (module docstring)."""
    gain = candidate["psnr_y"] - bicubic["psnr_y"]
    if name == "srgan":
        if gain < SRGAN_MIN_GAIN_DB:
            return f"it gains {gain:+.2f} dB PSNR-Y over bicubic; an SRGAN must keep at least {SRGAN_MIN_GAIN_DB:+.1f} dB"
        if shipped is not None and candidate["hf_ratio"] <= shipped["hf_ratio"]:
            return f"its HF ratio {candidate['hf_ratio']:.3f} is not above the shipped model's {shipped['hf_ratio']:.3f}: no sharper"
        return None
    if shipped is not None and candidate["psnr_y"] <= shipped["psnr_y"]:
        return f"its PSNR-Y {candidate['psnr_y']:.3f} dB is not above the shipped model's {shipped['psnr_y']:.3f} dB"
    if gain <= 0:
        return f"it gains {gain:+.2f} dB PSNR-Y over bicubic"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", choices=SHIPPED, required=True)
    ap.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto")
    ap.add_argument("--test-data", type=Path, required=True)
    ap.add_argument("--test-list", type=Path)
    ap.add_argument("--command", required=True, help="The training command(s), for the manifest.")
    ap.add_argument("--compute", required=True, help="Hardware and wall time, for the manifest.")
    ap.add_argument("--notes", default="")
    ap.add_argument("--force", action="store_true", help="Ship it even when it does not beat the shipped model.")
    ap.add_argument("--into", type=Path, default=REPO / "srdeploy" / "models", help="The models folder (a test's own).")
    args = ap.parse_args(argv)

    out = args.into / args.name
    out.mkdir(parents=True, exist_ok=True)
    # Made beside the shipped files and moved over them only when it wins: a candidate that
    # loses, or a run that fails, leaves the shipped model as it was.
    staging = Path(tempfile.mkdtemp(prefix=f".{args.name}.candidate-", dir=out.parent))
    try:
        return _stage_and_ship(args, out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_and_ship(args: argparse.Namespace, out: Path, staging: Path) -> int:
    from srdeploy.export.pipeline import export_artifacts
    from srdeploy.quality.metrics import PROTOCOL
    from srdeploy.runtime.manifest import read_manifest, write_manifest
    from srdeploy.runtime.upscaler import DEFAULT_TILE
    from srdeploy.training.checkpoint import load_generator
    from srdeploy.evaluation.evaluate import evaluate, find_test_images, load_model

    generator, meta = load_generator(args.checkpoint, weights=args.weights)
    result = export_artifacts(generator, staging, meta=meta, source=args.checkpoint, check=True, images_dir=REPO / "examples")
    if result.failures:
        print("parity failed:", *result.failures, sep="\n  ", file=sys.stderr)
        return 1

    images = find_test_images(args.test_data, args.test_list)
    # ONNX Runtime fp32: the engine the README's quality table and the regression test name,
    # whatever `auto` would pick on this CPU.
    models = [load_model(str(staging / "model.onnx"), name="candidate", provider="cpu", precision="fp32")]
    if (out / "model.onnx").is_file():
        models.append(load_model(str(out / "model.onnx"), name="shipped", provider="cpu", precision="fp32"))
    evaluation = evaluate(images, models)
    if evaluation.left_out:  # the manifest's figures are for the whole split or none
        print("test images left out:", *evaluation.left_out, sep="\n  ", file=sys.stderr)
        return 1
    table = evaluation.table()
    bicubic, model, shipped = table[0], table[1], (table[2] if len(table) > 2 else None)
    for row in table:
        print(f"{row['model']:>9}: PSNR-Y {row['psnr_y']:.3f} dB, SSIM-Y {row['ssim_y']:.4f}, HF ratio {row['hf_ratio']:.3f}")
    reason = why_not_ship(args.name, bicubic, model, shipped)
    if reason and not args.force:
        print(f"not shipped: {reason} (--force ships it anyway)", file=sys.stderr)
        return 2
    info = read_manifest(staging)
    info.pop("files")
    info["shipped"] = {
        "name": args.name,
        "training_data": training_data(meta.get("config") or {}),
        "training_command": args.command,
        "compute": args.compute,
        "steps": meta.get("step"),
        "weights": meta.get("weights"),
        "test_split": f"{args.test_data} ({len(images)} images)",
        "test_metrics": {"bicubic": bicubic, args.name: {**model, "model": args.name}},
        "gain_psnr_y_db": model["psnr_y"] - bicubic["psnr_y"],
        "protocol": f"{PROTOCOL}; through srdeploy.runtime.upscaler.Upscaler (ONNX Runtime fp32 on the CPU, tile {DEFAULT_TILE})",
        "licence": LICENCE,
        "notes": args.notes,
    }
    write_manifest(staging, info, files=["model.onnx", "generator.pt"])
    for name in SHIPPED_FILES:
        os.replace(staging / name, out / name)
    print(json.dumps(info["shipped"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
