"""The CPU's peak fp32 FLOP/s, for "share of peak" figures, and how it was estimated.

Peak = cores x clock x FMA units per core x fp32 lanes per vector x 2 FLOPs per FMA.
Lanes come from the widest vector extension /proc/cpuinfo lists (AVX-512: 16, AVX/AVX2:
8, else SSE: 4); every x86 core with FMA since Haswell and Zen 2 issues two FMAs per
cycle, so 2 units is assumed when the ``fma`` flag is present, 1 otherwise. The clock is
the highest one the kernel reports: cpufreq's ``cpuinfo_max_freq`` (the boost clock) when
the machine exposes it, else the ``cpu MHz`` field of /proc/cpuinfo (on most virtual
machines the nominal clock; boost makes the real peak somewhat higher). Cores are the
threads the timed rows run on (``srdeploy bench --threads``), by default every core this
process may run on.

It counts fp32 lanes only: the measured ceilings of srdeploy.bench.ceilings, one per
precision, are what ``srdeploy bench`` compares its rows with.
"""

from __future__ import annotations

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

    def method(self) -> str:
        return (
            f"{self.cores} cores x {self.ghz:.2f} GHz ({self.clock_source}) x {self.fma_units} FMA units x "
            f"{self.lanes} fp32 lanes x 2 = {self.gflops:.0f} GFLOP/s"
        )


def estimate_peak(cores: int | None = None) -> CpuPeak | None:
    """The estimate described in the module docstring, for ``cores`` (default: every usable
    one); None when /proc/cpuinfo is absent or names no clock (not Linux, or an unusual
    kernel)."""
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
    cores = min(cores or available_cpus(), available_cpus())
    gflops = cores * ghz * fma_units * lanes * 2
    return CpuPeak(gflops, cores, ghz, source, fma_units, lanes)
