"""The global gradient norm the training loop logs as `grad_norm` (a diagnostic: it changes nothing)."""

from __future__ import annotations


def grad_norm(optimizer, scaler=None):
    """The global L2 norm of the gradients (a device tensor: no host sync), as clip_grad_norm_ returns it;
    with fp16 loss scaling the gradients are still scaled here, so the scale is divided out."""
    import torch

    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return None
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return norm / scaler.get_scale() if scaler is not None else norm
