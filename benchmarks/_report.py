"""Output helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so
this directory is on sys.path)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    for row in rows:
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    sys.stdout.flush()


def finish(results: dict, json_path: Path | None) -> None:
    """Record and print the load average after the run (the figures are only comparable
    within one run on a shared machine); write the JSON results when asked."""
    machine = results["machine"]
    machine["load_avg_after"] = os.getloadavg()
    print(f"\nload average before {machine['load_avg_before']}, after {machine['load_avg_after']} "
          f"({os.cpu_count()} CPUs; other jobs may share them)")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
