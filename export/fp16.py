"""fp32 ONNX -> fp16 ONNX with float32 inputs and outputs (onnxconverter-common).

Weights and compute become float16; ``keep_io_types=True`` puts a Cast at the input and
at the output, so ``lr``/``sr`` stay float32 [0, 1] and callers do not change. The clamp
to [0, 1] runs in fp16 before the output Cast, so the [0, 1] range still holds exactly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx

from srdeploy.io.files import atomic_write_bytes
from srdeploy.runtime import contract


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write an fp16-compute copy of the fp32 contract model ``src`` to ``dst`` (atomically).

    The result passes ``onnx.checker.check_model(full_check=True)`` and the I/O contract
    check. Weights beyond fp16's range are clipped by the converter to +-1e4 (warned
    here) and magnitudes below 1e-7 are raised to 1e-7 (silently; harmless).
    """
    from onnxconverter_common import float16

    src, dst = Path(src), Path(dst)
    contract.validate_onnx_model(src)
    model = onnx.load(str(src))
    with warnings.catch_warnings(record=True) as caught:
        # The converter warns once per clipped weight tensor. Clipping tiny magnitudes to
        # 1e-7 is harmless; clipping large ones to +-1e4 is not, so only that is reported.
        warnings.simplefilter("always")
        model16 = float16.convert_float_to_float16(model, keep_io_types=True)
    large = [msg for w in caught if "truncated to" in (msg := str(w.message)) and "10000" in msg]
    if large:
        warnings.warn(f"{dst.name}: {len(large)} weight tensors exceed the fp16 range and were clipped ({large[0]})", stacklevel=2)
    props = {p.key: p.value for p in model16.metadata_props}
    props[contract.META_PRECISION] = "fp16"
    del model16.metadata_props[:]
    onnx.helper.set_model_props(model16, props)
    onnx.checker.check_model(model16, full_check=True)
    contract.check_onnx_io(model16, dst.name)
    atomic_write_bytes(dst, model16.SerializeToString())
    return dst
