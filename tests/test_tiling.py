"""Tiling: the plan's invariants, tiled == untiled on real exported generators (B=1 and
B=8), and the overlap the runtime uses against the network's measured receptive field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from srdeploy.runtime.graph import analyze
from srdeploy.runtime.tiling import axis_spans, axis_window_pixels, plan_tiles, srresnet_receptive_radius, upscale_tiled


def receptive_radius(graph):
    """The walk's radius, None when it cannot read the graph."""
    reach = analyze(graph)
    return None if reach is None else reach.receptive_radius


@pytest.mark.parametrize("length", [1, 5, 47, 48, 49, 100, 131, 257])
@pytest.mark.parametrize("tile,overlap", [(16, 0), (16, 10), (7, 24), (32, 3), (None, 5)])
def test_axis_spans_cover_the_axis_with_enough_context(length, tile, overlap):
    spans = axis_spans(length, tile, overlap)
    window = length if not tile else min(length, tile + 2 * overlap)
    assert spans[0].core_start == 0 and spans[-1].core_stop == length
    for a, b in zip(spans, spans[1:]):
        assert a.core_stop == b.core_start  # cores partition the axis, no gaps or overlaps
    for s in spans:
        assert 0 <= s.start <= s.core_start < s.core_stop <= s.stop <= length
        assert s.stop - s.start == window  # fixed window shape wherever the image allows
        assert s.core_start - s.start >= overlap or s.start == 0  # context, or the true border
        assert s.stop - s.core_stop >= overlap or s.stop == length
        if tile and len(spans) > 1:  # an axis that fits one window is run whole
            assert s.core_stop - s.core_start <= tile


def test_plan_is_row_major_and_counts_tiles():
    tiles = plan_tiles(100, 250, 64, 8)
    assert len(tiles) == 2 * 4
    assert [(r.core_start, c.core_start) for r, c in tiles[:3]] == [(0, 0), (0, 62), (0, 125)]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="length 0"):
        axis_spans(0, 16, 2)
    with pytest.raises(ValueError, match="overlap"):
        axis_spans(10, 4, -1)


def test_srresnet_radius_formula_matches_the_generator_and_the_design_notes():
    from srdeploy.training.models import Generator

    assert srresnet_receptive_radius(8, 4) == 23.5  # about 24 LR pixels for B=8
    for blocks in (1, 8, 16):
        assert math.ceil(srresnet_receptive_radius(blocks)) == Generator(num_blocks=blocks, channels=4).receptive_radius


def _torch_runner(generator):
    import torch

    def run(batch: np.ndarray) -> np.ndarray:  # the contract: [0, 1] in, [0, 1] out
        with torch.no_grad():
            return ((generator(torch.from_numpy(batch)) + 1) / 2).clamp(0, 1).numpy()

    return run


@pytest.fixture(scope="module")
def b8_generator():
    """B=8 (the seed's depth), 8 channels: the real receptive field at a tiny cost."""
    import torch

    from srdeploy.training.models import Generator

    torch.manual_seed(1)
    g = Generator(num_blocks=8, channels=8, scale=4)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return g.eval()


def test_b8_receptive_field_measured_by_perturbation_is_within_the_overlap(b8_generator):
    """Change one LR pixel and find how far the output changes: that distance must not
    exceed the radius the runtime's overlap is built from."""
    import torch

    side, centre = 71, 35
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, side, side), dtype=np.float32)
    y = x.copy()
    y[0, :, centre, centre] += 0.5
    with torch.no_grad():
        diff = (b8_generator(torch.from_numpy(x)) - b8_generator(torch.from_numpy(y))).abs().amax(dim=(0, 1)).numpy()
    rows, cols = np.nonzero(diff > 0)
    # Output pixel p covers LR coordinates p/4 .. (p+1)/4; its distance to the changed pixel's centre:
    reach = max(np.abs((rows + 0.5) / 4 - (centre + 0.5)).max(), np.abs((cols + 0.5) / 4 - (centre + 0.5)).max())
    radius = srresnet_receptive_radius(8)
    assert reach <= radius + 0.5
    assert reach > radius - 2  # the formula is tight, not a loose bound
    assert math.ceil(radius) == 24


def test_tiled_equals_untiled_for_b8_with_the_formula_overlap(b8_generator):
    run = _torch_runner(b8_generator)
    rng = np.random.default_rng(2)
    lr = rng.random((97, 103, 3), dtype=np.float32)  # odd sizes, 3 x 3 windows of 88 px
    overlap = math.ceil(srresnet_receptive_radius(8))
    untiled = upscale_tiled(run, lr, 4, None, 0)
    tiled = upscale_tiled(run, lr, 4, 40, overlap)
    assert len(plan_tiles(97, 103, 40, overlap)) == 3 * 3
    assert tiled.shape == (388, 412, 3) and tiled.dtype == np.float32
    assert np.abs(tiled - untiled).max() <= 1e-4
    # And the check has teeth: a small overlap leaves differences at the seams.
    short = upscale_tiled(run, lr, 4, 40, 4)
    assert np.abs(short - untiled).max() > 1e-4


def test_tiled_equals_untiled_on_the_exported_tiny_generator(tiny_onnx, tiny_generator):
    import onnx
    import onnxruntime as ort

    radius = receptive_radius(onnx.load(str(tiny_onnx)).graph)
    assert radius == srresnet_receptive_radius(1) == 9.5  # read off the exported graph
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    def run(batch):
        return session.run(None, {"lr": batch})[0]

    rng = np.random.default_rng(3)
    lr = rng.random((53, 77, 3), dtype=np.float32)
    untiled = upscale_tiled(run, lr, 4, None, 0)
    tiled = upscale_tiled(run, lr, 4, 12, math.ceil(radius))
    assert len(plan_tiles(53, 77, 12, 10)) == 5 * 7
    assert np.abs(tiled - untiled).max() <= 1e-4
    # ORT's output is the generator's: the tiles did not change the maths.
    assert np.abs(untiled - _torch_runner(tiny_generator)(lr.transpose(2, 0, 1)[None].copy())[0].transpose(1, 2, 0)).max() <= 1e-4
    assert np.abs(upscale_tiled(run, lr, 4, 12, 8) - untiled).max() > 0  # overlap below the radius shows


def test_finish_quantises_each_tile_and_matches_quantising_the_whole(tiny_onnx):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])

    def run(batch):
        return session.run(None, {"lr": batch})[0]

    def to_uint8(core):
        return np.rint(core * 255).astype(np.uint8)

    lr = np.random.default_rng(4).random((30, 41, 3), dtype=np.float32)
    whole = to_uint8(upscale_tiled(run, lr, 4, None, 0))
    tiled = upscale_tiled(run, lr, 4, 8, 10, finish=to_uint8)
    assert tiled.dtype == np.uint8 and tiled.shape == whole.shape
    # Identical floats would round identically; allow a 1-LSB flip where a value sits on .5.
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    assert np.mean(tiled != whole) < 1e-3


def test_graph_radius_is_none_for_ops_it_cannot_bound():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["lr"], ["sr"], kernel_shape=[3, 3])],
        "pool",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["n", 3, "h", "w"])],
    )
    assert receptive_radius(graph) is None


def test_wrong_model_output_shape_is_a_clear_error():
    lr = np.zeros((10, 10, 3), np.float32)
    with pytest.raises(RuntimeError, match=r"expected \(1, 3, 40, 40\)"):
        upscale_tiled(lambda batch: np.zeros((1, 3, 20, 20), np.float32), lr, 4, None, 0)


def test_axis_window_pixels_sums_the_windows_axis_spans_makes():
    for tile, overlap in ((None, 5), (16, 0), (16, 5), (256, 24)):
        for length in (1, 15, 16, 26, 27, 100, 305, 859, 1000):
            assert axis_window_pixels(length, tile, overlap) == sum(s.stop - s.start for s in axis_spans(length, tile, overlap))
