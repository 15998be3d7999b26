"""Validation during training: PSNR/SSIM-Y (the quality protocol of srdeploy.quality.metrics) on
held-out HR images, the bicubic baseline for reference, and a bicubic | SR | HR grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from srdeploy.quality.metrics import evaluate_pair, smallest_side
from srdeploy.training.config import TrainConfig
from srdeploy.training.data import SRDataset

GRID_IMAGES = 4


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> uint8 (H, W, 3), rounded as the protocol says."""
    x = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def bicubic_x(lr: torch.Tensor, scale: int) -> np.ndarray:
    """The PIL bicubic baseline of one LR tensor (3, h, w) in [0, 1] -> uint8 (sh, sw, 3)."""
    from PIL import Image

    from srdeploy.quality.degrade import upscale_bicubic

    arr = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.asarray(upscale_bicubic(Image.fromarray(arr), scale))


class Validator:
    def __init__(self, cfg: TrainConfig, device: torch.device, batch_size: int = 8):
        self.device, self.batch_size, self.scale = device, batch_size, cfg.scale
        # An image too small to score is skipped with a warning naming it, like a bad one.
        self.data = SRDataset(cfg.val_data, cfg.val_list, None, cfg.scale, cfg.downsample, flip=False, limit=cfg.val_limit,
                              min_side=-(-smallest_side() // cfg.scale) * cfg.scale,  # the crop is a multiple of the scale
                              needed_for="the least PSNR/SSIM-Y can score")
        self.skipped = self.data.skipped
        self.pairs = [self.data[i] for i in range(len(self.data))]  # small: decoded once
        bicubic = [evaluate_pair(bicubic_x(lr, cfg.scale), to_uint8(hr)) for lr, hr in self.pairs]
        self.bicubic_psnr_y = float(np.mean([m["psnr_y"] for m in bicubic]))

    @torch.no_grad()
    def run(self, generator: torch.nn.Module, grid_path: Path | None = None) -> dict[str, float]:
        was_training = generator.training
        generator.eval()
        metrics, mse, grid = [], [], []
        for start in range(0, len(self.pairs), self.batch_size):
            chunk = self.pairs[start : start + self.batch_size]
            by_size: dict[tuple, list[int]] = {}
            for i, (lr, _) in enumerate(chunk):  # images of different sizes cannot share a batch
                by_size.setdefault(tuple(lr.shape), []).append(i)
            for idx in by_size.values():
                lr = torch.stack([chunk[i][0] for i in idx]).to(self.device)
                sr = generator(lr).float().cpu()  # (n, 3, sH, sW) in [-1, 1]
                for j, i in enumerate(idx):
                    hr = chunk[i][1]
                    mse.append(torch.mean((sr[j] - hr) ** 2).item())
                    sr_u8, hr_u8 = to_uint8(sr[j]), to_uint8(hr)
                    metrics.append(evaluate_pair(sr_u8, hr_u8))
                    if start + i < GRID_IMAGES:
                        grid.append((start + i, [bicubic_x(chunk[i][0], self.scale), sr_u8, hr_u8]))
        generator.train(was_training)
        if grid_path is not None and grid:
            from srdeploy.training.figures import save_sample_grid

            save_sample_grid([row for _, row in sorted(grid, key=lambda t: t[0])], grid_path, title=grid_path.stem)
        return {
            "psnr_y": float(np.mean([m["psnr_y"] for m in metrics])),
            "ssim_y": float(np.mean([m["ssim_y"] for m in metrics])),
            "psnr_rgb": float(np.mean([m["psnr_rgb"] for m in metrics])),
            "hf_ratio": float(np.mean([m["hf_ratio"] for m in metrics])),  # whether an adversarial run adds detail
            "mse": float(np.mean(mse)),
            "bicubic_psnr_y": self.bicubic_psnr_y,
            "images": len(metrics),
        }
