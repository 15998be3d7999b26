"""What a rerun pays to read a long batch journal before its first input: the time and the
peak memory of ``Journal.vouching`` on a journal of many records (not a test; docs/results.md,
"Reading a long journal").

    python benchmarks/journal_read.py [--records 300000] [--outputs 100000] [--repeats 3]

The journal is written by srdeploy's own Journal.append, with records shaped as a batch
writes them: a first run's ``writing`` and ``ok`` record for each of ``--outputs`` outputs,
then reruns' ``skipped`` records (one per output per rerun) up to ``--records``, each run
after its ``run`` record. Each read runs in a fresh process, so its peak RSS (ru_maxrss) is
the read's own; the figure beside it is that process's RSS before the read (Python and the
imports). The CPU time beside the wall time is the reading process's: on a machine shared
with other work, the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_SHA256 = "9f2c" * 16  # one model for every record, as a real history mostly has


def key(i: int) -> dict:
    """Output ``i``'s rerun key, with the fields srdeploy.batch.steps gives it."""
    return {
        "source": f"/data/faces/{i:07d}.png", "input_sha256": f"{i:064x}", "model_sha256": MODEL_SHA256,
        "provider": "openvino", "precision": "bf16", "format": "PNG", "quality": None, "png_compression": None,
    }


def write_journal(path: Path, records: int, outputs: int) -> None:
    from srdeploy.batch.journal import Journal

    journal = Journal(path)
    settings = {"format": "same", "quality": None, "png_compression": None, "tile": 256, "recursive": True, "overwrite": False}
    written = 0
    with journal.lock():
        while written < records:
            journal.append({"event": "run", "settings": settings, "provider": "openvino", "precision": "bf16"})
            first = written == 0
            for i in range(outputs):
                if written >= records:
                    break
                shown, output = f"/data/faces/{i:07d}.png", f"{i:07d}.png"
                if first:
                    sha = f"{i + 1 << 8:064x}"
                    journal.append({"input": shown, "status": "writing", "output": output, "output_sha256": sha, **key(i)})
                    journal.append({"input": shown, "status": "ok", "reason": "256x256 PNG", "output": output, "seconds": 0.041,
                                    **key(i), "output_sha256": sha, "size": [256, 256]})
                    written += 2
                else:
                    journal.append({"input": shown, "status": "skipped", "reason": "already done (same input, model, engine and settings)",
                                    "output": output, "seconds": 0.002, **key(i)})
                    written += 1


def read_once(path: Path) -> None:
    """In this fresh process: read the journal as a rerun does, print one JSON line."""
    from srdeploy.batch.journal import Journal

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu_at = time.perf_counter(), time.process_time()
    journal = Journal(path)
    journal.vouching("0000000.png")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_at
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    vouched = sum(1 for i in range(10) if journal.vouching(f"{i:07d}.png"))
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": peak / 1024, "before_mib": before / 1024, "vouched_of_first_10": vouched}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--outputs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the child's half
    args = parser.parse_args()
    if args.read:
        read_once(args.read)
        return
    from srdeploy.runtime.cpus import cpu_info

    print(f"CPU: {cpu_info().describe()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="journal-bench-") as tmp:
        path = Path(tmp) / "upscale-journal.jsonl"
        started = time.perf_counter()
        write_journal(path, args.records, args.outputs)
        print(f"journal: {args.records:,} records for {args.outputs:,} outputs, {path.stat().st_size / 2**20:.0f} MiB, "
              f"written in {time.perf_counter() - started:.1f} s", flush=True)
        for _ in range(args.repeats):
            done = subprocess.run([sys.executable, __file__, "--read", str(path)], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout)
            print(f"  read {row['seconds']:6.2f} s wall, {row['cpu']:5.2f} s CPU   peak RSS {row['peak_mib']:6.0f} MiB (before the read {row['before_mib']:.0f} MiB)   "
                  f"vouched {row['vouched_of_first_10']}/10   load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
