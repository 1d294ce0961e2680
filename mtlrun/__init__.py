"""mtlrun: config-driven training of multi-task and multi-modal PyTorch models."""

__version__ = "0.1.0"
