"""`srdeploy bench` as a subprocess on a tiny model and a tiny data folder: the rows and
fields of its JSON and table (no timing assertions), and the FLOP count it reports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SRDEPLOY
from PIL import Image

ROW_FIELDS = {"set", "row", "images", "images_per_s", "output_mpx_per_s", "gflop_per_s", "peak_share", "vs_torch", "max_abs_diff_vs_torch", "passes"}


def bf16_cpu() -> bool:
    """Whether this CPU runs the OpenVINO bf16 row."""
    from srdeploy.runtime import openvino_engine

    return openvino_engine.native_bf16()


def bench(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(SRDEPLOY), "bench", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hr_folder(tmp_path, rng) -> Path:
    folder = tmp_path / "hr"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"face{i}.png")
    return folder


def srresnet_conv_flops(blocks: int, channels: int, height: int, width: int) -> int:
    """Conv FLOPs of the SRResNet generator (x4) from its architecture: 9x9 head, two 3x3
    convs per block, the 3x3 after the blocks, two x2 sub-pixel 3x3 convs (C -> 4C, the
    second at 2x), 9x9 tail at 4x; 2 FLOPs per multiply-add."""
    c, lr = channels, height * width
    macs = 81 * 3 * c * lr + 2 * blocks * 9 * c * c * lr + 9 * c * c * lr
    macs += 9 * c * 4 * c * lr + 9 * c * 4 * c * 4 * lr + 81 * c * 3 * 16 * lr
    return 2 * macs


def test_flops_of_the_shipped_default_match_the_architecture():
    import onnx

    from srdeploy.runtime import graph
    from srdeploy.runtime.zoo import resolve_model

    reach = graph.analyze(onnx.load(str(resolve_model("default").path)).graph)
    conv = reach.conv_flops(64, 64)
    assert conv == srresnet_conv_flops(8, 64, 64, 64)
    assert abs(conv / 1e9 - 13.34) < 0.01  # ~13.3 GFLOP per 64x64 input
    assert abs(conv / (256 * 256) - 203_544) < 1  # per output pixel
    assert reach.conv_flops(32, 48) == srresnet_conv_flops(8, 64, 32, 48)


@pytest.mark.slow
def test_bench_reports_every_row_for_both_input_sets(tiny_generator, tiny_onnx, hr_folder, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from srdeploy.export.pipeline import export_artifacts

    model = export_artifacts(tiny_generator, tmp_path / "model").out_dir / "model.onnx"  # generator.pt beside it: the PyTorch row
    int8 = tmp_path / "tiny.int8.onnx"
    quantize_dynamic(str(model), str(int8), weight_type=QuantType.QUInt8)

    out = tmp_path / "bench.json"
    # A 96x96 "large" input keeps this quick; 32-px tiles make it tiled like 512x512 at the default.
    run = bench("--model", model, "--data", hr_folder, "--large", 1, "--large-side", 96, "--repeats", 1, "--tile", 32, "--int8", int8, "--json", out)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    # ONNX Runtime's quantiser made the file (no engine mark): OpenVINO on it is a comparison
    assert f"{tmp_path.name}/tiny.int8.onnx was quantised for ORT: its OpenVINO int8 row is a comparison" in " ".join(result["notes"])

    sets = [s["set"] for s in result["sets"]]
    assert sets == ["3 x 8x8", "1 x 96x96"]
    rows = {(r["set"], r["row"]): r for r in result["rows"]}
    expected = ("torch", "ort_fp32", "openvino_fp32", "openvino_defaults", "ort_int8", "openvino_int8", "pipeline")
    expected += ("openvino_bf16",) if bf16_cpu() else ()  # bf16 only on CPUs with bf16 units
    assert set(rows) == {(s, row) for s in sets for row in expected}
    for record in rows.values():
        assert ROW_FIELDS <= set(record)
        assert record["images_per_s"] > 0 and record["output_mpx_per_s"] > 0 and record["gflop_per_s"] > 0
        assert record["ceiling_share"] > 0 and record["vs_ort_fp32"] > 0
        assert len(record["passes"]) == 1
        # The figures agree with each other and with the timed pass (atol=0: tiny values)
        seconds = record["passes"][0]
        assert record["seconds_per_pass"] == seconds
        np.testing.assert_allclose(record["images_per_s"] * seconds, record["images"], rtol=1e-9, atol=0)
        ort = rows[record["set"], "ort_fp32"]["seconds_per_pass"]
        np.testing.assert_allclose(record["vs_ort_fp32"], ort / seconds, rtol=1e-9, atol=0)
        np.testing.assert_allclose(record["vs_torch"], rows[record["set"], "torch"]["seconds_per_pass"] / seconds, rtol=1e-9, atol=0)
        flops = result["flops"]["gflop"] if record["set"] == "3 x 8x8" else None
        if flops is not None:  # the first set's inputs all have the first input's size
            np.testing.assert_allclose(record["gflop_per_s"], flops * record["images_per_s"], rtol=1e-9, atol=0)
    for s in sets:
        assert rows[s, "ort_fp32"]["vs_ort_fp32"] == 1.0 and rows[s, "torch"]["vs_torch"] == 1.0
    for s in sets:
        for same_network in ("ort_fp32", "openvino_fp32", "openvino_defaults"):
            if rows[s, same_network]["precision"] == "fp32":  # OpenVINO's defaults are bf16 on bf16 CPUs
                assert rows[s, same_network]["max_abs_diff_vs_torch"] < 1e-4
        assert rows[s, "openvino_defaults"]["precision"] == ("bf16" if bf16_cpu() else "fp32")
        assert rows[s, "ort_int8"]["max_abs_diff_vs_torch"] is not None
    assert result["flops"]["gflop"] == pytest.approx(srresnet_conv_flops(1, 8, 8, 8) / 1e9)
    big = next(s for s in result["sets"] if s["set"] == "1 x 96x96")
    assert big["tile_recompute"] > 1  # 32-px tiles plus overlap
    assert result["settings"]["tile"] == 32 and result["machine"]["peak_method"]
    assert result["machine"]["ceilings"]["fp32"]["gflop_per_s"] > 0 and result["machine"]["ceilings"]["int8"]["gflop_per_s"] > 0
    assert set(result["machine"]["ceilings"]["int8"]["by"]) == {"ORT MatMulInteger u8s8", "OpenVINO MatMul u8s8"}  # both int8 engines
    assert result["settings"]["auto"] in {"cpu fp32", "openvino fp32", "openvino bf16"}
    for text in ("images/s", "out Mpx/s", "GFLOP/s", "% ceil", "vs ORT fp32", "PyTorch eager fp32", "ORT int8", "OpenVINO int8",
                 "upscale pipeline", "CPU ", "flags:", "srdeploy upscale picks here", "ceilings measured now", "load average"):
        assert text in run.stdout


def test_bench_says_which_rows_are_absent_and_json_to_stdout(tiny_onnx, hr_folder):
    run = bench("--model", tiny_onnx, "--data", hr_folder, "--large", 0, "--repeats", 1, "--json", "-")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # the table went to stderr
    bf16 = ["openvino_bf16"] if bf16_cpu() else []
    assert [r["row"] for r in result["rows"]] == ["ort_fp32", "openvino_fp32", "openvino_defaults", *bf16, "pipeline"]
    notes = " ".join(result["notes"])
    assert "PyTorch row absent: no generator.pt" in notes and "int8 rows absent" in notes
    assert all(r["vs_torch"] is None for r in result["rows"])
    assert "images/s" in run.stderr


def test_bench_leaves_unreadable_images_out_and_names_them(tiny_onnx, hr_folder):
    (hr_folder / "face0_truncated.png").write_bytes((hr_folder / "face0.png").read_bytes()[:100])
    (hr_folder / "face1_text.png").write_text("not an image")
    run = bench("--model", tiny_onnx, "--data", hr_folder, "--images", 4, "--large", 0, "--repeats", 1, "--json", "-")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    notes = result["notes"]
    assert any(n.startswith(f"left out of --data, unreadable: {hr_folder / 'face1_text.png'}: not an image") for n in notes), notes
    assert f"--images 4: {hr_folder} has 3 readable image(s), and all of them are timed" in notes
    for good in hr_folder.glob("face?.png"):
        good.unlink()
    run = bench("--model", tiny_onnx, "--data", hr_folder, "--large", 0, "--repeats", 1)
    assert run.returncode == 2 and f"{hr_folder}: no readable image (" in run.stderr


def test_bench_refuses_a_missing_data_folder(tiny_onnx, tmp_path):
    run = bench("--model", tiny_onnx, "--data", tmp_path / "nowhere", "--repeats", 1)
    assert run.returncode == 2
    assert "data folder not found" in run.stderr


def test_bench_refuses_an_int8_file_that_is_not_one_and_a_json_path_without_its_folder(tiny_onnx, hr_folder, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    for given, reason in ((junk, f"{junk}: not a readable ONNX model"), (tiny_onnx, f"{tiny_onnx}: --int8 takes an int8 model")):
        run = bench("--model", tiny_onnx, "--data", hr_folder, "--large", 0, "--repeats", 1, "--int8", given)
        assert run.returncode == 2 and reason in run.stderr and "Traceback" not in run.stderr
    run = bench("--model", tiny_onnx, "--data", hr_folder, "--repeats", 1, "--json", tmp_path / "nowhere" / "b.json")
    assert run.returncode == 2 and f"there is no folder {tmp_path / 'nowhere'}" in run.stderr
    assert not (tmp_path / "nowhere").exists()
    os.mkfifo(tmp_path / "pipe")  # as /dev/null would be: not replaced by a file
    run = bench("--model", tiny_onnx, "--data", hr_folder, "--repeats", 1, "--json", tmp_path / "pipe")
    assert run.returncode == 2 and "it exists and is not a regular file" in run.stderr and not (tmp_path / "pipe").is_file()


def test_the_clock_peak_and_the_blas_ceiling_count_the_rows_threads_only(monkeypatch):
    """`srdeploy bench --threads 1` on a 2-core machine: both yardsticks are one core's."""
    from threadpoolctl import threadpool_info

    from srdeploy.bench import ceilings, peak

    monkeypatch.setattr(peak, "available_cpus", lambda: 2)
    one, two = peak.estimate_peak(1), peak.estimate_peak()
    if one is None:
        pytest.skip("no clock in /proc/cpuinfo")
    assert (one.cores, two.cores) == (1, 2) and one.gflops * 2 == pytest.approx(two.gflops)
    seen = []
    real_rate = ceilings._best_rate

    def rate(fn, side):
        seen.append([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"])
        return real_rate(fn, side)

    monkeypatch.setattr(ceilings, "_best_rate", rate)
    assert ceilings._numpy_sgemm(1, 64) > 0
    assert seen and all(count == 1 for count in seen[0])


def resize_x4_model(path: Path) -> Path:
    """A valid x4 model whose graph bench cannot count: a bicubic Resize."""
    import onnx
    from onnx import TensorProto, helper

    dims = lambda h, w: ["n", 3, h, w]  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("Resize", ["lr", "", "scales"], ["sr"], mode="cubic")],
        "resize_x4",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, dims("h", "w"))],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, dims("4*h", "4*w"))],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 4, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_model_whose_flops_cannot_be_counted_is_refused_before_timing(hr_folder, tmp_path):
    model = resize_x4_model(tmp_path / "resize.onnx")
    run = bench("--model", model, "--data", hr_folder, "--large", 0, "--repeats", 1)
    assert run.returncode == 2 and f"Error: {model}: bench cannot count this model's FLOPs" in run.stderr, run.stderr
    assert "unexpected" not in run.stderr and "ceiling" not in run.stderr  # nothing was timed
    run = bench("--model", model, "--data", hr_folder, "--large-side", 4096)  # 16,384 px a side out
    assert run.returncode == 2 and "'--large-side': 4096 is not in the range 1<=x<=4095" in run.stderr
