"""Training mechanics on tiny configurations (B=1, 8 channels, 32px HR crops)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from srdeploy.training.checkpoint import load_checkpoint, load_generator
from srdeploy.training.config import ConfigError, TrainConfig, resolve_config
from srdeploy.training.loop import RunRefused, train
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


def test_the_vgg_loss_is_computed_in_fp32_under_bf16_autocast():
    """Near convergence the feature difference is small beside the features: bf16 would cancel it out."""
    from srdeploy.training.steps import content_loss

    torch.manual_seed(0)
    vgg = VGGFeatures.random_for_tests()
    cfg = TrainConfig(data="x", stage="srgan", content="vgg")
    hr = torch.rand(1, 3, 48, 48) * 2 - 1
    sr = (hr + 2 / 255 * torch.randn_like(hr)).requires_grad_(True)
    exact = content_loss(sr, hr, cfg, vgg)["vgg"]
    (grad,) = torch.autograd.grad(exact, sr)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = content_loss(sr, hr, cfg, vgg)["vgg"]
    (grad_autocast,) = torch.autograd.grad(under_autocast, sr)
    # Relative bounds only: random weights make tiny features (a loss near 1e-16; bf16 gave 1e-10).
    assert under_autocast.dtype == torch.float32 and torch.allclose(under_autocast, exact, rtol=1e-4, atol=0)
    assert torch.allclose(grad_autocast, grad, rtol=1e-3, atol=0)


def test_a_logged_loss_is_the_mean_over_its_interval(tmp_path, image_folder):
    """One batch's losses, every log_every steps, are too noisy to follow a GAN by."""
    def train_losses(folder, every):
        train(tiny_config(tmp_path / folder, image_folder, steps=4, log_every=every))
        return [r["loss_g"] for r in map(json.loads, open(tmp_path / folder / "run" / "metrics.jsonl")) if r["split"] == "train"]

    each, pairs = train_losses("each", 1), train_losses("pairs", 2)  # the same seeded run, logged twice as rarely
    assert pairs == pytest.approx([(each[0] + each[1]) / 2, (each[2] + each[3]) / 2], rel=1e-6)


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
    with pytest.raises(RunRefused, match="does not match"):
        train(cfg)


def test_preloaded_batches_match_the_files_and_are_seeded(image_folder):
    from srdeploy.training.data import EpochSampler, PreloadedLoader, PreloadedPairs, SRDataset

    whole = SRDataset(image_folder, patch=None, flip=False, seed=3)
    pairs = PreloadedPairs(whole, torch.device("cpu"))
    lr, hr = pairs.batch(0, [2, 5])
    # Whole images without flips: exactly what the file dataset gives for the same images.
    for j, i in enumerate([2, 5]):
        lr_f, hr_f = whole[i]
        torch.testing.assert_close(lr[j], lr_f, atol=1e-6, rtol=0)
        torch.testing.assert_close(hr[j], hr_f, atol=1e-6, rtol=0)

    cropped = PreloadedPairs(SRDataset(image_folder, patch=16, seed=3), torch.device("cpu"))
    lr_a, hr_a = cropped.batch(4, [1, 7, 3])
    lr_b, hr_b = cropped.batch(4, [1, 7, 3])
    assert lr_a.shape == (3, 3, 4, 4) and hr_a.shape == (3, 3, 16, 16)
    assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)  # a pure function of (seed, epoch, indices)
    assert not torch.equal(cropped.batch(5, [1, 7, 3])[1], hr_a)
    assert 0.0 <= lr_a.min() and lr_a.max() <= 1.0 and -1.0 <= hr_a.min() and hr_a.max() <= 1.0

    # Without a patch, non-square faces train as the largest square, as from the files
    wide = image_folder.parent / "wide"
    wide.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 44, 3), dtype=np.uint8)).save(wide / f"w{i}.png")
    wide_set = SRDataset(wide, patch=None, seed=3)
    lr_w, hr_w = PreloadedPairs(wide_set, torch.device("cpu")).batch(0, [0, 2])
    assert hr_w.shape == (2, 3, 32, 32) and lr_w.shape == (2, 3, 8, 8) and wide_set[(0, 1)][1].shape == (3, 32, 32)

    sampler = EpochSampler(len(pairs), seed=3)
    loader = PreloadedLoader(pairs, sampler, batch_size=4)
    assert len(loader) == 2 and [b[0].shape[0] for b in loader] == [4, 4]  # drop_last


def test_preload_refuses_mixed_sizes(tmp_path, image_folder):
    from srdeploy.training.data import PreloadedPairs, SRDataset

    Image.new("RGB", (40, 36)).save(image_folder / "odd.png")
    with pytest.raises(ValueError, match="one size"):
        PreloadedPairs(SRDataset(image_folder, patch=16), torch.device("cpu"))


def test_preloaded_run_validates_every_n_epochs_and_resumes(tmp_path, image_folder):
    cfg = tiny_config(tmp_path / "a", image_folder, preload=True, patch=None, steps=None, epochs=3, val_every=2,
                      val_data=str(image_folder), val_limit=2, batch_size=5)
    train(cfg)
    records = [json.loads(line) for line in open(tmp_path / "a/run/metrics.jsonl")]
    assert [r["epoch"] for r in records if r["split"] == "val"] == [2, 3]  # every 2nd epoch, and the last
    assert sum(r["split"] == "train" for r in records) == 6

    train(tiny_config(tmp_path / "b", image_folder, preload=True, steps=2))
    train(tiny_config(tmp_path / "b", image_folder, preload=True, steps=4), resume=True)
    train(tiny_config(tmp_path / "c", image_folder, preload=True, steps=4))
    losses = [[r["loss_g"] for r in map(json.loads, open(tmp_path / d / "run/metrics.jsonl"))] for d in "bc"]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_slim_checkpoint_keeps_the_generator_only(tmp_path, image_folder):
    from srdeploy.training.checkpoint import slim_checkpoint

    out = train(tiny_config(tmp_path, image_folder, stage="srgan", init=None, steps=1, ema=0.9))
    slim = slim_checkpoint(out / "last.pt", tmp_path / "slim.pt")
    kept = load_checkpoint(slim)
    assert "discriminator" not in kept and "g_optimizer" not in kept and kept["step"] == 1
    for weights in ("ema", "raw"):
        a, _ = load_generator(out / "last.pt", weights=weights)
        b, _ = load_generator(slim, weights=weights)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="not a training checkpoint"):
        slim_checkpoint(_bare_state(tmp_path), tmp_path / "again.pt")


def _bare_state(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(Generator(num_blocks=1, channels=8).state_dict(), path)
    return path


def test_srresnet_can_continue_from_a_generator(tmp_path, image_folder):
    train(tiny_config(tmp_path / "pre", image_folder, steps=2))
    out = train(tiny_config(tmp_path / "more", image_folder, init=str(tmp_path / "pre/run/last.pt"), steps=1))
    start = json.loads(open(out / "metrics.jsonl").readline())["loss_g"]
    fresh = train(tiny_config(tmp_path / "fresh", image_folder, steps=1))
    assert start != json.loads(open(fresh / "metrics.jsonl").readline())["loss_g"]  # not a random init


def test_presets_and_overrides():
    seed = resolve_config("srresnet", "seed", {"data": "d"})
    assert (seed.num_blocks, seed.downsample, seed.lr, seed.batch_size, seed.epochs) == (8, "bilinear", 2e-4, 64, 30)
    paper = resolve_config("srgan", "paper", {"data": "d", "lr": 5e-5})
    assert (paper.num_blocks, paper.content, paper.lr, paper.schedule) == (16, "vgg", 5e-5, "step")
    assert paper.vgg_scale == pytest.approx(1 / 12.75)
    combined = resolve_config("srgan", None, {"data": "d", "content": "mse+vgg"})
    assert (combined.epochs, combined.batch_size) == (6, 32)
    # The paper weighs MSE 0 for its VGG-only loss: asking for MSE on top must say how, not train without it.
    with pytest.raises(ConfigError, match=r"`content` mse\+vgg with `mse_weight` 0: its MSE term would do nothing; give --mse-weight"):
        resolve_config("srgan", "paper", {"data": "d", "content": "mse+vgg"})
    assert resolve_config("srgan", "paper", {"data": "d", "content": "mse+vgg", "mse_weight": 1.0}).mse_weight == 1.0
    for field, value, says in (("lr", float("inf"), "`lr` must be a finite learning rate"), ("lr", 1e300, "`lr` must be a finite learning rate"),
                               ("max_minutes", float("inf"), "`max_minutes` must be a finite number"), ("seed", 2**70, "`seed` must be from 0"),
                               ("adv_weight", float("nan"), "`adv_weight` must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=says):  # inf trained NaN weights for the whole budget; the others overflowed mid-start
            resolve_config("srgan", None, {"data": "d", field: value})
    with pytest.raises(ValueError, match="patch"):
        resolve_config("srresnet", None, {"data": "d", "patch": 30})


def test_vgg_missing_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # No internet here, and none needed for the check: a missing local file fails first.
    with pytest.raises(VGGWeightsMissing, match="--vgg-weights"):
        load_vgg_features(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(VGGWeightsMissing, match="not a torchvision vgg19") as caught:
        load_vgg_features(bad)
    assert "(+33 more); unexpected: not" in str(caught.value) and len(str(caught.value)) < 400  # one readable line, not 1,500 characters
    bad.write_bytes(b"not a torch file")
    with pytest.raises(VGGWeightsMissing, match=rf"--vgg-weights {bad}: not a PyTorch checkpoint \(the file holds text\)"):
        load_vgg_features(bad)
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(VGGWeightsMissing, match="expected a dict"):
        load_vgg_features(bad)


def test_metrics_epochs_count_completed_epochs_and_a_resume_logs_each_step_once(tmp_path, image_folder):
    """10 images in batches of 4: 2 steps an epoch. The record of step 4 ends epoch 2."""
    out = train(tiny_config(tmp_path, image_folder, steps=4, log_every=2))
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(r["step"], r["epoch"]) for r in records] == [(2, 1), (4, 2)]
    # Records past the checkpoint (a run that died after logging them), one torn by the crash.
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": 6, "epoch": 3}) + "\n" + '{"split": "tr')
    train(tiny_config(tmp_path, image_folder, steps=6, log_every=2), resume=True)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(r["step"], r["epoch"]) for r in records] == [(2, 1), (4, 2), (6, 3)]
    with pytest.raises(RunRefused, match="is at step 6, and a budget of 6 steps"):
        train(tiny_config(tmp_path, image_folder, steps=6), resume=True)


def test_images_of_several_sizes_need_a_patch_and_tiny_validation_images_are_skipped(tmp_path, image_folder):
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(image_folder / "small.png")
    with pytest.raises(RunRefused, match=r"gives 2 square crops, e\.g\. 36px \(.*small\.png\), 48px .*at most 36"):
        train(tiny_config(tmp_path, image_folder, patch=None))
    val = tmp_path / "val"
    val.mkdir()
    for name, side in (("face.png", 48), ("tiny.png", 19)):
        Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(val / name)
    with pytest.warns(UserWarning, match=r"skipping .*tiny\.png: 19x19 is smaller than 20px a side"):
        out = train(tiny_config(tmp_path, image_folder, steps=1, val_data=str(val)))
    assert json.loads((out / "data.json").read_text())["val_images"] == 1


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


@pytest.mark.gpu
def test_preloaded_run_on_cuda(tmp_path, image_folder):
    """The GPU path end to end: data on the device, channels_last, bf16 autocast, EMA,
    validation and a checkpoint that loads on the CPU."""
    cfg = tiny_config(tmp_path, image_folder, preload=True, device="cuda", amp="bf16", ema=0.9, steps=4,
                      val_data=str(image_folder), val_limit=2)
    out = train(cfg)
    g, meta = load_generator(out / "last.pt")
    assert meta["weights"] == "generator_ema" and meta["step"] == 4
    assert all(torch.isfinite(p).all() for p in g.parameters())
    val = [json.loads(line) for line in open(out / "metrics.jsonl") if '"val"' in line]
    assert val and np.isfinite(val[-1]["psnr_y"])


@pytest.mark.parametrize("stage", ["srresnet", "srgan"])
def test_fp16_scaler_updates_once_per_step(stage):
    # The CPU GradScaler keeps the same books as the CUDA one. With growth_interval=1 every
    # update without overflow doubles the scale: one update per step gives 2x, two give 4x.
    torch.manual_seed(0)
    g, d = Generator(num_blocks=1, channels=8), Discriminator(channels=8, hidden=32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    ctx = StepContext(TrainConfig(data="x", stage=stage), g, torch.optim.Adam(g.parameters(), 1e-4),
                      d, torch.optim.Adam(d.parameters(), 1e-4), scaler=scaler)
    step = srgan_step if stage == "srgan" else srresnet_step
    for n in (1, 2):
        step(ctx, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32) * 2 - 1)
        assert scaler.get_scale() == 2.0 ** (10 + n)


def test_the_ema_warms_up_then_holds_its_decay():
    # Without the warm-up a 0.999 EMA keeps most of the random initialisation for the first
    # thousand steps, and export takes the EMA weights by default.
    import torch

    from srdeploy.training.state import EMA

    net = torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(0.0)
    ema = EMA(net, 0.999)
    net.weight.data.fill_(1.0)
    ema.update(net, step=0)  # decay (1 + 0) / (10 + 0) = 0.1: 90% of the way to the weights
    assert ema.model.weight.item() == pytest.approx(0.9)
    ema.update(net, step=10**6)  # warmed up: the decay itself
    assert ema.model.weight.item() == pytest.approx(0.9 + 0.1 * 0.001)


def test_a_checkpoint_restores_every_random_stream_exactly(tmp_path):
    """Mid-stream, with a cached Gaussian in numpy and in Python: a resume draws what the
    run would have drawn."""
    import random

    from srdeploy.training.checkpoint import save_checkpoint
    from srdeploy.training.state import _restore_rng, _rng_state

    np.random.rand(5), np.random.standard_normal(), random.gauss(0, 1), torch.rand(3)
    save_checkpoint({"rng": _rng_state()}, tmp_path / "last.pt")

    def draws():
        return np.random.rand(3).tolist(), np.random.standard_normal(), random.gauss(0, 1), random.random(), torch.rand(2).tolist()

    ahead = draws()
    _restore_rng(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert draws() == ahead


def test_torchvisions_cached_vgg_file_is_checked_and_never_unpickled_in_full(tmp_path, monkeypatch):
    """torchvision's own loader unpickles a cached vgg19-dcbb9e9d.pth in full: a file put
    there under that name ran its code. srdeploy checks its sha256 first, then loads
    weights only."""
    import pathlib

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (tmp_path / "ran",)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"features.0.weight": Payload()}, cached)
    with pytest.raises(VGGWeightsMissing, match=rf"{cached}: not torchvision's vgg19-dcbb9e9d.pth \(its sha256 does not start with dcbb9e9d\); delete it"):
        load_vgg_features()
    assert not (tmp_path / "ran").exists()


def test_validation_scores_the_generators_output_and_best_pt_is_the_best_validated_step(tmp_path, image_folder):
    """The logged scores are evaluate_pair on what the generator makes of each validation
    image's centre square (its LR cut from the whole image's degradation), and best.pt,
    the checkpoint docs/training.md says to export, holds the step that scored best."""
    from srdeploy.quality.degrade import downscale, upscale_bicubic
    from srdeploy.quality.metrics import evaluate_pair

    val = tmp_path / "val"
    val.mkdir()
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate([(56, 48), (48, 56), (56, 48)]):  # 4 px either side of the 48 px centre square
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 4 + 20 * i) % 256, (y * 5) % 256, ((x + 2 * y) * 2) % 256], -1)
        Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)).save(val / f"{i}.png")
    # 2 steps an epoch: validated at steps 2, 4 and 6. A learning rate this high spoils the
    # model after its first epochs, so the best step is not the last, whose weights last.pt holds.
    out = train(tiny_config(tmp_path, image_folder, steps=6, lr=0.03, val_data=str(val), log_every=1000))
    logged = {r["step"]: r for r in map(json.loads, open(out / "metrics.jsonl")) if r["split"] == "val"}
    assert sorted(logged) == [2, 4, 6]

    pairs = []
    for i in range(3):
        img = Image.open(val / f"{i}.png").convert("RGB")
        lr_whole = np.asarray(downscale(img, 4, "bicubic"))
        x, y = (img.width - 48) // 2, (img.height - 48) // 2
        pairs.append((lr_whole[y // 4 : y // 4 + 12, x // 4 : x // 4 + 12], np.asarray(img)[y : y + 48, x : x + 48]))

    def scores(checkpoint):
        g, _ = load_generator(checkpoint)
        lr = torch.stack([torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1) for lr, _ in pairs])
        with torch.no_grad():
            sr = ((g(lr).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        each = [evaluate_pair(s, hr) for s, (_, hr) in zip(sr, pairs)]
        return {k: float(np.mean([m[k] for m in each])) for k in ("psnr_y", "ssim_y", "psnr_rgb", "hf_ratio")}

    bicubic = np.mean([evaluate_pair(np.asarray(upscale_bicubic(Image.fromarray(lr), 4)), hr)["psnr_y"] for lr, hr in pairs])
    best_step = max(logged, key=lambda s: logged[s]["psnr_y"])
    assert best_step != 6, "the last validation scored best: this run cannot tell best.pt from last.pt"
    best = load_checkpoint(out / "best.pt")
    assert best["step"] == best_step and best["best"] == logged[best_step]["psnr_y"]
    for checkpoint, step in ((out / "best.pt", best_step), (out / "last.pt", 6)):
        record = logged[step]
        assert {k: record[k] for k in ("psnr_y", "ssim_y", "psnr_rgb", "hf_ratio")} == pytest.approx(scores(checkpoint), rel=1e-9)
        assert record["images"] == 3 and record["bicubic_psnr_y"] == pytest.approx(bicubic, rel=1e-9)
        assert abs(record["psnr_y"] - record["bicubic_psnr_y"]) > 0.01  # the model's score, not the baseline's


@pytest.mark.parametrize("every, saved", [(1, [1, 2, 3, 4, 5, 6, 7]), (3, [3, 5, 6, 7])])
def test_ckpt_every_saves_last_pt_inside_an_epoch(tmp_path, image_folder, monkeypatch, every, saved):
    """10 images in batches of 2: 5 steps an epoch. last.pt is written every `ckpt_every`
    steps, at each epoch's end (after validation) and at the run's end."""
    import srdeploy.training.loop as loop

    real, written = loop.save_checkpoint, []

    def recording(state, path):
        written.append((path.name, state["step"]))
        return real(state, path)

    monkeypatch.setattr(loop, "save_checkpoint", recording)
    out = train(tiny_config(tmp_path, image_folder, batch_size=2, steps=7, ckpt_every=every))
    assert sorted({step for name, step in written if name == "last.pt"}) == saved
    assert load_checkpoint(out / "last.pt")["step"] == 7
