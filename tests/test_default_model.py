"""Regression test of the shipped generators on the CelebA-HQ test split (skipped without
../shared/data): each still reaches the gain over bicubic recorded in its manifest when
it was shipped, minus 0.1 dB, through the same Upscaler as `srdeploy upscale`."""

import pytest
from conftest import CELEBA

from srdeploy.runtime.manifest import read_manifest
from srdeploy.runtime.zoo import MODELS_DIR, shipped_models

SHIPPED = shipped_models()


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="no model is shipped in this build")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_keeps_its_recorded_gain_over_bicubic(name):
    from srdeploy.evaluation.evaluate import evaluate, find_test_images, load_model

    recorded = read_manifest(MODELS_DIR / name)["shipped"]["gain_psnr_y_db"]
    images = find_test_images(CELEBA / "test", CELEBA / "test.txt")
    bicubic, model = evaluate(images, [load_model(name)]).table()
    assert len(images) == 100
    assert model["psnr_y"] - bicubic["psnr_y"] >= recorded - 0.1
