"""`srdeploy upscale --ray local` with 1 and 2 actors against the local CLI, on 64x64 faces,
and the driver's memory for a large listing (not a test).

    python benchmarks/ray_bench.py [--count 100] [--parts throughput,listing] [--files 100000]

Inputs: the CelebA-HQ test faces (../shared/data/celeba_hq_256/test) downscaled to 64x64
with srdeploy.quality.degrade.downscale (bicubic, antialiased), as PNGs in a temp folder.
Model: the shipped default, provider auto, default tile; each actor 1 CPU (1 engine thread).

- ``throughput``: each command in a fresh subprocess into a fresh OUT, one after the other:
  the local CLI, then ``--ray local --actors 1`` and ``--actors 2``. The CLI's summary line
  gives the batch's own rate (planning to the last commit; for --ray the header pass and the
  actors' start included, the cluster's start not); the process wall time is beside it. On one
  machine the figure is the overlap: how much of the cores the actors keep busy, against
  the local pipeline on the same cores.
- ``listing``: ``--files`` tiny PNGs (1x1) in one folder; in one process with ``--ray
  local``: collect, the header pass on the cluster, plan, and the dataset's rows, with the
  driver's peak RSS (ru_maxrss) and the time of each step.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "data" / "celeba_hq_256" / "test"
SRDEPLOY = Path(sys.executable).parent / "srdeploy"
RATE = re.compile(r"(\d+) ok, .* in ([\d.]+) s \(([\d.]+) images/s upscaled\)")


def make_faces(folder: Path, count: int) -> None:
    from PIL import Image

    from srdeploy.quality.degrade import downscale

    folder.mkdir(parents=True)
    for path in sorted(FACES.glob("*.jpg"))[:count]:
        downscale(Image.open(path).convert("RGB"), 4).save(folder / f"{path.stem}.png")


def run(label: str, args: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([str(SRDEPLOY), "upscale", *args], capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    match = RATE.search(done.stderr)
    if done.returncode != 0 or not match:
        raise SystemExit(f"{label} failed ({done.returncode}): {done.stderr[-2000:]}")
    row = {"label": label, "images": int(match[1]), "batch_s": float(match[2]), "rate": float(match[3]), "wall_s": wall, "load": os.getloadavg()[0]}
    print(f"{label:<24} {row['images']} images  batch {row['batch_s']:6.1f} s  {row['rate']:6.2f} img/s  process {wall:6.1f} s  load {row['load']:.2f}", flush=True)
    return row


def throughput(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        faces = Path(tmp) / "faces"
        make_faces(faces, count)
        local = run("local CLI", [str(faces), "-o", f"{tmp}/local"])
        one = run("--ray local --actors 1", [str(faces), "-o", f"{tmp}/ray1", "--ray", "local", "--actors", "1"])
        two = run("--ray local --actors 2", [str(faces), "-o", f"{tmp}/ray2", "--ray", "local", "--actors", "2"])
        print(f"2 actors / 1 actor: {two['rate'] / one['rate']:.2f}x;  2 actors / local CLI: {two['rate'] / local['rate']:.2f}x;  1 actor / local CLI: {one['rate'] / local['rate']:.2f}x")


def listing(files: int) -> None:
    from PIL import Image

    from srdeploy.batch.jobs import Settings
    from srdeploy.batch.journal import Journal
    from srdeploy.batch.ray_run import RayBatch, job_rows
    from srdeploy.batch.run import collect, plan
    from srdeploy.batch.steps import Folder

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with tempfile.TemporaryDirectory(prefix="ray-listing-") as tmp:
        folder, out = Path(tmp) / "tiny", Path(tmp) / "out"
        folder.mkdir()
        tiny = Path(tmp) / "one.png"
        Image.new("RGB", (1, 1)).save(tiny)
        data = tiny.read_bytes()
        for i in range(files):
            (folder / f"{i:07d}.png").write_bytes(data)
        print(f"{files} files of {len(data)} bytes; driver peak RSS before: {rss_mib():.0f} MiB", flush=True)
        with RayBatch("local", actors=1) as batch:
            engine = batch.start("default", "auto", "auto", 256)
            print(f"after ray.init and the engine check: {rss_mib():.0f} MiB", flush=True)
            steps = []
            t = time.perf_counter()
            listed, _, _ = collect([folder], False, out)
            steps.append(("collect", time.perf_counter() - t, rss_mib()))
            t = time.perf_counter()
            headers = batch._headers(listed, Settings().max_pixels)
            steps.append(("header pass (Ray tasks)", time.perf_counter() - t, rss_mib()))
            t = time.perf_counter()
            jobs, refused = plan(listed, Settings(), engine["scale"], Folder(out), headers)
            steps.append(("plan", time.perf_counter() - t, rss_mib()))
            t = time.perf_counter()
            rows = job_rows(jobs, Journal(out / "upscale-journal.jsonl"), Folder(out))
            steps.append(("dataset rows", time.perf_counter() - t, rss_mib()))
            assert len(rows) == files and not refused
        for name, seconds, rss in steps:
            print(f"  {name:<24} {seconds:7.1f} s   peak RSS {rss:6.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--parts", default="throughput,listing")
    args = parser.parse_args()
    from srdeploy.runtime.cpus import cpu_info

    print(f"CPU: {cpu_info().describe()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
    parts = args.parts.split(",")
    if "throughput" in parts:
        if not FACES.is_dir():
            raise SystemExit(f"{FACES} is absent")
        throughput(args.count)
    if "listing" in parts:
        listing(args.files)


if __name__ == "__main__":
    main()
