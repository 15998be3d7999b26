"""A toy x4 super-resolution model written directly as ONNX, for runtime tests that need a
real ONNX Runtime session but not the 15-30 s torch export of a generator.

Same contract and op types as the exported generator (Conv, PRelu, DepthToSpace, Tanh,
rescale, Clip): ``lr`` float32 (N, 3, H, W) in [0, 1] -> ``sr`` (N, 3, 4H, 4W) in [0, 1].
Receptive radius: 1 + 1 + 1/2 + 1/4 = 2.75 LR pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOY_RADIUS = 2.75


def build_toy_sr(path: Path, channels: int = 8, seed: int = 0, overshoot: bool = False, broken: bool = False) -> Path:
    """``overshoot``: end with 1.5 x - 0.25 instead of the Clip, so the output leaves [0, 1]
    (-0.25 to 1.25) as a model outside srdeploy's contract may: what the runtime's own
    clamp is for. ``broken``: end with sqrt(x - 2), NaN everywhere, as a broken model's
    output may be."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    c = channels
    inits = [
        weight("w_head", c, 3, 3, 3), weight("b_head", c), numpy_helper.from_array(np.full((c, 1, 1), 0.2, np.float32), "slope"),
        weight("w_up1", 4 * c, c, 3, 3), weight("w_up2", 4 * c, c, 3, 3), weight("w_tail", 3, c, 3, 3),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"), numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
    ]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["lr", "w_head", "b_head"], ["h0"], **conv),
        helper.make_node("PRelu", ["h0", "slope"], ["h1"]),
        helper.make_node("Conv", ["h1", "w_up1"], ["h2"], **conv),
        helper.make_node("DepthToSpace", ["h2"], ["h3"], blocksize=2, mode="CRD"),
        helper.make_node("Conv", ["h3", "w_up2"], ["h4"], **conv),
        helper.make_node("DepthToSpace", ["h4"], ["h5"], blocksize=2, mode="CRD"),
        helper.make_node("Conv", ["h5", "w_tail"], ["h6"], **conv),
        helper.make_node("Tanh", ["h6"], ["h7"]),
        helper.make_node("Add", ["h7", "one"], ["h8"]),
        helper.make_node("Mul", ["h8", "half"], ["h9"]),
        helper.make_node("Clip", ["h9", "lo", "hi"], ["sr"]),
    ]
    if overshoot:
        inits += [numpy_helper.from_array(np.array(1.5, np.float32), "gain"), numpy_helper.from_array(np.array(0.25, np.float32), "offset")]
        nodes[-1:] = [helper.make_node("Mul", ["h9", "gain"], ["h10"]), helper.make_node("Sub", ["h10", "offset"], ["sr"])]
    if broken:
        inits += [numpy_helper.from_array(np.array(2.0, np.float32), "two")]
        nodes[-1:] = [helper.make_node("Sub", ["h9", "two"], ["h10"]), helper.make_node("Sqrt", ["h10"], ["sr"])]
    graph = helper.make_graph(
        nodes,
        "toy_sr",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["batch", 3, "4*height", "4*width"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    helper.set_model_props(model, {"srdeploy.scale": "4", "srdeploy.precision": "fp32"})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path
