"""Training mechanics on tiny configurations (B=1, 8 channels, 32px HR crops)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from srdeploy.training.checkpoint import load_checkpoint, load_generator
from srdeploy.training.config import TrainConfig, resolve_config
from srdeploy.training.loop import train
from srdeploy.training.models import Discriminator, Generator
from srdeploy.training.steps import StepContext, srgan_step, srresnet_step
from srdeploy.training.vgg import VGGFeatures, VGGWeightsMissing, load_vgg_features


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "hr"
    folder.mkdir()
    y, x = np.mgrid[0:48, 0:48]
    for i in range(10):
        base = np.stack([(x * 5 + 9 * i) % 256, (y * 4 + 3 * i) % 256, ((x + y) * 3) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:02d}.png")
    return folder


def tiny_config(tmp_path, data, **kw):
    base = dict(data=str(data), out=str(tmp_path / "run"), num_blocks=1, channels=8, patch=32, batch_size=4,
                epochs=None, steps=4, workers=0, log_every=1, ckpt_every=1000, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_one_adam_step_lowers_mse_on_a_fixed_batch():
    torch.manual_seed(0)
    g = Generator(num_blocks=1, channels=8)
    cfg = TrainConfig(data="x")
    lr, hr = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 32, 32) * 2 - 1
    ctx = StepContext(cfg, g, torch.optim.Adam(g.parameters(), lr=1e-3))
    first = srresnet_step(ctx, lr, hr)["loss_g"]
    for _ in range(4):
        last = srresnet_step(ctx, lr, hr)["loss_g"]
    assert last < first


@pytest.mark.parametrize("content", ["mse", "mse+vgg"])
def test_srgan_step_updates_both_networks(content):
    torch.manual_seed(0)
    g, d = Generator(num_blocks=1, channels=8), Discriminator(channels=8, hidden=32)
    cfg = TrainConfig(data="x", stage="srgan", content=content)
    vgg = VGGFeatures.random_for_tests() if "vgg" in content else None
    ctx = StepContext(cfg, g, torch.optim.Adam(g.parameters(), 1e-4), d, torch.optim.Adam(d.parameters(), 1e-4), vgg)
    g0 = [p.detach().clone() for p in g.parameters()]
    d0 = [p.detach().clone() for p in d.parameters()]
    losses = srgan_step(ctx, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32) * 2 - 1)
    assert all(np.isfinite(v) for v in losses.values())
    assert ("vgg" in losses) == ("vgg" in content)
    assert any(not torch.equal(a, b) for a, b in zip(g0, g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, d.parameters()))
    assert all(p.requires_grad for p in d.parameters())  # D is unfrozen after the G step


def test_resume_reproduces_the_uninterrupted_run(tmp_path, image_folder):
    full = tiny_config(tmp_path / "a", image_folder, steps=6)
    train(full)
    straight = [r["loss_g"] for r in map(json.loads, open(tmp_path / "a/run/metrics.jsonl")) if r["split"] == "train"]

    train(tiny_config(tmp_path / "b", image_folder, steps=3))
    ckpt = load_checkpoint(tmp_path / "b/run/last.pt")
    assert ckpt["step"] == 3 and set(ckpt) >= {"generator", "g_optimizer", "rng", "config", "arch"}
    train(tiny_config(tmp_path / "b", image_folder, steps=6), resume=True)
    resumed = [r["loss_g"] for r in map(json.loads, open(tmp_path / "b/run/metrics.jsonl")) if r["split"] == "train"]

    assert len(straight) == len(resumed) == 6
    np.testing.assert_allclose(resumed, straight, rtol=1e-6)
    g, meta = load_generator(tmp_path / "b/run/last.pt")
    assert meta["step"] == 6 and g.arch() == {"num_blocks": 1, "channels": 8, "scale": 4}


def test_srgan_run_from_a_srresnet_checkpoint(tmp_path, image_folder):
    train(tiny_config(tmp_path / "pre", image_folder, steps=2))
    cfg = tiny_config(tmp_path / "gan", image_folder, stage="srgan", init=str(tmp_path / "pre/run/last.pt"),
                      steps=2, val_data=str(image_folder), val_limit=3)
    out = train(cfg)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["discriminator"] is not None and ckpt["config"]["stage"] == "srgan"
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    val = [r for r in records if r["split"] == "val"]
    assert val and np.isfinite(val[-1]["psnr_y"]) and val[-1]["images"] == 3
    assert (out / "loss_curves.png").stat().st_size > 0 and list((out / "samples").glob("*.png"))


def test_srgan_init_must_match_the_architecture(tmp_path, image_folder):
    train(tiny_config(tmp_path / "pre", image_folder, steps=1))
    cfg = tiny_config(tmp_path / "gan", image_folder, stage="srgan", init=str(tmp_path / "pre/run/last.pt"), channels=16)
    with pytest.raises(ValueError, match="does not match"):
        train(cfg)


def test_presets_and_overrides():
    seed = resolve_config("srresnet", "seed", {"data": "d"})
    assert (seed.num_blocks, seed.downsample, seed.lr, seed.batch_size, seed.epochs) == (8, "bilinear", 2e-4, 64, 30)
    paper = resolve_config("srgan", "paper", {"data": "d", "lr": 5e-5})
    assert (paper.num_blocks, paper.content, paper.lr, paper.schedule) == (16, "vgg", 5e-5, "step")
    assert paper.vgg_scale == pytest.approx(1 / 12.75)
    combined = resolve_config("srgan", None, {"data": "d", "content": "mse+vgg"})
    assert (combined.epochs, combined.batch_size) == (6, 32)
    with pytest.raises(ValueError, match="patch"):
        resolve_config("srresnet", None, {"data": "d", "patch": 30})


def test_vgg_missing_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # No internet here, and none needed for the check: a missing local file fails first.
    with pytest.raises(VGGWeightsMissing, match="--vgg-weights"):
        load_vgg_features(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(VGGWeightsMissing, match="not a torchvision vgg19"):
        load_vgg_features(bad)


def test_vgg_features_are_frozen_phi54():
    vgg = VGGFeatures.random_for_tests()
    vgg.train()
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    assert vgg(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 4, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_amp_steps_on_cuda(amp):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    g = Generator(num_blocks=1, channels=8).to(dev, memory_format=torch.channels_last)
    d = Discriminator(channels=8, hidden=32).to(dev, memory_format=torch.channels_last)
    cfg = TrainConfig(data="x", stage="srgan")
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    ctx = StepContext(cfg, g, torch.optim.Adam(g.parameters(), 1e-4), d, torch.optim.Adam(d.parameters(), 1e-4),
                      None, scaler, amp)
    lr = torch.rand(4, 3, 16, 16, device=dev).to(memory_format=torch.channels_last)
    hr = (torch.rand(4, 3, 64, 64, device=dev) * 2 - 1).to(memory_format=torch.channels_last)
    for _ in range(3):
        losses = srgan_step(ctx, lr, hr)
    assert all(np.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p).all() for p in g.parameters())
