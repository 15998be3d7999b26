"""Serving benchmark: TorchServe with srgan.mar against `srdeploy upscale`, same machine,
same run, same model, same 256x256 inputs (not a test).

    python benchmarks/serve_bench.py [--model default|PATH.onnx] [--size 256]
        [--concurrency 1,4,16] [--requests 4] [--batch-size 1] [--json out.json]

1. The CLI: `srdeploy upscale` on ``--cli-images`` inputs; images/s from its summary.
2. The server: `srdeploy package` with the real defaults (batch 1, one worker, cap
   512x512; --batch-size to compare), TorchServe started from a scratch folder. At each
   concurrency c, c clients send max(c, --requests) requests in all, after one warm-up
   request: images/s, p50 and p99 latency (with n requests, p99 is about the slowest),
   and the overhead ratio CLI images/s / server images/s.
3. TorchServe's own metrics for each level: mean queue time per request (Prometheus
   counters ts_queue_latency_microseconds / ts_inference_requests_total), mean frontend
   latency, and the handler time per batch (the worker's PredictionTime in ts_log.log).

Model: ``--model`` (default: the shipped default model when there is one, else a seeded
random-weight B=8, 64-channel generator exported with srdeploy.export; speed does not
depend on the weights). Inputs: examples/astronaut_face.png resized to --size, plus
flipped and rotated copies. The load average before and after is printed: on a shared
machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def build_model(folder: Path, spec: str | None) -> tuple[str, str]:
    """-> (model spec for --model, what it is)."""
    from srdeploy.runtime import zoo

    if spec:
        return spec, spec
    if "srresnet" in zoo.shipped_models():
        return "default", "the shipped default model (srresnet)"
    import torch

    from srdeploy.export.onnx_export import export_onnx
    from srdeploy.training.models import Generator

    torch.manual_seed(0)
    path = export_onnx(Generator(num_blocks=8, channels=64, scale=4).eval(), folder / "generator_b8.onnx")
    return str(path), "random-weight B=8, 64-channel generator (no default model shipped yet)"


def make_inputs(folder: Path, size: int) -> list[Path]:
    from PIL import Image

    face = Image.open(REPO / "examples" / "astronaut_face.png").convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    folder.mkdir(parents=True)
    variants = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), face.transpose(Image.Transpose.ROTATE_90), face.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    paths = []
    for i, img in enumerate(variants):
        paths.append(folder / f"face{i}.png")
        img.save(paths[-1])
    return paths


def cli_rate(model: str, inputs: list[Path], out: Path) -> dict:
    """`srdeploy upscale` on the inputs; images/s from its own summary line (model load excluded)."""
    done = subprocess.run([str(BIN / "srdeploy"), "upscale", *map(str, inputs), "-o", str(out), "--model", model, "--format", "png"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"srdeploy upscale failed: {done.stderr}")
    match = re.search(r"(\d+) ok.* in ([\d.]+) s \(", done.stderr)
    images, seconds = int(match[1]), float(match[2])
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}  # the line rounds to 0.01


class Server:
    """TorchServe from a scratch folder (own TMPDIR: pid file, worker sockets, logs)."""

    def __init__(self, root: Path):
        self.root = root
        props = dict(line.split("=", 1) for line in (root / "config.properties").read_text().splitlines() if "=" in line and not line.startswith("#"))
        self.inference, self.management, self.metrics = props["inference_address"], props["management_address"], props["metrics_address"]
        (root / "tmp").mkdir()
        self.env = {**os.environ, "TMPDIR": str(root / "tmp"), "TEMP": str(root / "tmp"), "LOG_LOCATION": str(root / "logs"), "METRICS_LOCATION": str(root / "logs")}
        command = [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", "config.properties"]
        self.process = subprocess.Popen(command, cwd=root, env=self.env, stdout=open(root / "torchserve.out", "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def token(self, api: str = "inference") -> str:
        return json.loads((self.root / "key_file.json").read_text())[api]["key"]

    def wait_ready(self, timeout: float = 600) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"torchserve exited: {(self.root / 'torchserve.out').read_text()[-2000:]}")
            try:
                answer = requests.get(f"{self.management}/models/srgan", headers={"Authorization": f"Bearer {self.token('management')}"}, timeout=5)
                if all(w["status"] == "READY" for w in answer.json()[0]["workers"]):
                    return
            except (OSError, ValueError, KeyError, IndexError, requests.RequestException):
                pass
            time.sleep(2)
        raise SystemExit("torchserve did not get ready")

    def counters(self) -> dict[str, float]:
        import requests

        text = requests.get(f"{self.metrics}/metrics", timeout=10).text
        names = ("ts_inference_requests_total", "ts_queue_latency_microseconds", "ts_inference_latency_microseconds")
        return {n: sum(float(m) for m in re.findall(rf"^{n}{{[^}}]*}} ([\d.eE+-]+)$", text, re.M)) for n in names}

    def stop(self) -> None:
        subprocess.run([str(BIN / "torchserve"), "--stop"], cwd=self.root, env=self.env, capture_output=True, timeout=120)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the workers, should any outlive the frontend
        except ProcessLookupError:
            pass


def run_level(server: Server, images: list[bytes], concurrency: int, total: int) -> dict:
    import requests

    url = f"{server.inference}/predictions/srgan"
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {server.token()}"}
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    todo = list(range(total))

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                t0 = time.perf_counter()
                answer = session.post(url, data=images[i % len(images)], headers=headers, timeout=3600)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses.append(answer.status_code)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = statuses.count(200)
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency, "requests": total, "ok": ok, "statuses": {str(s): statuses.count(s) for s in set(statuses)},
        "seconds": round(wall, 2), "images_per_s": ok / wall,
        "p50_s": statistics.median(ordered), "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def handler_times(log_text: str) -> list[float]:
    """PredictionTime (ms) of each batch the worker reported in ts_log.log. Each metric line
    shows up twice; the whole record (value, timestamp, request ids) tells batches apart."""
    records = set(re.findall(r"(PredictionTime\.Milliseconds:[\d.]+\|[^ ]*)", log_text))
    return [float(re.match(r"PredictionTime\.Milliseconds:([\d.]+)", r)[1]) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default | PATH.onnx [default: shipped default, else random B=8]")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=4, help="requests per level at least (and at least one per client)")
    parser.add_argument("--cli-images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from srdeploy.handlers.config import Ports, ServeConfig, free_port_block
    from srdeploy.handlers.package import build_archive
    from srdeploy.runtime.cpus import available_cpus

    levels = [int(c) for c in args.concurrency.split(",")]
    result: dict = {"load_before": os.getloadavg(), "cores": available_cpus(), "size": args.size}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        scratch = Path(scratch)
        model, what = build_model(scratch, args.model)
        result["model"] = what
        print(f"model: {what}; inputs {args.size}x{args.size}; {available_cpus()} cores; load {os.getloadavg()}", flush=True)
        inputs = make_inputs(scratch / "in", args.size)
        result["cli"] = cli_rate(model, inputs[: args.cli_images], scratch / "cli")
        print(f"cli before: {result['cli']}", flush=True)

        root = scratch / "srv"
        root.mkdir()
        config = ServeConfig(batch_size=args.batch_size, workers=args.workers)
        packaged = build_archive(model, root / "store", "srgan", config, Ports(free_port_block()), root / "config.properties")
        result["config"] = {"batch_size": config.batch_size, "max_batch_delay_ms": config.max_batch_delay_ms, "workers": config.workers, "response_timeout_s": packaged.response_timeout_s}
        server = Server(root)
        try:
            server.wait_ready()
            images = [p.read_bytes() for p in inputs]
            run_level(server, images, 1, 1)  # warm-up
            result["levels"] = []
            for c in levels:
                log = root / "logs" / "ts_log.log"
                offset = log.stat().st_size
                before = server.counters()
                level = run_level(server, images, c, max(c, args.requests))
                after = server.counters()
                with open(log, "rb") as f:
                    f.seek(offset)
                    batches = handler_times(f.read().decode("utf-8", "replace"))
                n = after["ts_inference_requests_total"] - before["ts_inference_requests_total"]
                level["torchserve"] = {
                    "requests": n,
                    "mean_queue_ms": (after["ts_queue_latency_microseconds"] - before["ts_queue_latency_microseconds"]) / n / 1000,
                    "mean_frontend_latency_ms": (after["ts_inference_latency_microseconds"] - before["ts_inference_latency_microseconds"]) / n / 1000,
                    "batches": len(batches), "mean_batch_size": n / len(batches) if batches else None,
                    "mean_handler_ms_per_batch": statistics.mean(batches) if batches else None,
                    "handler_ms_per_image": sum(batches) / n if batches else None,
                }
                # Wall time per image against the handler's own time per image: what the
                # frontend, the queue hand-off and the worker protocol add. Unlike the CLI
                # ratio it does not move when the machine's load changes between runs.
                level["wall_over_handler"] = (level["seconds"] / level["ok"]) / (level["torchserve"]["handler_ms_per_image"] / 1000) if batches and level["ok"] else None
                result["levels"].append(level)
                print(json.dumps(level), flush=True)
        finally:
            server.stop()
        # The CLI again: on a shared machine the load drifts; the ratio uses both runs.
        result["cli_after"] = cli_rate(model, inputs[: args.cli_images], scratch / "cli-after")
        print(f"cli after: {result['cli_after']}", flush=True)
    cli_rate_mean = (result["cli"]["images_per_s"] + result["cli_after"]["images_per_s"]) / 2
    for level in result["levels"]:
        level["overhead_ratio"] = cli_rate_mean / level["images_per_s"] if level["images_per_s"] else None
    result["load_after"] = os.getloadavg()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def report(r: dict) -> None:
    print(f"\nmodel: {r['model']}; {r['size']}x{r['size']} -> x4 PNG; {r['cores']} cores; load {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after")
    print(f"config: {r['config']}")
    for key, when in (("cli", "before"), ("cli_after", "after")):
        print(f"CLI (srdeploy upscale) {when}: {r[key]['images_per_s']:.4f} images/s ({r[key]['images']} images in {r[key]['seconds']:.1f} s)")
    print("  c   n  images/s  p50 s   p99 s   CLI/server  wall/handler  queue s/req  handler s/batch (batches, size)  statuses")
    for lv in r["levels"]:
        t = lv["torchserve"]
        print(
            f"{lv['concurrency']:3d} {lv['requests']:3d} {lv['images_per_s']:9.4f} {lv['p50_s']:6.1f} {lv['p99_s']:7.1f} {lv['overhead_ratio']:9.2f}x"
            f" {lv['wall_over_handler'] or 0:11.3f}x {t['mean_queue_ms'] / 1000:12.1f} {(t['mean_handler_ms_per_batch'] or 0) / 1000:15.1f} ({t['batches']}, {t['mean_batch_size'] or 0:.1f})"
            f"  {lv['statuses']}"
        )


if __name__ == "__main__":
    main()
