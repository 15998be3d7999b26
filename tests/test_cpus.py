"""What srdeploy reads of this machine's CPUs: the flags its engine choice depends on
(a misread flag quietly drops `auto` from bf16 to fp32), and the CPUs a process may use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from srdeploy.runtime import cpus, openvino_engine
from srdeploy.runtime.engines import resolve

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 2699.998
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 3100.000
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC_AVX2 = """\
processor\t: 0
model name\t: AMD EPYC 7B12
cpu MHz\t\t: 2249.998
flags\t\t: fpu sse2 avx avx2 fma
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point cpu_info() at a file of our own; its cache is cleared before and after."""
    def use(text: str) -> cpus.CpuInfo:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(cpus, "CPUINFO", path)
        cpus.cpu_info.cache_clear()
        return cpus.cpu_info()

    yield use
    cpus.cpu_info.cache_clear()


def test_the_flags_model_and_clock_are_read_from_cpuinfo(cpuinfo):
    info = cpuinfo(SAPPHIRE_RAPIDS)
    assert info.model_name == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert {"avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"} <= info.flags and info.has_bf16 and info.has_int8_dot
    assert info.mhz == 3100.0  # the highest listed
    assert info.describe().endswith("(avx2, fma, avx512f, avx512_vnni, avx512_bf16, amx_bf16, amx_int8)")
    epyc = cpuinfo(EPYC_AVX2)
    assert epyc.flags == {"fpu", "sse2", "avx", "avx2", "fma"} and not epyc.has_bf16 and not epyc.has_int8_dot


def test_auto_follows_the_flags_read(cpuinfo):
    """From the file to the engine choice as the Upscaler makes it, nothing built by hand
    in between. OpenVINO's own report of this machine's BF16 has its say too."""
    pytest.importorskip("openvino")
    epyc = cpuinfo(EPYC_AVX2)
    assert not openvino_engine.native_bf16()  # no bf16 units: never bf16, whatever OpenVINO lists
    assert resolve("auto", "auto", "fp32", epyc, True, openvino_engine.native_bf16()).precision == "fp32"
    xeon = cpuinfo(SAPPHIRE_RAPIDS)
    plugin_bf16 = "BF16" in openvino_engine.capabilities()
    assert openvino_engine.native_bf16() == plugin_bf16
    assert resolve("auto", "auto", "fp32", xeon, True, plugin_bf16).precision == ("bf16" if plugin_bf16 else "fp32")


def test_without_cpuinfo_the_cpu_is_unknown_and_has_no_units(cpuinfo, tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "CPUINFO", tmp_path / "absent")
    cpus.cpu_info.cache_clear()
    info = cpus.cpu_info()
    assert info.model_name == "unknown CPU" and not info.flags and info.mhz is None


def test_this_machines_flags_match_an_independent_reading():
    with open("/proc/cpuinfo") as f:
        first = f.read().split("\n\n")[0]
    flags = next(line.split(":", 1)[1].split() for line in first.splitlines() if line.startswith("flags"))
    cpus.cpu_info.cache_clear()
    assert cpus.cpu_info().flags == frozenset(flags)


def test_a_process_pinned_to_one_cpu_sizes_its_engine_for_one(tiny_onnx):
    """As under `taskset -c 0`: the affinity mask, not the host's count."""
    code = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from srdeploy.runtime.cpus import available_cpus\n"
        "from srdeploy.runtime.upscaler import Upscaler\n"
        "print(available_cpus(), Upscaler(sys.argv[1], provider='cpu').threads)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tiny_onnx)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1"]
