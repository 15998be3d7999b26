"""The exported-model contract every runtime relies on (DESIGN.md, "Contracts").

input ``lr``: float32 NCHW, RGB in [0, 1]; output ``sr``: float32 NCHW in [0, 1], ``scale``
times larger; batch, height and width dynamic; one self-contained file (no external data).
"""

from __future__ import annotations

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
INPUT_RANGE = (0.0, 1.0)
OUTPUT_RANGE = (0.0, 1.0)
MANIFEST_NAME = "manifest.json"
