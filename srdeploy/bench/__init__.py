"""`srdeploy bench`: every engine on the same inputs, against PyTorch and the CPU's measured ceilings."""
