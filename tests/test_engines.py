"""Which engine and precision run a model: the choice per CPU class (its flags are given,
so every class is tested on any machine) and the OpenVINO runner against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

from srdeploy.runtime import openvino_engine
from srdeploy.runtime.cpus import CpuInfo
from srdeploy.runtime.engines import Engine, ProviderError, resolve
from srdeploy.runtime.upscaler import Upscaler

AVX2 = CpuInfo("AMD EPYC", frozenset({"avx", "avx2", "fma"}), 2450.0)
AVX512 = CpuInfo("Intel Xeon (Ice Lake)", frozenset({"avx", "avx2", "fma", "avx512f", "avx512_vnni"}), 2600.0)
AVX512_BF16 = CpuInfo("AMD EPYC (Zen 4)", frozenset({"avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}), 2600.0)  # no AMX
AMX = CpuInfo("Intel Xeon (Sapphire Rapids)", frozenset({"avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}), 2100.0)


def pair(engine: Engine) -> tuple[str, str]:
    return engine.provider, engine.precision


needs_openvino = pytest.mark.skipif(not openvino_engine.available(), reason="openvino is not installed")


@pytest.mark.parametrize("cpu, expected", [
    (AVX2, ("openvino", "fp32")), (AVX512, ("openvino", "fp32")), (AVX512_BF16, ("openvino", "bf16")), (AMX, ("openvino", "bf16")),
])
def test_auto_takes_the_engine_measured_fastest_for_each_cpu_class(cpu, expected):
    engine = resolve("auto", "auto", "fp32", cpu, openvino=True, openvino_bf16=True)
    assert (engine.provider, engine.precision) == expected
    assert engine.why.startswith("auto: ")  # what auto decided is always said


def test_auto_never_picks_bf16_without_bf16_units_nor_int8_for_an_fp32_model():
    for cpu in (AVX2, AVX512):
        assert resolve("auto", "auto", "fp32", cpu, True, openvino_bf16=True).precision == "fp32"
    assert resolve("auto", "auto", "fp32", AMX, True, openvino_bf16=False).precision == "fp32"  # OpenVINO does not list BF16
    assert resolve("auto", "fp32", "fp32", AMX, True, True) == Engine("openvino", "fp32", "auto: fp32 as asked, OpenVINO on this CPU")


def test_without_openvino_auto_says_how_to_get_it():
    engine = resolve("auto", "auto", "fp32", AMX, openvino=False, openvino_bf16=False)
    assert (engine.provider, engine.precision) == ("cpu", "fp32") and "pip install 'srdeploy[cpu]'" in engine.why
    with pytest.raises(ProviderError, match="needs the openvino package"):
        resolve("openvino", "auto", "fp32", AMX, openvino=False, openvino_bf16=False)


def test_requests_this_machine_cannot_honour_are_errors_not_substitutes():
    with pytest.raises(ProviderError, match=r"bf16 needs a CPU with bf16 units .* AMD EPYC \(avx2, fma\)"):
        resolve("openvino", "bf16", "fp32", AVX2, True, True)
    with pytest.raises(ProviderError, match="provider 'cpu' has no bf16 path"):
        resolve("cpu", "bf16", "fp32", AMX, True, True)
    with pytest.raises(ProviderError, match="int8 needs an int8 model: srdeploy export"):
        resolve("auto", "int8", "fp32", AMX, True, True)
    with pytest.raises(ProviderError, match="this is an int8 model"):
        resolve("openvino", "bf16", "int8", AMX, True, True)
    with pytest.raises(ProviderError, match="unknown provider"):
        resolve("directml", "auto", "fp32", AVX2, True, True)
    with pytest.raises(ProviderError, match=r"an fp16 model is for GPUs .* for OpenVINO use the fp32 model.onnx"):
        resolve("openvino", "auto", "fp16", AMX, True, True)


def test_an_int8_model_runs_in_int8_on_the_engine_it_was_quantised_for():
    """Each engine kept int8's 0.2 dB bound only on its own file, on every CPU measured:
    auto follows the file, and an explicit provider is obeyed."""
    for cpu in (AVX2, AVX512, AVX512_BF16, AMX):
        assert pair(resolve("auto", "auto", "int8", cpu, True, True)) == ("cpu", "int8")  # ONNX Runtime's quantiser (the default)
        assert pair(resolve("auto", "auto", "int8", cpu, True, True, int8_engine="openvino")) == ("openvino", "int8")
    # Without int8 dot products OpenVINO's kernels lost 0.37 dB on NNCF's file: said, with the way out.
    assert "export with --int8-engine cpu" in resolve("auto", "auto", "int8", AVX2, True, True, int8_engine="openvino").why
    assert "no VNNI" not in resolve("auto", "auto", "int8", AVX512_BF16, True, True, int8_engine="openvino").why
    assert "export with --int8-engine cpu" in resolve("openvino", "auto", "int8", AVX2, True, True, int8_engine="openvino").why
    missing = resolve("auto", "auto", "int8", AMX, openvino=False, openvino_bf16=False, int8_engine="openvino")
    assert pair(missing) == ("cpu", "int8") and "not installed" in missing.why
    # Another engine than the file's, asked for: obeyed, and what it costs is said.
    on_ort = resolve("cpu", "auto", "int8", AVX2, True, True, int8_engine="openvino")
    assert pair(on_ort) == ("cpu", "int8") and on_ort.why.startswith("as asked") and "slower than its fp32" in on_ort.why
    on_openvino = resolve("openvino", "int8", "int8", AVX2, True, True)
    assert pair(on_openvino) == ("openvino", "int8") and "past int8's 0.2 dB" in on_openvino.why and "--int8-engine openvino" in on_openvino.why
    assert resolve("openvino", "auto", "int8", AMX, True, True, int8_engine="openvino") == Engine("openvino", "int8")  # its own engine: nothing to say
    assert resolve("cpu", "auto", "int8", AMX, True, True) == Engine("cpu", "int8")


@needs_openvino
def test_openvino_fp32_matches_onnx_runtime_and_tiles_exactly(tiny_onnx, rng):
    lr = rng.random((37, 53, 3), dtype=np.float32)
    ort_fp32 = Upscaler(tiny_onnx, provider="cpu", tile=None).upscale_array(lr)
    ov = Upscaler(tiny_onnx, provider="openvino", precision="fp32", tile=None)
    assert (ov.provider, ov.precision) == ("openvino", "fp32")
    assert np.abs(ov.upscale_array(lr) - ort_fp32).max() <= 1e-4  # the parity bound of export --check
    tiled = Upscaler(tiny_onnx, provider="openvino", precision="fp32", tile=16)
    assert np.abs(tiled.upscale_array(lr) - ov.upscale_array(lr)).max() <= 1e-5  # no seams
    assert len(tiled._run._compiled) <= 4  # one compiled model per window shape, not per window


@needs_openvino
def test_a_model_openvino_cannot_read_is_one_line_of_what_is_wrong(tiny_onnx, tmp_path):
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.graph.node[0].input[0] = "nowhere"  # an input no node or graph input makes
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ValueError) as refused:
        openvino_engine.OpenVinoRunner(str(broken), "fp32", threads=1)
    message = str(refused.value)
    # OpenVINO's own report spans lines, one per C++ stage ("Exception from src/...").
    assert "\n" not in message and "Exception from" not in message and "nowhere" in message, message


@needs_openvino
def test_openvino_compiles_each_window_shape_once_and_bounds_the_cache(tiny_onnx, rng):
    runner = Upscaler(tiny_onnx, provider="openvino", precision="fp32", tile=None)._run
    for side in range(8, 8 + openvino_engine.MAX_COMPILED_SHAPES + 3):
        runner(rng.random((1, 3, side, side), dtype=np.float32))
    assert len(runner._compiled) == openvino_engine.MAX_COMPILED_SHAPES
    first = runner.compiled_for((1, 3, 18, 18))
    assert runner.compiled_for((1, 3, 18, 18)) is first


@needs_openvino
def test_openvino_leaves_its_threads_unpinned_so_side_by_side_processes_share_the_cpus(tiny_onnx):
    runner = Upscaler(tiny_onnx, provider="openvino", precision="fp32", tile=None, threads=1)._run
    compiled = runner.compiled_for((1, 3, 8, 8))
    assert compiled.get_property("ENABLE_CPU_PINNING") is False  # the plugin took the setting
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


@needs_openvino
def test_a_rerun_on_another_engine_redoes_the_outputs(tiny_onnx, tmp_path, rng):
    from PIL import Image

    from srdeploy.batch.run import run_batch

    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    first = run_batch(Upscaler(tiny_onnx, provider="cpu"), [tmp_path / "a.png"], out)
    again = run_batch(Upscaler(tiny_onnx, provider="cpu"), [tmp_path / "a.png"], out)
    other = run_batch(Upscaler(tiny_onnx, provider="openvino", precision="fp32"), [tmp_path / "a.png"], out)
    assert [r.status for r in first.results + again.results + other.results] == ["ok", "skipped", "ok"]
    assert "engine" in other.results[0].reason  # (replaced: ... engine ... changed)
    runs = [r for r in map(__import__("json").loads, (out / "upscale-journal.jsonl").read_text().splitlines()) if r.get("event") == "run"]
    assert [(r["provider"], r["precision"]) for r in runs] == [("cpu", "fp32"), ("cpu", "fp32"), ("openvino", "fp32")]


def test_a_rerun_with_another_model_or_precision_redoes_the_outputs(tiny_onnx, tmp_path, rng):
    # The rerun key holds the model's sha256 and the precision: a rerun with srgan after
    # default, or bf16 after fp32, must not keep the other's images as "already done".
    from onnx_toy import build_toy_sr
    from PIL import Image

    from srdeploy.batch.run import run_batch

    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    other = build_toy_sr(tmp_path / "other.onnx")
    runs = [(tiny_onnx, "cpu", "auto"), (tiny_onnx, "cpu", "auto"), (other, "cpu", "auto")]
    if openvino_engine.native_bf16():
        runs += [(other, "openvino", "fp32"), (other, "openvino", "bf16"), (other, "openvino", "bf16")]
    statuses = [run_batch(Upscaler(model, provider=provider, precision=precision), [tmp_path / "a.png"], out).results[0].status
                for model, provider, precision in runs]
    assert statuses == ["ok", "skipped", "ok"] + (["ok", "ok", "skipped"] if len(runs) > 3 else [])

