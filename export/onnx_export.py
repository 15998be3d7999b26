"""Generator -> ONNX file that meets the exported-model contract (srdeploy.runtime.contract).

The graph takes ``lr`` float32 NCHW RGB in [0, 1] and returns ``sr`` float32 NCHW in
[0, 1]: the generator's tanh output in [-1, 1] is rescaled and clamped inside the graph,
so every runtime shares one post-processing. Batch, height and width are dynamic.

Exporter choice: torch's dynamo exporter (``dynamo=True``, onnxscript). On this model it
folds every BatchNorm into the preceding Conv and leaves no Identity/Constant clutter
(the TorchScript exporter does), and it writes IR version 10 at opset 18, which
onnxruntime(-gpu) >= 1.18 and TensorRT 10 read. Opset 18 is the exporter's native opset;
other opsets go through onnx's version converter.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch
from torch import nn

from srdeploy.io.files import atomic_write_bytes
from srdeploy.runtime import contract
from srdeploy.training.models import Generator

# An example shape for tracing. Batch 2, not 1: torch.export specialises dimensions whose
# example size is 0 or 1 and would then refuse to make the batch dynamic. H != W so that
# no equality between them gets baked in.
_TRACE_SHAPE = (2, 3, 24, 32)


class ContractGenerator(nn.Module):
    """Generator wrapped to the contract: [0, 1] in, [0, 1] out (clamped)."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        sr = self.generator(lr)  # (N, 3, sH, sW) in [-1, 1]
        return ((sr + 1.0) * 0.5).clamp(0.0, 1.0)  # (N, 3, sH, sW) in [0, 1]


def export_onnx(generator: Generator, path: str | os.PathLike, opset: int | None = None) -> Path:
    """Export ``generator`` (run in eval mode) to ``path`` as one self-contained ONNX file.

    Checks before the file appears (atomically) at ``path``: no BatchNormalization node
    remains, the I/O matches the contract, the IR version is one the runtimes read,
    and ``onnx.checker.check_model(full_check=True)`` passes.
    """
    path = Path(path)
    opset = contract.DEFAULT_OPSET if opset is None else int(opset)
    model = _export_proto(generator, opset)
    _check_proto(model, path, opset)
    atomic_write_bytes(path, model.SerializeToString())  # weights inline: no external data
    return path


def _export_proto(generator: Generator, opset: int) -> onnx.ModelProto:
    was_training = generator.training
    generator.eval()
    try:
        wrapped = ContractGenerator(generator).eval()
        example = torch.rand(*_TRACE_SHAPE)
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        with torch.no_grad():
            program = torch.onnx.export(
                wrapped,
                (example,),
                None,
                input_names=[contract.INPUT_NAME],
                output_names=[contract.OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"lr": dims},
                optimize=True,
                verbose=False,
            )
        model = program.model_proto
    finally:
        generator.train(was_training)
    _strip_trace_metadata(model)
    scale = int(generator.scale)
    onnx.helper.set_model_props(
        model,
        {
            contract.META_SCALE: str(scale),
            contract.META_PRECISION: "fp32",
            contract.META_CONTRACT: contract.CONTRACT_TEXT,
        },
    )
    model.doc_string = f"SRGAN generator {generator.arch()} (srdeploy contract: {contract.CONTRACT_TEXT})"
    return model


def _strip_trace_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with local paths,
    FX node text): it triples nothing useful for inference, leaks the build machine's
    paths and makes the file's bytes (and so its sha256) depend on where it was built."""
    graph = model.graph
    for item in [*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        del item.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""


def _check_proto(model: onnx.ModelProto, path: Path, opset: int) -> None:
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter falls back to its own opset when the version converter fails
        raise ValueError(f"{path.name}: opset {opset} was asked for and the exporter wrote opset {written}; "
                         f"the installed onnx {onnx.__version__} converts up to opset {onnx.defs.onnx_opset_version()}")
    leftover = sorted({n.op_type for n in model.graph.node if n.op_type == "BatchNormalization"})
    if leftover:
        raise RuntimeError(f"{path.name}: BatchNorm was not folded into the convolutions ({leftover})")
    if model.ir_version > contract.MAX_IR_VERSION:
        raise RuntimeError(
            f"{path.name}: exporter wrote IR version {model.ir_version}; the runtimes read "
            f"<= {contract.MAX_IR_VERSION}. Pick a lower --opset."
        )
    onnx.checker.check_model(model, full_check=True)
    contract.check_onnx_io(model, path.name)
