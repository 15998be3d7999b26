"""Ship a trained generator as package data: srdeploy/models/<name>/.

    python tools/ship_model.py runs/srresnet/best.pt --name srresnet \
        --test-data ../shared/data/celeba_hq_256/test --test-list ../shared/data/celeba_hq_256/test.txt \
        --command "srdeploy train srresnet ..." --compute "2-core CPU, 125 min"

Writes model.onnx (the export contract, parity-checked against PyTorch), generator.pt (the
bare generator state_dict, so `srdeploy train srgan --init default` can fine-tune from it)
and manifest.json (sha256 of both, training data and command, steps, and the test-split
metrics measured here through the same Upscaler as `srdeploy upscale`; the regression test
tests/test_default_model.py holds the shipped model to them).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from srdeploy.runtime.zoo import SHIPPED

REPO = Path(__file__).resolve().parents[1]
LICENCE = ("Trained on CelebA-HQ, which is for non-commercial research use only; these weights "
           "inherit that restriction.")


def training_data(config: dict) -> str:
    """What the model was trained on, from its run's stored config (not assumed)."""
    subset = f", the images listed in {config['data_list']}" if config.get("data_list") else ""
    method = config.get("downsample", "bicubic")
    return f"{config.get('data', '?')}{subset}; LR = {method} x4 with antialias (srdeploy.quality.degrade)"


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
    args = ap.parse_args(argv)

    import torch

    from srdeploy.export.pipeline import export_artifacts
    from srdeploy.io.files import atomic_write_bytes
    from srdeploy.runtime.manifest import read_manifest, write_manifest
    from srdeploy.quality.metrics import PROTOCOL
    from srdeploy.runtime.upscaler import DEFAULT_TILE
    from srdeploy.training.checkpoint import load_generator
    from srdeploy.training.evaluate import evaluate, find_test_images, load_model

    out = REPO / "srdeploy" / "models" / args.name
    generator, meta = load_generator(args.checkpoint, weights=args.weights)
    result = export_artifacts(generator, out, meta=meta, source=args.checkpoint, check=True, images_dir=REPO / "examples")
    if result.failures:
        print("parity failed:", *result.failures, sep="\n  ", file=sys.stderr)
        return 1
    buf = io.BytesIO()
    torch.save(generator.state_dict(), buf)
    atomic_write_bytes(out / "generator.pt", buf.getvalue())

    images = find_test_images(args.test_data, args.test_list)
    table = evaluate(images, [load_model(str(out / "model.onnx"), name=args.name)]).table()
    bicubic, model = table[0], table[1]
    info = read_manifest(out)
    info.pop("files")
    info["shipped"] = {
        "name": args.name,
        "training_data": training_data(meta.get("config") or {}),
        "training_command": args.command,
        "compute": args.compute,
        "steps": meta.get("step"),
        "weights": meta.get("weights"),
        "test_split": f"{args.test_data} ({len(images)} images)",
        "test_metrics": {"bicubic": bicubic, args.name: model},
        "gain_psnr_y_db": model["psnr_y"] - bicubic["psnr_y"],
        "protocol": f"{PROTOCOL}; through srdeploy.runtime.upscaler.Upscaler (tile {DEFAULT_TILE}, CPU)",
        "licence": LICENCE,
        "notes": args.notes,
    }
    write_manifest(out, info, files=["model.onnx", "generator.pt"])
    print(json.dumps(info["shipped"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
