"""srdeploy: SRGAN 4x face super-resolution from training to production.

This package holds what every stage shares (degradation, metrics, image I/O) and the
torch-free runtime. Training, export and serving live in ``srdeploy.training``,
``srdeploy.export`` and ``srdeploy.handlers`` (the top-level folders ``training/``,
``export/`` and ``handlers/`` of the source tree).
"""

__version__ = "0.1.0"

SCALE = 4
GREY_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 full range, as Pillow's RGB -> L: a grey input's output and its score
EXIT_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (SIGINT)
