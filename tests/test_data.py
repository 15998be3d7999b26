import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from srdeploy.io.folders import list_images
from srdeploy.quality.degrade import downscale
from srdeploy.training.data import CorruptImageError, EpochSampler, SRDataset


def _save(path, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(3):
        _save(tmp_path / f"{i}.png", seed=i)
    _save(tmp_path / "sub" / "3.jpg", seed=3)
    return tmp_path


def test_recursive_listing_and_list_files_with_or_without_extensions(folder):
    assert [p.name for p in list_images(folder)] == ["0.png", "1.png", "2.png", "3.jpg"]
    (folder / "names.txt").write_text("2\nsub/3.jpg\n")
    assert [p.name for p in list_images(folder, folder / "names.txt")] == ["2.png", "3.jpg"]
    (folder / "bad.txt").write_text("2\n99\n")
    with pytest.raises(FileNotFoundError, match="bad.txt: 1 listed images missing.*99"):
        list_images(folder, folder / "bad.txt")
    (folder / "bom.txt").write_bytes(b"\xef\xbb\xbf2\r\nsub/3\r\n")  # as some Windows editors save it
    assert [p.name for p in list_images(folder, folder / "bom.txt")] == ["2.png", "3.jpg"]
    os.mkfifo(folder / "pipe.txt")  # refused, not waited on for ever
    with pytest.raises(ValueError, match="pipe.txt: cannot read this list of images \\(not a regular file: a named pipe\\)"):
        list_images(folder, folder / "pipe.txt")
    (folder / "latin1.txt").write_bytes(b"2\n\xe9t\xe9\n")
    with pytest.raises(ValueError, match="latin1.txt: not a UTF-8 text list of image names"):
        list_images(folder, folder / "latin1.txt")
    (folder / "twice.txt").write_text("2\nsub/3\n2.png\n")
    with pytest.raises(ValueError, match="twice.txt: '2.png' and '2' name the same image \\(2.png\\); list each once"):
        list_images(folder, folder / "twice.txt")


def test_hidden_files_and_folders_are_left_out_as_upscale_leaves_them_out(tmp_path):
    root = tmp_path / ".data"  # a hidden root is still read: only names below it count
    (root / ".git").mkdir(parents=True)
    _save(root / "a.png")
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork, not a PNG
    _save(root / ".git" / "b.png")
    assert [p.name for p in list_images(root)] == ["a.png"]


def test_pairs_are_the_shared_degradation_of_the_whole_image_cropped(folder):
    ds = SRDataset(folder, patch=32, flip=False)
    lr, hr = ds[0]  # int index: centre crop (on the LR grid), no augmentation
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 32, 32)
    assert lr.min() >= 0 and lr.max() <= 1 and hr.min() >= -1 and hr.max() <= 1
    img = Image.open(folder / "0.png").convert("RGB")
    np.testing.assert_allclose((hr.permute(1, 2, 0).numpy() + 1) * 127.5, np.asarray(img.crop((16, 8, 48, 40)), dtype=np.float32), atol=1e-4)
    expected = np.asarray(downscale(img, 4, "bicubic"), dtype=np.float32)[2:10, 4:12] / 255
    np.testing.assert_allclose(lr.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_augmentation_is_a_function_of_seed_epoch_and_index(folder):
    ds = SRDataset(folder, patch=16)
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a[1], b[1])
    assert any(not torch.equal(ds[(e, 1)][1], a[1]) for e in range(1, 6))


def test_bad_files_are_skipped_with_a_warning_and_counted(folder):
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    _save(folder / "tiny.png", size=(8, 8))
    buf = io.BytesIO()
    Image.open(folder / "0.png").save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:300])  # its header passes; its data does not
    with pytest.warns(UserWarning) as caught:
        ds = SRDataset(folder, patch=32)
    assert len(ds) == 4
    assert sorted(p.name for p, _ in ds.skipped) == ["empty.png", "notes.jpg", "tiny.png", "truncated.jpg"]
    assert any("truncated.jpg" in str(w.message) and "truncated" in str(w.message) for w in caught)
    assert any("tiny.png" in str(w.message) and "smaller than" in str(w.message) for w in caught)


def test_a_file_that_breaks_after_the_scan_names_itself_through_the_loader(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SRDataset(folder, patch=16)
    buf = io.BytesIO()
    Image.open(folder / "1.png").save(buf, "JPEG")
    (folder / "1.png").write_bytes(buf.getvalue()[:300])  # truncated after the header scan
    loader = DataLoader(ds, batch_size=2, sampler=EpochSampler(len(ds)), num_workers=1)
    with pytest.raises(CorruptImageError, match=r"1\.png: corrupt .*\(the file changed since the run checked it\)"):
        list(loader)


def test_epoch_sampler_shards_and_resumes():
    full = list(EpochSampler(10, seed=1))
    ranks = [EpochSampler(10, seed=1, rank=r, world_size=2) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert sorted(i for s in shards for _, i in s) == list(range(10))
    resumed = EpochSampler(10, seed=1)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == full[4:]
    later = EpochSampler(10, seed=1)
    later.set_epoch(1)
    assert [i for _, i in later] != [i for _, i in full]


def test_every_stage_reads_16_bit_grey_and_phone_photos_as_upscale_does(tmp_path):
    """A 16-bit grey scan is not solid white, and a photo stored on its side (EXIF
    orientation 6) is upright, in training, evaluation and int8 calibration alike."""
    from srdeploy.evaluation.evaluate import read_rgb_and_grey
    from srdeploy.export.calibration import lr_input
    from srdeploy.io import imaging

    ramp = (np.arange(128 * 96, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)  # 0 .. 61435
    Image.fromarray(ramp).save(tmp_path / "scan16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 128 wide, shown 96 wide
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "phone.jpg", exif=exif.tobytes())

    upscale_reads = imaging.decode((tmp_path / "scan16.png").read_bytes(), "scan16.png")
    expected = imaging.to_8bit(upscale_reads).color
    assert read_rgb_and_grey(tmp_path / "scan16.png")[1] and not read_rgb_and_grey(tmp_path / "phone.jpg")[1]  # evaluation scores grey as grey
    for reader in (imaging.read_rgb, lambda p: read_rgb_and_grey(p)[0], lambda p: SRDataset(tmp_path)._load(p)):
        grey = np.asarray(reader(tmp_path / "scan16.png"))
        assert grey.shape == (96, 128, 3) and (grey == expected[..., None]).all()
        assert reader(tmp_path / "phone.jpg").size == (96, 128)
    assert SRDataset(tmp_path).sizes == [(96, 128), (128, 96)]  # phone.jpg upright, scan16.png as stored
    assert 0.05 < lr_input(tmp_path / "scan16.png", side=16).mean() < 0.95  # not clipped to white


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_a_patchs_lr_is_the_whole_images_lr_there_as_evaluation_and_preload_make_it(tmp_path, method):
    """Degrading a bare crop renormalises the filter at its edges: the file loader's LR
    patches would differ from --preload's and from every real input's."""
    from srdeploy.training.data import degraded_patch

    rng = np.random.default_rng(5)
    hr = Image.fromarray(rng.integers(0, 256, (70, 83, 3), dtype=np.uint8))  # sides not multiples of 4
    whole = np.asarray(downscale(hr.crop((0, 0, 80, 68)), 4, method))
    for x, y in ((0, 0), (4, 8), (24, 20), (48, 36), (56, 36)):  # corners, edges and inside
        patch = np.asarray(degraded_patch(hr, (x, y, x + 24, y + 32), 4, method))
        assert np.array_equal(patch, whole[y // 4 : y // 4 + 8, x // 4 : x // 4 + 6]), (x, y)
    hr.save(tmp_path / "a.png")
    dataset = SRDataset(tmp_path, patch=32, downsample=method, flip=False)
    for epoch in range(4):
        lr, hr_patch = dataset[(epoch, 0)]
        lr = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        hr_patch = ((hr_patch.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        here = [(x, y) for y in range(0, 68 - 31, 4) for x in range(0, 80 - 31, 4)
                if np.array_equal(np.asarray(hr)[y : y + 32, x : x + 32], hr_patch)]  # where the loader cut it: on the grid
        assert len(here) == 1
        x, y = here[0]
        assert np.array_equal(lr, whole[y // 4 : y // 4 + 8, x // 4 : x // 4 + 8])


@pytest.mark.parametrize("preload", [False, True])
def test_a_flipped_pairs_lr_is_its_hrs_degradation_in_both_loaders(tmp_path, preload):
    """A flip must turn the LR with its HR: one turned alone trains the model to mirror.
    Whole square images, so the pair is exactly (downscale(HR), HR), flipped or not."""
    from srdeploy.training.config import TrainConfig
    from srdeploy.training.distributed import DistEnv
    from srdeploy.training.loop import make_loader

    originals = {}
    for i in range(4):
        _save(tmp_path / f"{i}.png", size=(32, 32), seed=10 + i)
        originals[i] = np.asarray(Image.open(tmp_path / f"{i}.png").convert("RGB"))
    cfg = TrainConfig(data=str(tmp_path), patch=None, flip=True, batch_size=2, workers=0, preload=preload, seed=3)
    _, sampler, loader = make_loader(cfg, DistEnv(), torch.device("cpu"))
    seen = []  # (image, flipped)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for lr, hr in loader:
            for lr_i, hr_i in zip(lr, hr):
                hr_u8 = ((hr_i.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
                lr_u8 = (lr_i.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                degraded = np.array_equal(lr_u8, np.asarray(downscale(Image.fromarray(hr_u8), 4, "bicubic")))
                assert degraded, f"epoch {epoch}: an LR that is not its HR's degradation"
                seen += [(i, flipped) for i, img in originals.items() for flipped in (False, True)
                         if np.array_equal(hr_u8, img[:, ::-1] if flipped else img)]
    assert len(seen) == 16 and {f for _, f in seen} == {False, True}  # 16 pairs drawn, some of them flipped
