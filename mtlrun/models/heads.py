"""Task heads: map the shared representation to one task's prediction."""

from __future__ import annotations

from torch import nn


def make_head(in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """A linear head, or a one-hidden-layer MLP head when `hidden > 0`."""
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))
