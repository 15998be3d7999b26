"""NNCF post-training quantisation of model.onnx, the alternative to `srdeploy export --int8`
(not a test; needs `pip install nncf`).

    python benchmarks/nncf_int8.py --model default --calibration ../shared/data/celeba_hq_256/val -o out/nncf

Writes, from the same 300 calibration faces the export uses (export.calibration):

- ``model.nncf-plain.onnx``: ``nncf.quantize`` with preset PERFORMANCE (symmetric
  activations), OpenVINO's own recipe;
- ``model.nncf-mixed7.onnx``: preset MIXED (asymmetric activations) with
  ``OverflowFix.ENABLE`` (7-bit weights, as the export's), the variant that matched the
  export's quality;
- ``model.nncf-mixed7-ends.onnx``: the same with the first and last convolutions kept in
  fp32;
- ``model.nncf-perf-tail-ends.onnx``: preset PERFORMANCE on the graph with
  srdeploy.runtime.cpu_graph's tail rewrite (the tail convolution before the last pixel
  shuffle, which OpenVINO needs), the first and last convolutions kept in fp32;
- ``model.nncf-tail-ends.onnx``: preset MIXED with OverflowFix on that tail-rewritten graph,
  the first and last convolutions kept in fp32.

The recipe that won (PERFORMANCE, tail-rewritten graph, only the head kept in float) is
``srdeploy export --int8 --int8-engine openvino`` (srdeploy.export.int8). Compare the
variants with the export's ``model.int8.onnx`` on quality (`srdeploy evaluate --model
... --provider openvino|cpu`) and speed (`benchmarks/engine_variants.py --int8 ...`); the
decision and its figures are in docs/results.md ("INT8: which file, which engine").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default | srresnet | srgan | PATH.onnx (fp32)")
    parser.add_argument("--calibration", type=Path, required=True, help="folder of HR images, as srdeploy export --calibration")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--redo", action="store_true", help="quantise again the files already in --out")
    args = parser.parse_args()

    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    from srdeploy.export.calibration import load_calibration
    from srdeploy.runtime import contract, cpu_graph
    from srdeploy.runtime.zoo import resolve_model

    model = onnx.load(str(resolve_model(args.model).path))
    tail_first = cpu_graph.rewrite_for_cpu(model, ("tail",))[0]

    def ends(graph) -> list[str]:
        convs = [node.name for node in graph.graph.node if node.op_type == "Conv"]
        return [convs[0], convs[-1]]

    calibration = load_calibration(args.calibration, args.limit)
    dataset = nncf.Dataset([{contract.INPUT_NAME: lr[None]} for lr in calibration.lr])
    variants = {
        "model.nncf-plain.onnx": dict(preset=nncf.QuantizationPreset.PERFORMANCE),
        "model.nncf-mixed7.onnx": dict(preset=nncf.QuantizationPreset.MIXED,
                                       advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)),
        # The 9x9 head on raw pixels and the 9x9 tail that makes them kept in float.
        "model.nncf-mixed7-ends.onnx": dict(preset=nncf.QuantizationPreset.MIXED, ignored_scope=nncf.IgnoredScope(names=ends(model)),
                                            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)),
        # OpenVINO's own preset (symmetric activations, which its CPU plugin runs as int8) with
        # the ends kept and the tail rewrite.
        "model.nncf-perf-tail-ends.onnx": dict(graph=tail_first, preset=nncf.QuantizationPreset.PERFORMANCE, ignored_scope=nncf.IgnoredScope(names=ends(tail_first))),
        # MIXED with the ends kept, on the graph OpenVINO runs (the tail conv before the last pixel shuffle).
        "model.nncf-tail-ends.onnx": dict(graph=tail_first, preset=nncf.QuantizationPreset.MIXED, ignored_scope=nncf.IgnoredScope(names=ends(tail_first)),
                                          advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, options in variants.items():
        if (args.out / name).exists() and not args.redo:
            continue
        start = time.perf_counter()
        graph = options.pop("graph", model)
        quantized = nncf.quantize(graph, dataset, subset_size=len(calibration.lr), **options)
        onnx.save(quantized, str(args.out / name))
        print(f"{args.out / name}: {time.perf_counter() - start:.0f} s on {len(calibration.lr)} faces of {args.calibration}", flush=True)


if __name__ == "__main__":
    main()
