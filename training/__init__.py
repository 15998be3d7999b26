"""Training: the SRResNet generator, the SRGAN discriminator, data, losses and loops.

Importing this package does not import torch; its modules do.
"""
