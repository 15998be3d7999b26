"""This machine's CPUs: how many this process may really use (the one count every thread
pool sizes from), and what they are (model and the vector/matrix units engines choose by).

``os.cpu_count()`` is the host's count. A process pinned by taskset, or a container given
2 CPUs by its cgroup quota on a 64-core host, must not start 64 threads: each would get a
slice of the quota and they would wait for each other at every layer. The count is the
affinity mask capped by the quota (cgroup v2 ``cpu.max``, else v1 CFS), rounded up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo flags that decide which engine and precision run fastest: AVX2 and
# AVX-512 (fp32 lanes), VNNI (int8 dot products), AVX512-BF16 and AMX (bf16/int8 tiles).
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about this CPU (first processor's fields)."""

    model_name: str
    flags: frozenset[str]
    mhz: float | None  # the highest "cpu MHz" listed (on most VMs the nominal clock)

    @property
    def has_bf16(self) -> bool:
        """bf16 arithmetic units (AVX512-BF16 or AMX-BF16); without them bf16 is emulated."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def has_int8_dot(self) -> bool:
        """int8 dot-product instructions (VNNI, AMX). Without them int8 kernels add pairs of
        products in int16, which saturates on 8-bit weights (docs/results.md, INT8)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def describe(self) -> str:
        """The model and the flags that matter, as every benchmark figure names its CPU."""
        present = [f for f in FLAGS_THAT_MATTER if f in self.flags]
        return f"{self.model_name} ({', '.join(present) or 'none of ' + ', '.join(FLAGS_THAT_MATTER)})"


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU; an empty description where /proc/cpuinfo is absent (not Linux)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return CpuInfo("unknown CPU", frozenset(), None)
    fields: dict[str, str] = {}
    mhz = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        fields.setdefault(key, value)
        if key == "cpu MHz":
            mhz.append(float(value))
    return CpuInfo(fields.get("model name", "unknown CPU"), frozenset(fields.get("flags", "").split()), max(mhz) if mhz else None)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max, else v1 cfs), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
