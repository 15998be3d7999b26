"""What the batch's file work costs per face, each step alone in a loop, and how fast each
deflate library on offer compresses one face's filtered rows (not a test; docs/results.md,
"Batch throughput at 100 faces/s").

    python benchmarks/file_work.py [--calls 300] [--gap-ms 0]

``--gap-ms G`` sleeps G ms between calls (outside the timing), as the batch's worker
threads wait between inputs while the model runs: the same steps then cost more CPU, since
each call starts with cold caches.

The face: the first CelebA-HQ val image, downscaled to 64x64 as `srdeploy bench` makes its
inputs, saved as PNG (Pillow's default level), and its 256x256 output of the shipped model.
zlib-ng (``pip install zlib-ng``) and libdeflate (``pip install deflate``) are measured when
installed; srdeploy uses neither.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pipeline_steps import DATA  # benchmarks/ is on sys.path when run as a script


def timed(label: str, calls: int, step, gap: float = 0.0) -> None:
    """Mean wall and thread CPU of ``calls`` calls, each after ``gap`` seconds asleep."""
    step()
    wall = cpu = 0.0
    for _ in range(calls):
        if gap:
            time.sleep(gap)
        wall_at, cpu_at = time.perf_counter(), time.thread_time()
        step()
        wall, cpu = wall + time.perf_counter() - wall_at, cpu + time.thread_time() - cpu_at
    print(f"  {label:44s} {1e3 * wall / calls:6.3f} ms wall  {1e3 * cpu / calls:6.3f} ms CPU", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="sleep between calls (default: none)")
    args = parser.parse_args()
    gap = args.gap_ms / 1000

    from isal import isal_zlib

    from srdeploy.batch.journal import Journal
    from srdeploy.io.files import stage_bytes
    from srdeploy.io.png import FILTER_UP
    from srdeploy.quality.degrade import downscale
    from srdeploy.runtime.cpus import cpu_info
    from srdeploy.runtime.upscaler import Upscaler

    print(cpu_info().describe())
    face = Image.open(min(DATA.glob("*"))).convert("RGB")
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(downscale(face, 4))).save(buffer, "PNG")
    data = buffer.getvalue()
    up = Upscaler("default")
    decoded = up.decode(data, "face.png")
    picture = up.upscale_picture(decoded.picture)
    encoded = up.encode(picture, "PNG")
    print(f"one face: {len(data):,} bytes in, {len(encoded.data):,} bytes out (PNG level 1); {args.calls} calls each, {args.gap_ms:g} ms asleep between calls")

    print("steps:")
    timed("Upscaler.decode (header checks + decode)", args.calls, lambda: up.decode(data, "face.png"), gap)
    timed("  Pillow alone: open, load, RGB array", args.calls, lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), gap)
    timed("Upscaler.encode (PNG level 1)", args.calls, lambda: up.encode(picture, "PNG"), gap)
    timed("sha256 of the output", args.calls, lambda: hashlib.sha256(encoded.data).hexdigest(), gap)
    with tempfile.TemporaryDirectory(prefix="file-work-", dir=Path.cwd()) as folder:  # on the disk outputs go to
        target = Path(folder) / "face.png"
        timed("temp file, fsync, rename (stage_bytes)", args.calls, lambda: os.replace(stage_bytes(target, encoded.data), target), gap)
        journal = Journal(Path(folder) / "journal.jsonl")
        record = {"input": "faces/face.png", "status": "writing", "output": "face.png", "output_sha256": "0" * 64, "input_sha256": "1" * 64}
        with journal.lock():
            timed("durable journal record", args.calls, lambda: journal.append(record, durable=True), gap)

    rows = np.ascontiguousarray(picture.color).reshape(picture.color.shape[0], -1)
    filtered = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    block = filtered.tobytes()
    codecs = {f"ISA-L level {level}": (lambda level=level: isal_zlib.compress(block, level)) for level in (1, 2, 3)}
    codecs.update({"zlib level 1": lambda: zlib.compress(block, 1)})

    def zlib_with(strategy: int) -> bytes:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, strategy)
        return compressor.compress(block) + compressor.flush()

    for name, strategy in (("Z_HUFFMAN_ONLY", zlib.Z_HUFFMAN_ONLY), ("Z_RLE", zlib.Z_RLE)):
        codecs[f"zlib level 1, {name}"] = lambda strategy=strategy: zlib_with(strategy)
    try:
        from zlib_ng import zlib_ng

        codecs.update({f"zlib-ng level {level}": (lambda level=level: zlib_ng.compress(block, level)) for level in (1, 2)})
    except ImportError:
        print("(zlib-ng not installed)")
    try:
        import deflate

        codecs["libdeflate level 1"] = lambda: deflate.zlib_compress(block, 1)
    except ImportError:
        print("(deflate, libdeflate's binding, not installed)")
    print(f"deflate of the face's Up-filtered rows ({len(block):,} bytes):")
    for name, compress in codecs.items():
        timed(f"{name} -> {len(compress()):,} bytes", args.calls, compress, gap)


if __name__ == "__main__":
    main()
