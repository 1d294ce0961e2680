"""The training loop and what surrounds it: devices, checkpoints, DDP, evaluation, run records."""
