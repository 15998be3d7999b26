"""The CPU's peak fp32 FLOP/s, for "share of peak" figures, and how it was estimated.

Peak = cores x clock x FMA units per core x fp32 lanes per vector x 2 FLOPs per FMA.
Lanes come from the widest vector extension /proc/cpuinfo lists (AVX-512: 16, AVX/AVX2:
8, else SSE: 4); every x86 core with FMA since Haswell and Zen 2 issues two FMAs per
cycle, so 2 units is assumed when the ``fma`` flag is present, 1 otherwise. The clock is
the highest one the kernel reports: cpufreq's ``cpuinfo_max_freq`` (the boost clock) when
the machine exposes it, else the ``cpu MHz`` field of /proc/cpuinfo (on most virtual
machines the nominal clock; boost makes the real peak somewhat higher). Cores are the
ones this process may run on.

A measured reference sits beside the estimate: a large float32 matrix product through
numpy's BLAS, which well-tuned kernels reach 80-90% of on an idle machine (less when other
jobs share the cores, which is the point of printing it next to the benchmark).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from srdeploy.runtime.cpus import available_cpus, cpu_info

CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")  # kHz


@dataclass(frozen=True)
class CpuPeak:
    gflops: float
    cores: int
    ghz: float
    clock_source: str
    fma_units: int
    lanes: int
    model_name: str

    def method(self) -> str:
        return (
            f"{self.cores} cores x {self.ghz:.2f} GHz ({self.clock_source}) x {self.fma_units} FMA units x "
            f"{self.lanes} fp32 lanes x 2 = {self.gflops:.0f} GFLOP/s"
        )


def estimate_peak() -> CpuPeak | None:
    """The estimate described in the module docstring; None when /proc/cpuinfo is absent
    or names no clock (not Linux, or an unusual kernel)."""
    cpu = cpu_info()
    flags = cpu.flags
    try:
        ghz, source = int(CPUFREQ_MAX.read_text()) / 1e6, "cpufreq max"
    except (OSError, ValueError):
        if not cpu.mhz:
            return None
        ghz, source = cpu.mhz / 1e3, "/proc/cpuinfo cpu MHz"
    lanes = 16 if "avx512f" in flags else 8 if "avx" in flags else 4
    fma_units = 2 if "fma" in flags else 1
    cores = available_cpus()
    gflops = cores * ghz * fma_units * lanes * 2
    return CpuPeak(gflops, cores, ghz, source, fma_units, lanes, cpu.model_name)


def measured_sgemm_gflops(side: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of a side x side float32 matrix product in numpy
    (its BLAS picks its own thread count: all cores)."""
    import numpy as np

    a = np.random.default_rng(0).random((side, side), dtype=np.float32)
    a @ a  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best / 1e9
