"""HR image folders -> (LR, HR) training pairs, degraded on the fly.

Unreadable files are dealt with in two places, deliberately:
- at construction every file is decoded once (on a thread pool; what that costs is in
  docs/training.md); files that fail (not an image, empty,
  unsupported, truncated, smaller than the crop) are skipped with one warning each and
  counted in ``dataset.skipped``, so a single bad file never stops a run;
- a file that passed that check but fails to decode later raises ``CorruptImageError``
  naming the file, which the DataLoader re-raises in the main process with the message
  intact: a dataset that changes under a run is an error, not something to train around
  silently.

Augmentation randomness is a pure function of (seed, epoch, index), so a resumed run sees
exactly the crops and flips of an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from srdeploy.io.folders import list_images
from srdeploy.io.imaging import ImageError, read_rgb
from srdeploy.quality.degrade import downscale
from srdeploy.runtime.cpus import available_cpus


class CorruptImageError(RuntimeError):
    pass


def _check(path: Path, min_side: int, needed_for: str) -> tuple[tuple[int, int], str | None]:
    """((width, height), why ``path`` cannot be used or None). The whole file is decoded: a
    header check passes a truncated JPEG, which would stop the run when it is first drawn."""
    try:
        w, h = read_rgb(path).size  # upright: a phone photo's sides as trained
    except Exception as e:  # ImageError names the file and the reason; anything else, its type
        return (0, 0), str(e).removeprefix(f"{path}: ") if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
    if min(w, h) < min_side:
        return (w, h), f"{w}x{h} is smaller than {min_side}px a side ({needed_for})"
    return (w, h), None


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class SRDataset(Dataset):
    """Items are (lr, hr): lr float32 (3, P/s, P/s) in [0, 1], hr float32 (3, P, P) in [-1, 1].

    Index with an int (no augmentation: full image or centre crop, for validation) or with
    an (epoch, index) pair from ``EpochSampler`` (random crop + flip seeded by the pair).
    Without a patch an item is the largest square whose side is a multiple of the scale:
    at a random position for an (epoch, index) pair, centred for an int index. ``min_side``/``needed_for``: a smaller image is skipped, saying what needs the size.
    """

    def __init__(self, root, list_file=None, patch: int | None = None, scale: int = 4,
                 downsample: str = "bicubic", flip: bool = True, seed: int = 0, limit: int | None = None,
                 min_side: int | None = None, needed_for: str | None = None):
        self.patch, self.scale, self.downsample, self.flip, self.seed = patch, scale, downsample, flip, seed
        min_side = min_side or patch or scale
        needed_for = needed_for or ("the --patch crop" if patch else f"one x{scale} LR pixel")
        paths = list_images(root, list_file)[:limit]
        self.skipped: list[tuple[Path, str]] = []
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []  # (width, height) of each usable path
        with ThreadPoolExecutor(available_cpus()) as pool:  # Pillow decodes without the GIL
            checks = list(pool.map(lambda p: _check(p, min_side, needed_for), paths))
        for p, (size, problem) in zip(paths, checks):
            if problem:
                warnings.warn(f"skipping {p}: {problem}", stacklevel=2)
                self.skipped.append((p, problem))
            else:
                self.paths.append(p)
                self.sizes.append(size)
        if not self.paths:
            raise FileNotFoundError(f"no usable images under {root} ({len(self.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.paths)

    def item_sides(self) -> dict[int, Path]:
        """The HR side of each distinct item size, with one file that has it."""
        sides: dict[int, Path] = {}
        for p, (w, h) in zip(self.paths, self.sizes):
            sides.setdefault(self.patch or min(w, h) - min(w, h) % self.scale, p)
        return sides

    def _load(self, path: Path) -> Image.Image:
        try:
            return read_rgb(path)
        except ImageError as e:  # names the file and the reason
            raise CorruptImageError(f"{e} (the file changed since the run checked it)") from e
        except Exception as e:
            raise CorruptImageError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        hr = self._load(self.paths[index])
        rnd = random.Random(hash((self.seed, epoch, index))) if epoch is not None else None
        s = self.scale
        w, h = hr.size
        w, h = w - w % s, h - h % s  # what the whole image's LR covers
        size = self.patch or min(w, h)
        cols, rows = (w - size) // s, (h - size) // s  # patch positions on the LR grid
        if rnd is not None:
            x, y = s * rnd.randint(0, cols), s * rnd.randint(0, rows)
        else:
            x, y = s * (cols // 2), s * (rows // 2)
        lr = degraded_patch(hr, (x, y, x + size, y + size), s, self.downsample)
        if (x, y, size, size) != (0, 0, *hr.size):
            hr = hr.crop((x, y, x + size, y + size))
        if rnd is not None and self.flip and rnd.random() < 0.5:  # the filters are symmetric: flipping commutes with degrading
            hr, lr = hr.transpose(Image.Transpose.FLIP_LEFT_RIGHT), lr.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(lr), to_tensor(hr) * 2.0 - 1.0


# LR pixels of context the degradation reaches on each side of a patch: Pillow's shrinking
# filters are antialiased, their support scaled by the factor (bicubic: 2 LR pixels; bilinear: 1).
DEGRADATION_REACH = 2


def degraded_patch(hr: Image.Image, box: tuple[int, int, int, int], scale: int, method: str) -> Image.Image:
    """The LR of the HR patch ``box`` (on the scale grid) as the whole image's LR holds it,
    which is what evaluation and --preload degrade: the patch is degraded with the
    neighbourhood the filter reaches, then trimmed. Degrading the bare crop would
    renormalise the filter at its edges, an artefact no real input has."""
    x, y, right, bottom = box
    w, h = hr.size
    reach = DEGRADATION_REACH * scale
    x0, y0 = max(0, x - reach), max(0, y - reach)
    x1, y1 = min(w - w % scale, right + reach), min(h - h % scale, bottom + reach)
    lr = downscale(hr.crop((x0, y0, x1, y1)), scale, method)
    left, top = (x - x0) // scale, (y - y0) // scale
    return lr.crop((left, top, left + (right - x) // scale, top + (bottom - y) // scale))


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a permutation seeded by (seed, epoch), sharded by rank
    for DDP, starting ``start`` items in (to resume mid-epoch)."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.n // self.world_size - self.start)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        mine = order[self.rank : self.n - self.n % self.world_size : self.world_size]
        return iter([(self.epoch, i) for i in mine[self.start :]])


class PreloadedPairs:
    """The whole training set decoded once and kept on the training device as uint8
    (N, 3, H, W) HR and (N, 3, H/s, W/s) LR tensors; batches are gathered, cropped and
    flipped there.

    On a GPU this takes JPEG decoding and the bicubic degradation out of the step (a B=8
    SRResNet step on a batch of whole faces is shorter than decoding its JPEGs on a few
    cores: docs/results.md, "Training throughput"). The LR images are degraded from the
    *whole* HR image and patches are cut from both on the scale grid, so an LR patch sees
    its true neighbourhood instead of a cropped border. All images must share one size.
    Memory: N x 3 x H x W bytes for HR plus 1/s^2 of that for LR (uint8).
    """

    def __init__(self, dataset: SRDataset, device: torch.device, workers: int | None = None):
        self.patch, self.scale, self.flip, self.seed = dataset.patch, dataset.scale, dataset.flip, dataset.seed
        self.paths = dataset.paths

        def decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
            hr = dataset._load(path)
            w, h = hr.size
            hr = hr.crop((0, 0, w - w % self.scale, h - h % self.scale))
            return np.asarray(hr), np.asarray(downscale(hr, self.scale, dataset.downsample))

        # Pillow's decoders and resamplers release the GIL: threads scale with cores.
        with ThreadPoolExecutor(workers or available_cpus()) as pool:
            pairs = list(pool.map(decode, self.paths))
        sizes = {hr.shape for hr, _ in pairs}
        if len(sizes) != 1:
            raise ValueError(f"--preload needs images of one size; found {len(sizes)} sizes, e.g. "
                             + ", ".join(f"{s[1]}x{s[0]}" for s in sorted(sizes)[:3]))
        self.hr = _stacked_nchw([hr for hr, _ in pairs], device)
        self.lr = _stacked_nchw([lr for _, lr in pairs], device)
        height, width = self.hr.shape[2:]
        if self.patch is not None and self.patch > min(height, width):
            raise ValueError(f"--patch {self.patch} is larger than the {width}x{height} images")

    def __len__(self) -> int:
        return self.hr.shape[0]

    def batch(self, epoch: int, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(lr float32 [0, 1], hr float32 [-1, 1]) on the device; crops and flips are a pure
        function of (seed, epoch, first index), so a resumed run draws the same ones."""
        idx = torch.tensor(indices, device=self.hr.device)
        hr, lr = self.hr.index_select(0, idx), self.lr.index_select(0, idx)
        g = torch.Generator().manual_seed(hash((self.seed, epoch, indices[0])) & 0x7FFF_FFFF_FFFF)
        s, (h, w) = self.scale, lr.shape[2:]
        p = self.patch // s if self.patch is not None else min(h, w)  # no patch: the largest square, as SRDataset's
        if (p, p) != (h, w):
            ys = torch.randint(0, h - p + 1, (len(indices),), generator=g).tolist()
            xs = torch.randint(0, w - p + 1, (len(indices),), generator=g).tolist()
            lr = torch.stack([lr[i, :, y : y + p, x : x + p] for i, (y, x) in enumerate(zip(ys, xs))])
            hr = torch.stack([hr[i, :, y * s : (y + p) * s, x * s : (x + p) * s] for i, (y, x) in enumerate(zip(ys, xs))])
        if self.flip:
            flip = (torch.rand(len(indices), generator=g) < 0.5).to(hr.device).view(-1, 1, 1, 1)
            hr, lr = torch.where(flip, hr.flip(-1), hr), torch.where(flip, lr.flip(-1), lr)
        return lr.float() / 255.0, hr.float() / 127.5 - 1.0


def _stacked_nchw(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) arrays -> one uint8 (N, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)


class PreloadedLoader:
    """A DataLoader stand-in over ``PreloadedPairs``: iterates the sampler's (epoch, index)
    pairs in full batches (drop_last), so resume and DDP sharding work as with files."""

    def __init__(self, pairs: PreloadedPairs, sampler: EpochSampler, batch_size: int):
        self.pairs, self.sampler, self.batch_size = pairs, sampler, batch_size

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        keys = list(self.sampler)
        for start in range(0, len(keys) - self.batch_size + 1, self.batch_size):
            chunk = keys[start : start + self.batch_size]
            yield self.pairs.batch(chunk[0][0], [i for _, i in chunk])
