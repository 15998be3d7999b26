"""The torch-free runtime: the exported-model contract and manifests, shipped models, engines, tiling, the Upscaler."""
