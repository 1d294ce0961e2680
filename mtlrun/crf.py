"""A linear-chain CRF over a tagging head's outputs (`Tagging(crf=true)`; Lafferty et al. 2001, Lample et al.
2016): the negative log-likelihood as the loss, Viterbi decoding at evaluation.

The head (mtlrun.models.heads.CRFHead) predicts the chain's potentials, float [B, L, C, C]:
`potentials[b, i, p, c]` scores tag p at token i - 1 followed by tag c at token i (emission of c + transition
p -> c). Token 0 has no predecessor: every row p of `potentials[b, 0]` is the same, start(c) + emission(c).
A sentence's last real token also adds end(c). A padding token is a copy step: 0 on the diagonal, NEVER (a
finite -inf) elsewhere, so a path carries its tag through the padding unchanged and the padding changes no score.

Tokens without a tag (target -1: padding, a word's later sub-words) are latent: the likelihood sums over their
tags. So the NLL of a sentence is log Z - log Z(paths that agree with every given tag), both by the forward
algorithm; a sentence with no tag gives exactly 0. Both loops run over the L positions, batched over the
sentences (no loop over samples, no host sync).
"""

from __future__ import annotations

import torch

# "impossible" as a finite score: logsumexp of nothing but -inf has a NaN gradient; exp(-1e9) is 0 all the same
NEVER = -1e9


def chain_potentials(emissions: torch.Tensor, transitions: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """float32 [B, L, C, C] from emissions [B, L, C], transitions [C, C], start [C], end [C] and the token
    mask [B, L] (True at a real token); see the module doc."""
    emissions = emissions.float()
    b, length, c = emissions.shape
    steps = emissions.unsqueeze(2) + transitions.float()  # [B, L, C(prev), C(cur)]
    first = (emissions[:, :1] + start.float()).unsqueeze(2).expand(b, 1, c, c)
    steps = torch.cat([first, steps[:, 1:]], 1)
    real = mask.clone()
    real[:, 0] = True  # token 0 always starts the chain (an empty text: a chain of one latent token)
    last = (real.long().cumsum(1) == real.sum(1, keepdim=True)) & real  # the last real token
    steps = steps + torch.where(last, 1.0, 0.0).to(steps.dtype)[:, :, None, None] * end.float()
    tags = torch.arange(c, device=emissions.device)
    eye = tags[:, None] == tags[None, :]  # not torch.eye: ONNX Runtime has no boolean EyeLike
    copy = torch.where(eye, 0.0, NEVER).to(steps.dtype)
    return torch.where(real[:, :, None, None], steps, copy)


def _constraint(target: torch.Tensor, num_tags: int, ignore_index: int) -> torch.Tensor:
    """[B, L, C]: 0 for the tags a path may take at each token (only the given one, any where none), NEVER else."""
    given = target != ignore_index
    one_hot = torch.nn.functional.one_hot(torch.where(given, target, 0).long(), num_tags).bool()
    return torch.where(~given.unsqueeze(-1) | one_hot, 0.0, NEVER)


def log_partition(potentials: torch.Tensor, constraint: torch.Tensor | None = None) -> torch.Tensor:
    """log of the sum over tag paths of exp(score) [B] (forward algorithm), over the paths `constraint`
    [B, L, C] allows (0 / NEVER per tag), or over all of them."""
    alpha = potentials[:, 0, 0]
    if constraint is not None:
        alpha = alpha + constraint[:, 0]
    for i in range(1, potentials.shape[1]):
        alpha = torch.logsumexp(alpha.unsqueeze(2) + potentials[:, i], dim=1)
        if constraint is not None:
            alpha = alpha + constraint[:, i]
    return torch.logsumexp(alpha, dim=1)


def negative_log_likelihood(potentials: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """[B]: -log P(the given tags) with the untagged tokens summed over; 0 for a sentence with no tag."""
    constraint = _constraint(target, potentials.shape[-1], ignore_index)
    nll = log_partition(potentials) - log_partition(potentials, constraint)
    return torch.where((target != ignore_index).any(1), nll, 0.0)


def viterbi(potentials: torch.Tensor) -> torch.Tensor:
    """long [B, L]: the highest-scoring tag path of each sentence (at padding: the last real token's tag)."""
    score = potentials[:, 0, 0]
    pointers = []
    for i in range(1, potentials.shape[1]):
        score, best = (score.unsqueeze(2) + potentials[:, i]).max(dim=1)
        pointers.append(best)
    tag = score.argmax(dim=1)
    path = [tag]
    for best in reversed(pointers):
        tag = best.gather(1, tag.unsqueeze(1)).squeeze(1)
        path.append(tag)
    return torch.stack(path[::-1], dim=1)
