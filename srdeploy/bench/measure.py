"""Measurements behind ``srdeploy bench``: the same inputs through PyTorch eager, every CPU
engine and precision srdeploy runs (ONNX Runtime and OpenVINO; fp32, bf16, int8), OpenVINO
with its own defaults on the plain file, and the whole ``srdeploy upscale`` pipeline.

Every engine row runs each image through ``tiling.upscale_tiled`` with the same tile and
overlap, so the rows do identical work and differ only in what runs a window: the
PyTorch generator (channels_last, ``torch.inference_mode``), or the session ``srdeploy
upscale --provider P --precision Q`` opens (``Upscaler``). The int8 rows run their file as
``srdeploy upscale`` would, with the overlap read off its own graph. The pipeline row runs
``srdeploy.batch.run.run_batch`` in this process on the same inputs saved as PNG files,
with the engine ``auto`` picks: decode, tiles, inference, PNG encode, fsync and atomic
write, journal; process start-up and session creation are not in it.

Timing: each row first runs one image of each set untimed (thread pools, allocator
arenas, the window shapes). Then ``repeats`` rounds; in each round every row makes one
timed pass over the whole set, rows interleaved so that other load on a shared machine
falls on all of them alike. A row's figure is its median pass.
"""

from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from srdeploy import SCALE
from srdeploy.io.folders import list_images
from srdeploy.io.image_guard import DEFAULT_MAX_PIXELS, ImageError
from srdeploy.io.imaging import read_rgb
from srdeploy.quality import degrade
from srdeploy.runtime import cpu_graph, tiling
from srdeploy.runtime.contract import validate_onnx_model
from srdeploy.runtime.engines import ProviderError
from srdeploy.runtime.upscaler import Upscaler
from srdeploy.runtime.zoo import GENERATOR_FILE, INT8_FILE, ModelError, ModelRef



@dataclass
class InputSet:
    """One group of inputs: float32 (H, W, 3) arrays in [0, 1] for the engine rows and the
    same pixels as PNG files for the pipeline row."""

    name: str  # e.g. "100 x 64x64"
    arrays: list[np.ndarray]
    files: list[Path]
    left_out: tuple[str, ...] = ()  # "path: reason" of the data's images that could not be read

    @property
    def lr_pixels(self) -> int:
        return sum(a.shape[0] * a.shape[1] for a in self.arrays)


def make_input_sets(data: Path, workdir: Path, limit: int | None = None, large: int = 3, large_side: int = 512) -> list[InputSet]:
    """The HR images under ``data`` (the first ``limit``) downscaled x4 (bicubic with
    antialias, the quality protocol's LR), and ``large`` of them resized (bicubic) to
    ``large_side`` a side as large inputs. PNG copies go under ``workdir``. An image that
    cannot be read is left out (the faces' set names it in ``left_out``) and the next one
    taken; ValueError when none can be."""
    hr_paths, faces, left_out = [], [], []
    for path in list_images(data):
        if limit is not None and len(faces) == limit:
            break
        try:
            hr = read_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
            faces.append(degrade.downscale(degrade.crop_to_multiple(hr, SCALE), SCALE))
        except (ImageError, OSError) as e:  # one bad file in a folder of faces costs that file, not the run
            left_out.append(str(e) if isinstance(e, ImageError) else f"{path}: cannot read ({e.strerror or e})")
            continue
        hr_paths.append(path)
    if not faces:
        raise ValueError(f"{data}: no readable image" + (f" ({'; '.join(left_out[:3])})" if left_out else ""))
    sets = [replace(_input_set(_set_name(faces), faces, workdir / "lr"), left_out=tuple(left_out))]
    if large > 0:
        big = []
        for i in range(large):
            hr = read_rgb(hr_paths[i % len(hr_paths)], max_pixels=DEFAULT_MAX_PIXELS)
            big.append(hr.resize((large_side, large_side), Image.Resampling.BICUBIC))
        sets.append(_input_set(_set_name(big), big, workdir / "large"))
    return sets


def _set_name(images: list[Image.Image]) -> str:
    sizes = {im.size for im in images}
    size = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else "mixed sizes"
    return f"{len(images)} x {size}"


def _input_set(name: str, images: list[Image.Image], folder: Path) -> InputSet:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, im in enumerate(images):
        files.append(folder / f"{i:04d}.png")
        im.save(files[-1])
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]  # (H, W, 3) in [0, 1]
    return InputSet(name, arrays, files)


@dataclass
class Row:
    """One way of upscaling a set; ``run_pass`` upscales every input of a set (or only the
    first) once and returns the first output, for the accuracy column (None: no array)."""

    key: str  # torch | ort_fp32 | openvino_defaults | openvino_fp32 | openvino_bf16 | ort_int8 | openvino_int8 | pipeline (JSON)
    label: str  # table
    precision: str  # fp32 | bf16 | int8: whose measured ceiling the row is compared with
    run_pass: Callable[[InputSet, bool], np.ndarray | None]  # (set, first image only)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # set name -> timed passes
    first_output: dict[str, np.ndarray] = field(default_factory=dict)


def engine_row(key: str, label: str, precision: str, upscale: Callable[[np.ndarray], np.ndarray]) -> Row:
    """A row from a function float32 (H, W, 3) in [0, 1] -> (4H, 4W, 3), one image a call."""

    def run_pass(inputs: InputSet, first_only: bool) -> np.ndarray:
        first = upscale(inputs.arrays[0])  # kept for the max|diff| column; the rest are dropped
        for lr in inputs.arrays[1 : 1 if first_only else None]:
            upscale(lr)
        return first

    return Row(key, label, precision, run_pass)


def _int8_engine(path: Path) -> str | None:
    """The engine an int8 file was quantised for (srdeploy.runtime.contract); None when
    the file cannot be read (its rows say why)."""
    try:
        return validate_onnx_model(path)["int8_engine"]
    except (OSError, ValueError):
        return None


def build_rows(model: ModelRef, threads: int, tile: int | None, int8_paths: tuple[Path, ...], workdir: Path) -> tuple[list[Row], list[str], Upscaler]:
    """Every engine x precision this machine can run for ``model`` (an fp32 ONNX model),
    each through the same tiling; notes on rows left out and why; and the Upscaler that
    ``srdeploy upscale`` would open (provider and precision auto), which the pipeline row
    runs. The PyTorch row needs generator.pt beside model.onnx and torch; the int8 rows
    int8 models (``int8_paths``, else model.int8.onnx beside model.onnx), each on ONNX
    Runtime and OpenVINO."""
    rows, notes = [], []
    auto = Upscaler(model, provider="auto", tile=tile, threads=threads)
    generator = model.path.parent / GENERATOR_FILE
    if not generator.is_file():
        notes.append(f"PyTorch row absent: no {GENERATOR_FILE} beside {model.path}")
    else:
        try:
            run = torch_runner(generator, threads)
        except ImportError as e:
            notes.append(f"PyTorch row absent: {e} (pip install 'srdeploy[train]')")
        else:
            tiled = lambda lr: tiling.upscale_tiled(run, lr, auto.scale, auto.tile, auto.overlap)  # noqa: E731
            rows.append(engine_row("torch", "PyTorch eager fp32", "fp32", tiled))
    wanted = [("ort_fp32", "ORT fp32", "cpu", "fp32", model), ("openvino_fp32", "OpenVINO fp32", "openvino", "fp32", model),
              ("openvino_bf16", "OpenVINO bf16", "openvino", "bf16", model)]
    int8_files = list(int8_paths) or [model.path.parent / INT8_FILE]
    if not int8_paths and not int8_files[0].is_file():
        notes.append(f"int8 rows absent: no --int8 given and no {INT8_FILE} beside {model.path}")
    else:
        for n, int8 in enumerate(int8_files):  # each file on both engines; more than one: keys and labels say which
            key, label = ("", "") if len(int8_files) == 1 else (f"_{n + 1}", f" ({int8.parent.name}/{int8.name})")
            wanted += [(f"ort_int8{key}", f"ORT int8{label}", "cpu", "int8", int8), (f"openvino_int8{key}", f"OpenVINO int8{label}", "openvino", "int8", int8)]
            engine = _int8_engine(int8)
            if engine is not None:  # the other engine's row is for comparison: upscale warns it may pass int8's 0.2 dB bound
                made_for, other = (("ORT", "OpenVINO") if engine == "cpu" else ("OpenVINO", "ORT"))
                notes.append(f"{int8.parent.name}/{int8.name} was quantised for {made_for}: its {other} int8 row is a comparison, "
                             f"not what `srdeploy upscale` runs it on")
    for key, label, provider, precision, source in wanted:
        try:
            upscaler = Upscaler(source, provider=provider, precision=precision, tile=auto.tile, threads=threads)
        except (ModelError, ProviderError, ValueError) as e:
            notes.append(f"{label} row absent: {str(e).split('; ')[0]}")  # the reason, without advice on upscale's options
            continue
        if upscaler.overlap != auto.overlap and auto.tile:
            notes.append(f"{label} runs as `srdeploy upscale` would: its tiles overlap by {upscaler.overlap} px (fp32: {auto.overlap})")
        rows.append(engine_row(key, label, precision, upscaler.upscale_array))
        if key == "openvino_fp32":  # OpenVINO is installed: its defaults too, for comparison
            rows.append(openvino_defaults_row(model.path, auto))
    present = {row.key for row in rows}
    rewrites = _rewrites_described(model.path, {key.removeprefix("openvino_") for key in present if key.startswith("openvino_")})
    notes.append(f"ORT fp32 and OpenVINO run the graph as srdeploy.runtime.cpu_graph rewrites it for each: {rewrites}")
    if "openvino_defaults" in present:
        notes.append("OpenVINO defaults: the plain model.onnx compiled with no settings at all (what a user who compiles it gets), "
                     + ("through the same tiles" if auto.tile else "untiled, as the other rows"))
    if any(key.startswith(("ort_int8", "openvino_int8")) for key in present):
        notes.append("int8 rows: GFLOP/s counts the fp32 graph's multiply-adds; % ceil is of the int8 ceiling")
    rows.append(pipeline_row(auto, workdir))
    notes.append(f"upscale pipeline: srdeploy.batch.run.run_batch in this process on what `srdeploy upscale` picks here "
                 f"({auto.provider} {auto.precision}): decode PNG, tiles, inference, encode PNG, fsync, write, journal; "
                 "no process start-up or session creation")
    return rows, notes, auto


def openvino_defaults_row(path: Path, auto: Upscaler) -> Row:
    """OpenVINO's own defaults on the plain file: compile_model(path, "CPU"), nothing set."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    request = compiled.create_infer_request()
    run = lambda batch: request.infer({0: batch})[0].copy()  # noqa: E731
    # What the plugin chose for itself: bf16 on CPUs with bf16 units, f32 elsewhere.
    precision = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"
    tiled = lambda lr: tiling.upscale_tiled(run, lr, auto.scale, auto.tile, auto.overlap)  # noqa: E731
    return engine_row("openvino_defaults", f"OpenVINO defaults {precision}", precision, tiled)


def _rewrites_described(path: Path, openvino_precisions: set[str]) -> str:
    """The rewrites of each engine and precision that has a row here."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    parts = [f"ORT: {'; '.join(cpu_graph.rewrite_for_cpu(model)[1]) or 'nothing'}"]
    for precision, rewrites in cpu_graph.OPENVINO_REWRITES.items():
        if precision not in openvino_precisions:
            continue
        parts.append(f"OpenVINO {precision}: {'; '.join(cpu_graph.rewrite_for_cpu(model, rewrites)[1]) or 'nothing'}")
    return " | ".join(parts)


def torch_runner(generator_path: Path, threads: int) -> tiling.Runner:
    """The PyTorch reference as a tile runner: the generator from ``generator_path`` in
    channels_last with ``threads`` intra-op threads, followed by the contract's [-1, 1] ->
    [0, 1] rescale and clamp that the ONNX graph holds. Raises ImportError without torch."""
    import torch

    from srdeploy.training.checkpoint import load_generator

    torch.set_num_threads(threads)
    generator, _ = load_generator(generator_path)
    generator = generator.to(memory_format=torch.channels_last).eval()

    def run(batch: np.ndarray) -> np.ndarray:  # float32 (1, 3, h, w) -> (1, 3, 4h, 4w)
        with torch.inference_mode():
            lr = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            sr = generator(lr)  # [-1, 1]
            return ((sr + 1.0) * 0.5).clamp_(0.0, 1.0).numpy()

    return run


def pipeline_row(upscaler: Upscaler, workdir: Path) -> Row:
    """``srdeploy upscale``'s batch path (PNG out) on ``upscaler``, into a fresh folder each pass."""
    from srdeploy.batch.jobs import Settings
    from srdeploy.batch.run import run_batch

    passes = itertools.count()

    def run_pass(inputs: InputSet, first_only: bool) -> None:
        out = workdir / f"out-{next(passes)}"
        files = inputs.files[:1] if first_only else inputs.files
        summary = run_batch(upscaler, files, out, Settings(format="png"))
        failed = [f"{r.input}: {r.reason}" for r in summary.results if r.status != "ok"]
        shutil.rmtree(out, ignore_errors=True)
        if failed:
            raise RuntimeError(f"the upscale pipeline did not finish every input: {failed[:3]}")
        return None

    return Row("pipeline", f"upscale pipeline ({upscaler.provider} {upscaler.precision})", upscaler.precision, run_pass)


def measure(rows: list[Row], sets: list[InputSet], repeats: int, progress: Callable[[str], None] = lambda _: None) -> None:
    """Warm up, then time ``repeats`` interleaved passes of every row over every set
    (see the module docstring); fills ``row.seconds`` and ``row.first_output``."""
    for inputs in sets:
        for row in rows:
            progress(f"warm-up: {row.label}, {inputs.name}")
            output = row.run_pass(inputs, True)
            if output is not None:
                row.first_output[inputs.name] = output
        for round_ in range(repeats):
            for row in rows:
                progress(f"round {round_ + 1}/{repeats}: {row.label}, {inputs.name}")
                start = time.perf_counter()
                row.run_pass(inputs, False)
                row.seconds.setdefault(inputs.name, []).append(time.perf_counter() - start)
