"""``srdeploy evaluate`` on synthetic images: the bicubic row against an independent
computation, a model with an exactly known PSNR, a real (tiny) generator checkpoint, the
CLI as a subprocess, its error messages, and the figures. The ``data`` test measures
bicubic on real CelebA-HQ test faces."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CELEBA, SRDEPLOY
from PIL import Image

from srdeploy.quality.metrics import evaluate_pair
from srdeploy.evaluation.evaluate import SRModel, evaluate, find_test_images, load_model, to_uint8

LUMA_GAIN = 219.0 / 255.0  # BT.601: a change of d in R, G and B moves Y by d * 219/255


def _gradient(h: int, w: int, phase: float) -> np.ndarray:
    """A smooth colour gradient with a gentle ripple: texture bicubic cannot fully restore."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    r = 40 + 170 * xx
    g = 40 + 170 * yy
    b = 125 + 60 * np.sin(2 * np.pi * (2.5 * xx + 1.5 * yy) + phase)
    return np.round(np.stack([r, g, b], axis=2)).astype(np.uint8)


@pytest.fixture
def hr_dir(tmp_path) -> Path:
    """Three 32x32 gradients and one 34x30 image that must be cropped to 32x28."""
    d = tmp_path / "hr"
    d.mkdir()
    for i, (h, w) in enumerate([(32, 32), (32, 32), (32, 32), (30, 34)]):
        Image.fromarray(_gradient(h, w, phase=i)).save(d / f"img_{i}.png")
    return d


@pytest.fixture
def checkpoint(tmp_path, tiny_generator) -> Path:
    from srdeploy.training.checkpoint import save_checkpoint

    g = tiny_generator
    return save_checkpoint({"generator": g.state_dict(), "arch": g.arch(), "step": 7}, tmp_path / "tiny.pt")


def _cropped_hr(path: Path) -> Image.Image:
    hr = Image.open(path).convert("RGB")
    return hr.crop((0, 0, hr.width // 4 * 4, hr.height // 4 * 4))


def _bicubic_reference(hr_path: Path, border: int = 4) -> tuple[float, float]:
    """PSNR-Y and RGB PSNR of the bicubic baseline written out without srdeploy."""
    hr = _cropped_hr(hr_path)
    lr = hr.resize((hr.width // 4, hr.height // 4), Image.Resampling.BICUBIC)
    up = np.asarray(lr.resize(hr.size, Image.Resampling.BICUBIC), np.float64)
    ref = np.asarray(hr, np.float64)
    coef = np.array([65.481, 128.553, 24.966]) / 255.0
    dy = (up @ coef - ref @ coef)[border:-border, border:-border]
    drgb = (up - ref)[border:-border, border:-border]
    return 10 * math.log10(255**2 / np.mean(dy**2)), 10 * math.log10(255**2 / np.mean(drgb**2))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(SRDEPLOY), "evaluate", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_bicubic_row_matches_an_independent_computation(hr_dir):
    images = find_test_images(hr_dir)
    result = evaluate(images, [], figure_count=0)
    (row,) = result.table()
    refs = [_bicubic_reference(i.hr_path) for i in images]
    assert row["model"] == "bicubic"
    assert row["psnr_y"] == pytest.approx(np.mean([r[0] for r in refs]), abs=1e-9)
    assert row["psnr_rgb"] == pytest.approx(np.mean([r[1] for r in refs]), abs=1e-9)
    assert 15 < row["psnr_y"] < 60 and 0 < row["ssim_y"] < 1
    assert result.image_count == 4 and result.cropped == 1


def test_a_model_with_a_known_error_gets_the_derived_psnr(hr_dir):
    """An oracle that returns HR + 1 on every channel scores exactly
    20 log10(255 / (219/255)) PSNR-Y on every image, whatever the image."""
    images = find_test_images(hr_dir)
    hrs = iter([np.asarray(_cropped_hr(i.hr_path)) for i in images])  # evaluate visits images in order
    oracle = SRModel("oracle+1", "test", lambda lr: next(hrs) + np.uint8(1))  # no pixel is 255
    result = evaluate(images, [oracle], figure_count=0)
    bicubic, row = result.table()
    assert [bicubic["model"], row["model"]] == ["bicubic", "oracle+1"]
    assert row["psnr_y"] == pytest.approx(20 * math.log10(255 / LUMA_GAIN), abs=1e-9)
    assert row["psnr_rgb"] == pytest.approx(20 * math.log10(255), abs=1e-9)
    assert row["gain_psnr_y"] == pytest.approx(row["psnr_y"] - bicubic["psnr_y"], abs=1e-12)
    assert row["gain_psnr_y"] > 0 and row["ssim_y"] > bicubic["ssim_y"]


def test_checkpoint_model_runs_the_generator_on_the_whole_image(hr_dir, checkpoint, tiny_generator):
    import torch

    images = find_test_images(hr_dir)
    model = load_model(str(checkpoint), device="cpu")
    assert model.name == "tiny" and "step 7" in model.source
    result = evaluate(images, [model], figure_count=2)
    # The same numbers straight from the generator: [0, 1] in, (y + 1) / 2 out, rounded.
    hr = np.asarray(Image.open(images[0].hr_path).convert("RGB"))
    lr = np.asarray(Image.fromarray(hr).resize((8, 8), Image.Resampling.BICUBIC))
    with torch.no_grad():
        y = tiny_generator(torch.tensor(lr).permute(2, 0, 1)[None].float() / 255)
    sr = to_uint8(((y[0] + 1) / 2).permute(1, 2, 0).numpy())
    first = next(r for r in result.per_image if r["image"] == images[0].name and r["model"] == "tiny")
    assert first["psnr_y"] == pytest.approx(evaluate_pair(sr, hr)["psnr_y"], abs=1e-9)
    # An untrained generator is far from bicubic; the table must show that, not hide it.
    bicubic, tiny = result.table()
    assert tiny["gain_psnr_y"] < -3
    assert len(result.figure_rows) == 2 and [c for _, c in result.figure_rows[0]][-1] == "HR\nHF 1.00"


def test_a_grey_image_is_scored_on_its_own_values(tmp_path):
    """As Set14's bridge: a one-channel file, scored as the published tables score it."""
    d = tmp_path / "grey"
    d.mkdir()
    Image.fromarray(_gradient(32, 32, phase=0)[..., 2]).save(d / "bridge.png")  # mode L
    row = evaluate(find_test_images(d), [], figure_count=0).table()[0]
    hr = _cropped_hr(d / "bridge.png")
    up = np.asarray(hr.resize((8, 8), Image.Resampling.BICUBIC).resize((32, 32), Image.Resampling.BICUBIC), np.float64)[..., 0]
    mse = np.mean((up - np.asarray(hr, np.float64)[..., 0])[4:-4, 4:-4] ** 2)
    assert row["psnr_y"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_to_uint8_rounds_to_nearest_and_clips():
    x = np.array([-0.2, 0.0, 0.49 / 255, 0.51 / 255, 127.6 / 255, 1.0, 1.3], np.float32)
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255]  # truncation would give 0 and 127


def test_list_file_names_without_extension_and_limit(hr_dir, tmp_path):
    names = tmp_path / "test.txt"
    names.write_text("img_2\nimg_0.png\n\nimg_1\n")
    images = find_test_images(hr_dir, names, limit=2)
    assert [i.name for i in images] == ["img_2.png", "img_0.png"]
    names.write_text("img_0\nimg_9\n")
    with pytest.raises(FileNotFoundError, match="img_9"):
        find_test_images(hr_dir, names)


def test_precomputed_lr_dir_is_used_and_checked(hr_dir, tmp_path):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for p in sorted(hr_dir.glob("*.png")):  # a different degradation than ours: nearest
        hr = _cropped_hr(p)
        hr.resize((hr.width // 4, hr.height // 4), Image.Resampling.NEAREST).save(lr_dir / p.name)
    own = evaluate(find_test_images(hr_dir), [], figure_count=0).table()[0]
    given = evaluate(find_test_images(hr_dir, lr_dir=lr_dir), [], figure_count=0)
    assert given.table()[0]["psnr_y"] != pytest.approx(own["psnr_y"], abs=0.05)
    assert given.degradation == f"LR = precomputed x4 images from {lr_dir}"
    Image.new("RGB", (5, 5)).save(lr_dir / "img_1.png")
    with pytest.raises(ValueError, match=r"img_1\.png.*expected 8x8"):
        evaluate(find_test_images(hr_dir, lr_dir=lr_dir), [], figure_count=0)


def test_cli_writes_table_csvs_and_figure(hr_dir, checkpoint, tmp_path, tiny_generator):
    from srdeploy.training.checkpoint import save_checkpoint

    bare = save_checkpoint(tiny_generator.state_dict(), tmp_path / "bare_state.pt")
    out = tmp_path / "out"
    proc = _run_cli("--data", hr_dir, "--model", checkpoint, "--model", bare, "--name", "tiny", "--name", "bare",
                    "--figure-count", 2, "--device", "cpu", "-o", out)
    assert proc.returncode == 0, proc.stderr
    md = (out / "results.md").read_text()
    assert md in proc.stdout  # the table printed is the table written
    assert "4 images" in md and "PIL bicubic" in md and "4-px border" in md
    assert "| bicubic |" in md and "| tiny |" in md and "| bare |" in md and "HF ratio" in md
    rows = _read_csv(out / "results.csv")
    assert 0 < float(rows[0]["hf_ratio"]) < 1  # bicubic has less fine detail than HR
    assert [r["model"] for r in rows] == ["bicubic", "tiny", "bare"]
    # Same weights, same numbers; bicubic as computed without srdeploy.
    assert float(rows[1]["psnr_y"]) == pytest.approx(float(rows[2]["psnr_y"]), abs=1e-9)
    refs = [_bicubic_reference(p) for p in sorted(hr_dir.glob("*.png"))]
    assert float(rows[0]["psnr_y"]) == pytest.approx(np.mean([r[0] for r in refs]), abs=1e-6)
    assert len(_read_csv(out / "per_image.csv")) == 4 * 3
    with Image.open(out / "comparison.png") as fig:
        # 5 columns (LR, bicubic, tiny, bare, HR) x 2.4 in, 2 rows of (2.4 + 0.6) in + title, at 100 dpi
        assert fig.size == (1200, 650)


def test_an_image_name_that_is_not_utf8_is_kept_as_its_bytes_in_the_csv_and_shown_in_the_figure(hr_dir, checkpoint, tmp_path):
    import os

    odd = os.fsencode(hr_dir) + b"/odd\xff.png"
    os.rename(hr_dir / "img_0.png", odd)
    proc = _run_cli("--data", hr_dir, "--model", checkpoint, "--figure-count", 4, "--device", "cpu", "-o", tmp_path / "out")  # every image in the figure
    assert proc.returncode == 0, proc.stderr
    names = [line.split(b",")[0] for line in (tmp_path / "out" / "per_image.csv").read_bytes().splitlines()[1:]]
    assert b"odd\xff.png" in names and len(names) == 4 * 2
    assert (tmp_path / "out" / "comparison.png").is_file()


def test_cli_bilinear_and_border_options_are_applied_and_stated(hr_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "comparison.png").write_bytes(b"an earlier run's figure")
    proc = _run_cli("--data", hr_dir, "--downsample", "bilinear", "--border", 2, "--figure-count", 0, "-o", out)
    assert proc.returncode == 0, proc.stderr
    md = (out / "results.md").read_text()
    assert "PIL bilinear" in md and "2-px border" in md and "4-px" not in md
    assert not (out / "comparison.png").exists()  # an earlier figure would not show these results
    row = _read_csv(out / "results.csv")[0]
    same = evaluate(find_test_images(hr_dir), [], downsample="bilinear", border=2, figure_count=0).table()[0]
    bicubic = evaluate(find_test_images(hr_dir), [], downsample="bicubic", border=2, figure_count=0).table()[0]
    assert float(row["psnr_y"]) == pytest.approx(same["psnr_y"], abs=1e-9)
    assert float(row["psnr_y"]) != pytest.approx(bicubic["psnr_y"], abs=1e-3)


def test_cli_errors_name_the_problem(hr_dir, checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # Refused before any scoring (no images, a model that does not load): exit 2, as a usage error
    proc = _run_cli("--data", empty, "-o", tmp_path / "o1")
    assert proc.returncode == 2 and "no images" in proc.stderr and str(empty) in proc.stderr

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    proc = _run_cli("--data", hr_dir, "--model", broken, "-o", tmp_path / "o2")
    assert proc.returncode == 2 and str(broken) in proc.stderr
    assert not (tmp_path / "o2" / "results.md").exists()

    proc = _run_cli("--data", hr_dir, "-o", hr_dir / "results")  # its comparison.png would be scored as a face next time
    assert proc.returncode == 2 and f"-o {hr_dir / 'results'} is inside --data {hr_dir}: the next run would read" in proc.stderr
    assert not (hr_dir / "results").exists()

    # An engine option no model uses would be ignored quietly (bf16 asked of a .pt ran fp32)
    for args, message in ((("--model", checkpoint, "--precision", "bf16"), "--precision is for ONNX models and shipped names"),
                          (("--provider", "cpu",), "--provider is for ONNX models and shipped names, and no --model is given"),
                          (("--model", "default", "--device", "cpu"), "--device is for .pt checkpoints (PyTorch)")):
        proc = _run_cli("--data", hr_dir, *args, "-o", tmp_path / "o6")
        assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "o6").exists(), proc.stderr

    proc = _run_cli("--data", hr_dir, "--model", tmp_path / "missing.pt", "-o", tmp_path / "o3")
    assert proc.returncode == 2 and "model not found" in proc.stderr
    proc = _run_cli("--data", hr_dir, "--model", tmp_path, "-o", tmp_path / "o5")  # a run folder
    assert proc.returncode == 2 and f"{tmp_path} is a folder; give a model file in it, such as {tmp_path / 'last.pt'}" in proc.stderr

    proc = _run_cli("--data", hr_dir, "--model", broken, "--name", "a", "--name", "b", "-o", tmp_path / "o4")
    assert proc.returncode == 2 and "--name" in proc.stderr
    proc = _run_cli("--data", hr_dir, "--model", broken, "--model", broken, "-o", tmp_path / "o6")  # named before loading: not the load error
    assert proc.returncode == 2 and "model names must be unique" in proc.stderr
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))  # a run that wrote nothing leaves no folder

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    proc = _run_cli("--data", hr_dir, "-o", a_file / "results")  # refused before any scoring
    assert proc.returncode == 2 and f"-o {a_file / 'results'}: cannot create this folder (Not a directory)" in proc.stderr


def test_unreadable_and_tiny_images_are_left_out_and_all_named_in_one_run(hr_dir, tmp_path):
    """One bad file in a folder of hundreds must not cost the run, nor one rerun per file."""
    (hr_dir / "a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (hr_dir / "zz_empty.png").write_bytes(b"")
    Image.new("RGB", (3, 3)).save(hr_dir / "b_tiny.png")  # cropped to 0x0; 12x12 would still fail SSIM's window
    Image.new("RGB", (12, 14)).save(hr_dir / "c_small.png")
    result = evaluate(find_test_images(hr_dir), [], figure_count=2)
    assert result.image_count == 4 and len(result.figure_rows) == 2  # the readable four, the figure still full
    assert [r.split(": ")[0] for r in result.left_out] == [str(hr_dir / name) for name in ("a_corrupt.png", "b_tiny.png", "c_small.png", "zz_empty.png")]
    assert result.left_out[2].endswith("too small to score (12x12 after cropping to a multiple of 4; a border of 4 px and SSIM's window need 19 a side)")
    proc = _run_cli("--data", hr_dir, "--figure-count", 0, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "out" / "results.md").read_text()
    assert "4 images from" in md and "4 left out (listed below)" in md
    assert f"- {hr_dir / 'a_corrupt.png'}: corrupt PNG header (" in md and f"- {hr_dir / 'zz_empty.png'}: empty file (0 bytes)" in md

    for good in hr_dir.glob("img_*.png"):
        good.unlink()
    with pytest.raises(ValueError, match="none of the 4 images could be scored: .*a_corrupt.png"):
        evaluate(find_test_images(hr_dir), [], figure_count=0)


def test_sample_grid_and_loss_curves(tmp_path, rng):
    from srdeploy.training.figures import save_loss_curves, save_sample_grid

    rows = [[rng.random((16, 16, 3)), rng.random((16, 16, 3)), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)]] * 2
    with Image.open(save_sample_grid(rows, tmp_path / "grid.png", title="epoch 1")) as im:
        assert im.size[0] == 720  # 3 columns x 2.4 in at 100 dpi
    with pytest.raises(ValueError, match="expected \\(bicubic, sr, hr\\)"):
        save_sample_grid([rows[0][:2]], tmp_path / "bad.png")

    log = tmp_path / "metrics.jsonl"
    records = [{"split": "train", "step": s, "epoch": 0, "lr": 2e-4, "loss_g": 1.0 / s, "samples_per_s": 19.0}
               for s in range(1, 40)]
    records += [{"split": "val", "step": 39, "epoch": 1, "psnr_y": 31.2, "ssim_y": 0.87, "hf_ratio": 0.2, "mse": 0.01}]
    log.write_text("\n".join(json.dumps(r) for r in records) + '\n{"split": "tra')  # torn last line
    with Image.open(save_loss_curves(log, tmp_path / "curves.png")) as im:
        assert im.size == (1650, 400)  # three panels: loss, PSNR, and SSIM with the HF ratio
    log.write_text('{"step": 1, "loss_g": 1}\nnot json\n{"step": 2, "loss_g": 0.5}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        save_loss_curves(log, tmp_path / "curves2.png")


@pytest.mark.data
def test_bicubic_on_celeba_hq_test_faces():
    """The protocol's anchor: bicubic is about 30.8 dB PSNR-Y over the 100 test faces;
    the first 10 (test.txt order) measured 31.2 dB, so allow a wide band around both."""
    images = find_test_images(CELEBA / "test", CELEBA / "test.txt", limit=10)
    (row,) = evaluate(images, [], figure_count=0).table()
    assert 29.5 < row["psnr_y"] < 32.5
    assert 0.80 < row["ssim_y"] < 0.92
    assert row["psnr_rgb"] < row["psnr_y"]  # chroma errors add to RGB, not to Y


def test_default_row_names_disambiguate_colliding_stems():
    from srdeploy.evaluation.evaluate import default_model_names

    specs = ["runs/a/best.pt", "runs/b/best.pt", "srgan", "x/model.onnx"]
    assert default_model_names(specs) == ["a/best", "b/best", "srgan", "model"]


def test_command_module_imports_neither_torch_nor_matplotlib():
    code = "import sys, srdeploy.evaluation.cli; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_exported_onnx_through_the_upscaler_matches_the_checkpoint(hr_dir, checkpoint, tiny_generator, tmp_path):
    """The same weights through PyTorch and through export + srdeploy.runtime.upscaler give the same
    table (to rounding: the graph folds BatchNorm, so a few pixels may round the other way)."""
    from srdeploy.export.onnx_export import export_onnx

    onnx_path = export_onnx(tiny_generator, tmp_path / "tiny.onnx")
    runtime = load_model(str(onnx_path), name="onnx", device="cpu")
    assert "srdeploy.runtime.upscaler" in runtime.source
    _, torch_row, onnx_row = evaluate(find_test_images(hr_dir), [load_model(str(checkpoint)), runtime], figure_count=0).table()
    for metric in ("psnr_y", "psnr_rgb"):
        assert onnx_row[metric] == pytest.approx(torch_row[metric], abs=0.01)
    assert onnx_row["ssim_y"] == pytest.approx(torch_row["ssim_y"], abs=1e-3)
