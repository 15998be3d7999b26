"""Serving: the TorchServe handler and the NAME.mar builder (srdeploy package)."""
