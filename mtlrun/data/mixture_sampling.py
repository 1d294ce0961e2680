"""Which source a training step of `data=mixture` reads, each source's endless stream of batches, and the
loaders that hand them out (with placeholders for the other sources' tasks).

Everything here is a pure function of (seed, epoch, step): the sources of an epoch are drawn at once from a
generator seeded by (seed, epoch), and source s's batches within a mixture epoch are its own shuffled epochs
one after the other (pass 0, 1, ... of mixture epoch e are the source's epochs e * PASSES + pass). So a run
resumed at step k of epoch e reads exactly what the uninterrupted run read from step k on (the checkpoint's
epoch and batch count are the sampler's whole state), and every DDP rank draws the same source at each step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch

DENSE = ("segmentation", "depth", "normals")  # per-pixel targets: [..., H, W] of the batch's image
SAMPLINGS = ("all", "proportional", "uniform", "temperature")
PASSES = 100_000  # source epochs reserved per mixture epoch: more passes than any run makes in one epoch
_SALT = 0x6D697874  # keeps the source draws apart from the shuffling streams that use (seed, epoch) as well


def source_probabilities(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> list[float]:
    """The probability of each source per step: proportional p_i ∝ n_i, uniform p_i = 1/k, temperature
    p_i ∝ n_i^(1/T) (T = 1 is proportional, T -> inf uniform; T5 / multilingual mixing)."""
    n = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
    if sampling == "uniform":
        weights = torch.ones_like(n)
    elif sampling == "proportional":
        weights = n
    elif sampling == "temperature":
        weights = n ** (1.0 / float(temperature))
    else:
        raise ValueError(f"sampling {sampling!r} draws no single source per step")
    return (weights / weights.sum()).tolist()


def draw_sources(probabilities: Sequence[float], *, seed: int, epoch: int, steps: int) -> list[int]:
    """The source index of each of an epoch's `steps` steps (drawn with replacement)."""
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + _SALT) % 2**63)
    p = torch.tensor(list(probabilities), dtype=torch.float64)
    return torch.multinomial(p, steps, replacement=True, generator=generator).tolist()


def draw_counts(draws: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    counts = Counter(draws)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def source_batches(module, *, epoch: int, start: int, seed: int, device, rank: int, world_size: int) -> Iterator:
    """Source `module`'s training batches of mixture epoch `epoch` from its `start`-th on, without end: its
    shuffled epochs in turn (a small source is read again, reshuffled, when a step wants more of it)."""
    per_pass = module.train_batches(world_size)
    passes, skip = divmod(start, per_pass)
    while True:
        yield from module.train_loader(epoch=epoch * PASSES + passes, seed=seed, device=device, rank=rank,
                                       world_size=world_size, skip_batches=skip)
        passes, skip = passes + 1, 0


class MixtureEpoch:
    """One epoch's training batches of a mixture from step `skip` on (its len: the steps left)."""

    def __init__(self, mixture, names: list[str], draws: list[int] | None, steps: int, where: dict,
                 skip: int):
        self.mixture, self.names, self.draws, self.steps = mixture, names, draws, steps
        self.where, self.skip = where, skip

    def __len__(self) -> int:
        return max(0, self.steps - self.skip)

    def __iter__(self):
        sources = self.mixture.sources
        if self.draws is None:  # sampling=all: the k-th step reads the k-th batch of every source
            streams = {n: source_batches(sources[n].module, start=self.skip, **self.where) for n in self.names}
            for _ in range(len(self)):
                parts = {n: self.mixture._pad(next(stream), sources[n]) for n, stream in streams.items()}
                yield {"sources": parts, "label_mask": _own_masks(parts)}
            return
        done = draw_counts(self.draws[:self.skip], self.names)  # what the steps before `skip` read of each source
        streams = {}
        for k in self.draws[self.skip:]:
            name = self.names[k]
            if name not in streams:
                streams[name] = source_batches(sources[name].module, start=done[name], **self.where)
            yield self.mixture._pad(next(streams[name]), sources[name])


class RoundRobin:
    """The sources' evaluation batches, one of each in turn, as mixture batches."""

    def __init__(self, mixture, loaders: dict):
        self.mixture, self.loaders = mixture, loaders

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self):
        iterators = {name: iter(loader) for name, loader in self.loaders.items()}
        while iterators:
            for name in list(iterators):
                batch = next(iterators[name], None)
                if batch is None:
                    del iterators[name]
                else:
                    yield self.mixture._pad(batch, self.mixture.sources[name])


def _own_masks(parts: dict) -> dict:
    """label_mask of a sampling=all step: each task's own source's mask (what counts the task as labelled)."""
    out = {}
    for part in parts.values():
        for task in part["tasks"]:
            mask = part["label_mask"].get(task, torch.ones(len(part["targets"][task]), dtype=torch.bool))
            out[task] = torch.cat([out[task], mask]) if task in out else mask
    return out


def placeholder(template: torch.Tensor, kind: str, inputs: dict, size: int) -> torch.Tensor:
    """Zeros for another source's task on this batch, shaped as the prediction on this batch will be: a
    per-pixel target takes this batch's image size, a per-token target its text length."""
    shape = list(template.shape)
    if kind in DENSE and len(shape) >= 2:
        image = next((x for x in inputs.values() if x.dim() == 4 and x.is_floating_point()), None)
        if image is not None:
            shape[-2:] = image.shape[-2:]
    elif kind == "tagging" and shape:
        text = next((x for x in inputs.values() if x.dim() == 2 and not x.is_floating_point()), None)
        if text is not None:
            shape[-1] = text.shape[-1]
    return torch.zeros(size, *shape, dtype=template.dtype)
