"""VGG19 phi_5,4 features for the perceptual content loss (Ledig et al. 2017, Sec. 2.2.1).

phi_5,4 is the feature map after the 4th convolution (and its ReLU) before the 5th
max-pooling: torchvision's ``vgg19().features[:36]``. Inputs are generator-range images in
[-1, 1], mapped to [0, 1] and normalised with the ImageNet mean/std the weights expect.

Pretrained weights are required: a randomly initialised VGG gives a meaningless loss, so
a missing download is an error, never a fallback. Tests build random weights only through
``VGGFeatures.random_for_tests()``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from srdeploy.io.files import sha256_file
from srdeploy.training.checkpoint import load_checkpoint, state_dict_mismatch

PHI_54_END = 36  # features[:36] ends with relu5_4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsMissing(RuntimeError):
    pass


class VGGFeatures(nn.Module):
    """Frozen, eval-mode VGG19 trunk up to relu5_4. (N, 3, H, W) in [-1, 1] -> (N, 512, H/16, W/16)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features[:PHI_54_END]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always eval: it is a fixed loss network

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = ((img + 1.0) / 2.0 - self.mean) / self.std
        return self.features(x)

    @classmethod
    def random_for_tests(cls) -> "VGGFeatures":
        """Random weights: for tests of the mechanics only, never for training. Builds the
        conv trunk alone (the 120M-parameter classifier is never used)."""
        from torchvision.models.vgg import cfgs, make_layers

        return cls(make_layers(cfgs["E"], batch_norm=False))


def _help_text() -> str:
    return (
        "The VGG content loss needs ImageNet-pretrained VGG19 weights. Either let srdeploy download "
        f"torchvision's file once (needs internet; cached in {_cache_folder()}), copy {_torchvision_file()[1]} into "
        "that folder, or pass --vgg-weights FILE with a torchvision vgg19 state_dict."
    )


def _cache_folder() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub/checkpoints


def _torchvision_file() -> tuple[str, str, str]:
    """(URL, file name, sha256 prefix) of torchvision's ImageNet VGG19 weights: it names its
    files by the first hex digits of their sha256 (vgg19-dcbb9e9d.pth)."""
    from torchvision.models import VGG19_Weights

    url = VGG19_Weights.IMAGENET1K_V1.url
    name = url.rsplit("/", 1)[-1]
    return url, name, re.fullmatch(r".*-([0-9a-f]+)\.pth", name)[1]


def load_vgg_features(weights_file: str | os.PathLike | None = None) -> VGGFeatures:
    """ImageNet VGG19 from a local state_dict file, or torchvision's file (downloaded once
    into torch's cache). Both are loaded weights-only: torchvision's own loader unpickles
    its cached file in full, so whatever was put there under that name would run."""
    from torchvision.models import vgg19

    model = vgg19(weights=None)
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise VGGWeightsMissing(f"--vgg-weights {path}: file not found. {_help_text()}")
        return _loaded(model, path, f"--vgg-weights {path}")
    url, name, sha_prefix = _torchvision_file()
    cached = _cache_folder() / name
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=sha_prefix)  # checked, then moved into place
        except Exception as e:  # URLError, socket errors, hash mismatch...
            raise VGGWeightsMissing(f"could not load ImageNet VGG19 weights ({type(e).__name__}: {e}). {_help_text()}") from None
    if not sha256_file(cached).startswith(sha_prefix):
        raise VGGWeightsMissing(f"{cached}: not torchvision's {name} (its sha256 does not start with {sha_prefix}); "
                                f"delete it. {_help_text()}")
    return _loaded(model, cached, str(cached))


def _loaded(model: nn.Module, path: Path, shown: str) -> VGGFeatures:
    try:  # weights-only, and the same one-line reasons as every other weights file
        state = load_checkpoint(path)
    except ValueError as e:
        raise VGGWeightsMissing(f"{shown}: {str(e).removeprefix(f'{path}: ')}") from None
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise VGGWeightsMissing(f"{shown}: not a torchvision vgg19 state_dict ({mismatch})")
    model.load_state_dict(state)
    return VGGFeatures(model.features)
