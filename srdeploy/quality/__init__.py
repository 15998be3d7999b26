"""The quality protocol: the LR degradation and PSNR/SSIM on the Y channel."""
