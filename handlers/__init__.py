"""Serving: the TorchServe handler and the srgan.mar builder."""
