"""Every CPU engine, precision and graph rewrite for the generator, timed back to back on
the same input in one run (not a test): the measurements behind srdeploy.runtime.engines'
choice per CPU and cpu_graph.OPENVINO_REWRITES.

    python benchmarks/engine_variants.py [--model default] [--int8 DIR/model.int8.onnx ...] [--side 64] [--rounds 7]

Rows: ONNX Runtime fp32 as `srdeploy upscale --provider cpu` opens it (the baseline);
OpenVINO with its own defaults on the plain file (what a user who compiles model.onnx
gets); OpenVINO fp32, and bf16 where the CPU has bf16 units, on the plain file and on each
rewrite set of srdeploy.runtime.cpu_graph; each --int8 model on ONNX Runtime and OpenVINO.
Rounds interleave the rows (rotating their order) and each row's time in a round is divided
by the baseline's in that round; the median of those paired ratios is reported, which is
far steadier than two medians on a machine shared with other jobs. Every row's output is
compared with the baseline's (max |diff| and PSNR on the [0, 1] output).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _report import finish, print_rows

REWRITE_SETS = {
    "plain": (),
    "tail": ("tail",),
    "prelu": ("prelu",),
    "tail+prelu (ORT's)": ("tail", "prelu"),
    "tail+prelu+upsampler prelu": ("tail", "prelu", "upsampler_prelu"),
}


def face_input(side: int) -> np.ndarray:
    """The public-domain astronaut face in examples/, degraded to side x side: (1, 3, side, side)."""
    from PIL import Image

    from srdeploy.quality.degrade import downscale

    face = Image.open(Path(__file__).resolve().parents[1] / "examples" / "astronaut_face.png").convert("RGB")
    lr = downscale(face.resize((side * 4, side * 4), Image.Resampling.BICUBIC), 4)
    return np.ascontiguousarray((np.asarray(lr, np.float32) / 255).transpose(2, 0, 1)[None])


def rows(model: Path, int8_models: list[Path], threads: int, x: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    import onnx
    import openvino as ov

    from srdeploy.runtime import cpu_graph, openvino_engine, providers

    out: dict[str, Callable[[], np.ndarray]] = {}
    session = providers.open_session(model, "cpu", threads, None)
    out["ORT fp32 (srdeploy's cpu session)"] = lambda: session.run(None, {"lr": x})[0]
    defaults = ov.Core().compile_model(str(model), "CPU")  # no config at all: OpenVINO's own choice
    out["OpenVINO defaults, plain file"] = lambda: defaults(x)[0]
    exported = onnx.load(str(model))
    precisions = ["fp32"] + (["bf16"] if openvino_engine.native_bf16() else [])
    for name, rewrites in REWRITE_SETS.items():
        graph = cpu_graph.rewrite_for_cpu(exported, rewrites)[0].SerializeToString() if rewrites else str(model)
        for precision in precisions:
            runner = openvino_engine.OpenVinoRunner(graph, precision, threads)
            out[f"OpenVINO {precision}, {name}"] = lambda r=runner: r(x)
    for path in int8_models:
        # Each export names its file model.int8.onnx: the folder tells two of them apart.
        shown = f"{path.parent.name}/{path.name}" if len(int8_models) > 1 else path.name
        quantized = providers.open_session(path, "cpu", threads, None)
        out[f"ORT int8, {shown}"] = lambda s=quantized: s.run(None, {"lr": x})[0]
        runner = openvino_engine.OpenVinoRunner(path, "int8", threads, "bf16" in precisions)  # as the Upscaler opens it
        out[f"OpenVINO int8, {shown}"] = lambda r=runner: r(x)
    return out


def main() -> None:
    from srdeploy.runtime.cpus import available_cpus, cpu_info
    from srdeploy.runtime.zoo import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--int8", type=Path, nargs="*", default=[], help="int8 (QDQ) models of the same generator")
    parser.add_argument("--side", type=int, default=64, help="LR input side")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per row per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime
    import openvino

    model = resolve_model(args.model).path
    x = face_input(args.side)
    results: dict = {"machine": {"cpu": cpu_info().describe(), "threads": args.threads, "load_avg_before": os.getloadavg(),
                                 "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__},
                     "input": f"1x3x{args.side}x{args.side} (examples/astronaut_face.png)", "rounds": args.rounds}
    print(f"{results['machine']['cpu']}; {args.threads} threads; input {results['input']}", flush=True)
    runs = rows(model, args.int8, args.threads, x)
    baseline = next(iter(runs))
    reference = runs[baseline]()
    accuracy, first_call = {}, {}
    for name, run in runs.items():
        start = time.perf_counter()
        run()  # warm-up: OpenVINO compiles for this input shape here, thread pools start
        first_call[name] = time.perf_counter() - start
        diff = run() - reference
        accuracy[name] = (float(np.abs(diff).max()), float(10 * np.log10(1.0 / max(np.mean(diff**2), 1e-20))))
    rates: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        this_round = {}
        for name in order:
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                runs[name]()
                count += 1
            this_round[name] = count / (time.perf_counter() - start)
        for name, rate in this_round.items():
            rates[name].append(rate)
            ratios[name].append(rate / this_round[baseline])
    table = [{"row": name, "images_per_s": round(statistics.median(rates[name]), 2), "vs_baseline": round(statistics.median(ratios[name]), 2),
              "max_abs_diff": f"{accuracy[name][0]:.1e}", "psnr_db_vs_baseline": round(accuracy[name][1], 1),
              # the first call of a row compiles (OpenVINO) or plans (ORT) for the shape
              "first_call_s": round(first_call[name], 3), "steady_call_s": round(1 / statistics.median(rates[name]), 3)} for name in names]
    results["rows"] = table
    print_rows("engines, precisions and rewrites (median of per-round ratios to the first row)", table)
    finish(results, args.json)


if __name__ == "__main__":
    main()
