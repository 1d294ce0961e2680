"""multidigits generation, the batch-dict dataset and the train/eval loaders (single process and sharded)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mtlrun.data.base import DataSpec, ModalityInfo, TargetInfo, TensorDictDataset, collate
from mtlrun.data.loading import eval_loader, train_loader
from mtlrun.data.multidigits import MultiDigits, _source_pools, compose, overlap_area


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_the_digits_read_directly_are_scikit_learns(digits, monkeypatch):
    """mtlrun.data.digits_source reads scikit-learn's bundled CSV without importing scikit-learn (2 s a process):
    the arrays load_digits returns, and load_digits itself is used when the file is not where it was."""
    from mtlrun.data import digits_source

    images, labels = digits_source.load_digits()
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(labels, digits.target)
    assert images.dtype == np.float64 and labels.dtype == np.int64 and not images.flags.writeable
    digits_source.load_digits.cache_clear()
    monkeypatch.setattr(digits_source, "_bundled_csv", lambda: None)
    try:
        fallback_images, fallback_labels = digits_source.load_digits()
        np.testing.assert_array_equal(fallback_images, digits.images)
        np.testing.assert_array_equal(fallback_labels, digits.target)
    finally:
        digits_source.load_digits.cache_clear()


# ----------------------------------------------------------------------------------------------- compose


def test_compose_shape_range_and_labels(digits):
    pool = np.arange(0, 1797, 3)
    canvas, left, right, corners = compose(digits.images, digits.target, pool, 300, seed=5)
    assert canvas.shape == (300, 1, 16, 16)
    assert canvas.dtype == np.float32
    assert canvas.min() >= 0.0 and canvas.max() <= 1.0
    assert canvas.max() == 1.0  # digits use the full 0..16 range, scaled to [0, 1]
    assert left.shape == right.shape == (300,)
    assert corners.shape == (300, 4)
    # labels come from the pool's images only
    pool_labels = set(digits.target[pool].tolist())
    assert set(left.tolist()) <= pool_labels and set(right.tolist()) <= pool_labels
    assert len(set(left.tolist())) == 10 and len(set(right.tolist())) == 10


def test_compose_digits_stay_on_canvas_and_overlap(digits):
    _, _, _, corners = compose(digits.images, digits.target, np.arange(1797), 500, seed=1)
    yl, xl, yr, xr = corners.T
    for c in (yl, xl, yr, xr):
        assert c.min() >= 0 and c.max() + 8 <= 16  # a digit never wraps or leaves the 16x16 canvas
    area = overlap_area(corners)
    assert area.min() >= 16
    assert area.min() >= 18  # the module docstring's bound: shift <= 5 across, <= 2 up or down
    assert (xr > xl).all()  # the right digit is to the right of the left one


def test_overlap_area_by_hand():
    corners = np.array([[2, 0, 2, 3],    # same row, 3 px apart: 8 x 5
                        [2, 0, 4, 5],    # 2 px down, 5 px right: 6 x 3
                        [0, 0, 0, 8],    # side by side: no overlap
                        [0, 0, 9, 0]])   # stacked, gap: no overlap
    assert overlap_area(corners).tolist() == [40, 18, 0, 0]


def test_compose_jitter_varies(digits):
    _, _, _, corners = compose(digits.images, digits.target, np.arange(1797), 200, seed=2)
    distinct = {tuple(c) for c in corners.tolist()}
    assert len(distinct) >= 20
    # each coordinate and each relative shift takes more than one value
    yl, xl, yr, xr = corners.T
    assert len(set(yl)) > 1 and len(set(xl)) > 1
    assert len(set((yr - yl).tolist())) > 1 and len(set((xr - xl).tolist())) > 1


def _place(image: np.ndarray, y: int, x: int) -> np.ndarray:
    layer = np.zeros((16, 16), dtype=np.float32)
    layer[y:y + 8, x:x + 8] = image
    return layer


def test_compose_canvas_is_pixelwise_max_of_the_two_digits(digits):
    # One source image per class, so a sample's labels tell which images were used.
    first_of_class = np.array([np.flatnonzero(digits.target == c)[0] for c in range(10)])
    images, labels = digits.images[first_of_class], digits.target[first_of_class]
    assert labels.tolist() == list(range(10))
    canvas, left, right, corners = compose(images, labels, np.arange(10), 64, seed=3)
    for i in range(64):
        yl, xl, yr, xr = corners[i].tolist()
        expected = np.maximum(_place(images[left[i]], yl, xl), _place(images[right[i]], yr, xr)) / 16.0
        np.testing.assert_array_equal(canvas[i, 0], expected.astype(np.float32))


def test_compose_is_a_pure_function_of_the_seed(digits):
    pool = np.arange(1797)
    a = compose(digits.images, digits.target, pool, 50, seed=9)
    b = compose(digits.images, digits.target, pool, 50, seed=9)
    c = compose(digits.images, digits.target, pool, 50, seed=10)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


# ------------------------------------------------------------------------------------------ source pools


def test_source_pools_disjoint_cover_and_stratified(digits):
    labels = digits.target
    pools = _source_pools(labels, (0.6, 0.15, 0.25), seed=0)
    assert len(pools) == 3
    sets = [set(p.tolist()) for p in pools]
    assert all(len(s) == len(p) for s, p in zip(sets, pools))  # no duplicates within a pool
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(range(1797))
    for pool in pools:
        assert set(labels[pool].tolist()) == set(range(10))
    # sizes follow the fractions (per-class rounding: at most one image per class off)
    for pool, frac in zip(pools, (0.6, 0.15, 0.25)):
        assert abs(len(pool) - frac * 1797) <= 10
    # per class, too
    for cls in range(10):
        n_cls = int((labels == cls).sum())
        for pool, frac in zip(pools, (0.6, 0.15, 0.25)):
            assert abs(int((labels[pool] == cls).sum()) - frac * n_cls) <= 1


def test_source_pools_depend_on_seed(digits):
    a = _source_pools(digits.target, (0.6, 0.15, 0.25), seed=0)
    b = _source_pools(digits.target, (0.6, 0.15, 0.25), seed=0)
    c = _source_pools(digits.target, (0.6, 0.15, 0.25), seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


# ----------------------------------------------------------------------------------------- MultiDigits


def _all_tensors(splits):
    return {(split, group, name): t for split, ds in splits.items()
            for group, tensors in ds.tensors.items() for name, t in tensors.items()}


def test_multidigits_build_deterministic_and_seeded():
    kw = dict(n_train=40, n_val=12, n_test=20)
    a = _all_tensors(MultiDigits(seed=0, **kw).build())
    b = _all_tensors(MultiDigits(seed=0, **kw).build())
    c = _all_tensors(MultiDigits(seed=1, **kw).build())
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a[("train", "inputs", "image")], c[("train", "inputs", "image")])
    assert not torch.equal(a[("test", "inputs", "image")], c[("test", "inputs", "image")])


def test_multidigits_split_sizes_dtypes_and_splits_differ():
    data = MultiDigits(n_train=40, n_val=12, n_test=20, seed=0)
    sizes = {s: len(data.dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 40, "val": 12, "test": 20}
    train = data.dataset("train")
    assert set(train.tensors) == {"inputs", "targets"}
    image = train.tensors["inputs"]["image"]
    assert image.shape == (40, 1, 16, 16) and image.dtype == torch.float32
    for task in ("left", "right"):
        t = train.tensors["targets"][task]
        assert t.dtype == torch.long and t.shape == (40,)
        assert 0 <= t.min() and t.max() <= 9
    # splits use their own random stream: the first canvases differ
    assert not torch.equal(image[:12], data.dataset("val").tensors["inputs"]["image"])
    assert data.dataset("train") is train  # built once, lazily


def test_multidigits_spec():
    spec = MultiDigits(n_train=4, n_val=4, n_test=4).spec
    assert isinstance(spec, DataSpec)
    assert spec.modalities == {"image": ModalityInfo("image", (1, 16, 16), {"in_channels": 1, "input_size": (16, 16)})}
    assert set(spec.targets) == {"left", "right", "sum", "parity", "larger", "zero"}  # tasks=multidigits trains left + right
    for task in ("left", "right"):
        assert spec.targets[task] == TargetInfo("classification", num_classes=10)


def test_multidigits_unknown_split_is_a_usage_error():
    from mtlrun.errors import UsageError

    with pytest.raises(UsageError, match="split='validation'.*train, val, test"):
        MultiDigits(n_train=4, n_val=4, n_test=4).dataset("validation")


# --------------------------------------------------------------------------- TensorDictDataset, collate


def _toy_dataset(n: int, with_masks: bool = False) -> TensorDictDataset:
    g = torch.Generator().manual_seed(0)
    inputs = {"image": torch.rand(n, 1, 4, 4, generator=g), "table": torch.randn(n, 3, generator=g)}
    targets = {"a": torch.arange(n), "b": torch.randn(n, 2, generator=g)}
    if not with_masks:
        return TensorDictDataset(inputs, targets)
    label_mask = {"a": torch.arange(n) % 2 == 0, "b": torch.arange(n) % 3 != 0}
    modality_mask = {"table": torch.arange(n) % 4 != 1}
    return TensorDictDataset(inputs, targets, label_mask=label_mask, modality_mask=modality_mask)


def _assert_batch_equal(x: dict, y: dict):
    assert x.keys() == y.keys()
    for group in x:
        assert x[group].keys() == y[group].keys()
        for name in x[group]:
            assert x[group][name].dtype == y[group][name].dtype
            assert torch.equal(x[group][name], y[group][name]), (group, name)


@pytest.mark.parametrize("with_masks", [False, True])
def test_getitems_equals_stacked_getitem(with_masks):
    ds = _toy_dataset(10, with_masks)
    assert len(ds) == 10
    indices = [7, 0, 3, 3, 9]
    batch = ds.__getitems__(indices)
    expected_keys = {"inputs", "targets", "label_mask", "modality_mask"} if with_masks else {"inputs", "targets"}
    assert set(batch) == expected_keys
    stacked = {group: {name: torch.stack([ds[i][group][name] for i in indices]) for name in batch[group]}
               for group in batch}
    _assert_batch_equal(batch, stacked)


def test_dataset_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="same length"):
        TensorDictDataset({"x": torch.zeros(4, 2)}, {"y": torch.zeros(5)})


def test_collate_passes_batch_dict_through_and_stacks_samples():
    ds = _toy_dataset(6, with_masks=True)
    batch = ds.__getitems__([1, 2, 5])
    assert collate(batch) is batch
    collated = collate([ds[1], ds[2], ds[5]])
    _assert_batch_equal(collated, batch)


# -------------------------------------------------------------------------------------------- loaders


def _index_dataset(n: int) -> TensorDictDataset:
    return TensorDictDataset({"x": torch.arange(n, dtype=torch.float32).unsqueeze(1)}, {"i": torch.arange(n)})


def _batches(loader) -> list[list[int]]:
    out = []
    for batch in loader:
        ids = batch["targets"]["i"].tolist()
        assert batch["inputs"]["x"].squeeze(1).long().tolist() == ids  # inputs and targets stay aligned
        out.append(ids)
    return out


def _flat(batches):
    return [i for b in batches for i in b]


def test_train_loader_two_ranks_even_length_disjoint_and_cover():
    ds = _index_dataset(12)
    ranks = [_flat(_batches(train_loader(ds, batch_size=4, seed=3, epoch=0, rank=r, world_size=2,
                                         drop_last=False))) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(12))


@pytest.mark.parametrize("n,world", [(13, 2), (10, 3), (11, 3), (12, 3)])
def test_train_loader_ranks_pad_with_fewer_than_world_size_duplicates(n, world):
    ds = _index_dataset(n)
    ranks = [_flat(_batches(train_loader(ds, batch_size=3, seed=3, epoch=1, rank=r, world_size=world,
                                         drop_last=False))) for r in range(world)]
    per_rank = -(-n // world)  # every rank gets ceil(n / world) samples
    padding = per_rank * world - n
    assert padding <= world - 1
    assert all(len(r) == per_rank for r in ranks)
    assert all(len(set(r)) == per_rank for r in ranks)  # no duplicates inside a rank
    assert set().union(*map(set, ranks)) == set(range(n))  # together they cover the dataset
    counts = Counter(i for r in ranks for i in r)
    # exactly `padding` samples are seen twice, none more often
    assert sorted(counts.values()) == [1] * (n - padding) + [2] * padding


def test_train_loader_single_process_is_a_permutation_with_batches():
    ds = _index_dataset(10)
    batches = _batches(train_loader(ds, batch_size=4, seed=0, epoch=0, drop_last=False))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(_flat(batches)) == list(range(10))
    assert _flat(batches) != list(range(10))  # shuffled


def test_train_loader_drop_last():
    ds = _index_dataset(10)
    assert [len(b) for b in _batches(train_loader(ds, batch_size=4, seed=0, epoch=0))] == [4, 4]
    # a shard shorter than one batch is kept rather than dropped to nothing
    loader = train_loader(ds, batch_size=8, seed=0, epoch=0, rank=1, world_size=2)
    assert [len(b) for b in _batches(loader)] == [5]


def test_train_loader_order_is_a_function_of_seed_and_epoch():
    ds = _index_dataset(40)

    def order(seed, epoch, rank=0):
        return _batches(train_loader(ds, batch_size=5, seed=seed, epoch=epoch, rank=rank, world_size=2))

    assert order(7, 2) == order(7, 2)
    assert order(7, 2, rank=1) == order(7, 2, rank=1)
    assert order(7, 2) != order(7, 3)
    assert order(7, 2) != order(8, 2)
    assert sorted(_flat(order(7, 2)) + _flat(order(7, 2, rank=1))) == list(range(40))


@pytest.mark.parametrize("skip", [1, 3, 5, 7])
def test_train_loader_skip_batches_gives_the_tail(skip):
    ds = _index_dataset(30)
    kw = dict(batch_size=4, seed=11, epoch=4, rank=1, world_size=2, drop_last=False)
    full = _batches(train_loader(ds, **kw))
    assert len(full) == 4  # 15 samples on rank 1 -> 4, 4, 4, 3
    loader = train_loader(ds, skip_batches=skip, **kw)
    assert len(loader) == max(0, len(full) - skip)
    assert _batches(loader) == full[skip:]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [10, 11, 12])
def test_eval_loader_shards_exactly_once(world, n):
    ds = _index_dataset(n)
    shards = [_flat(_batches(eval_loader(ds, batch_size=2, rank=r, world_size=world))) for r in range(world)]
    flat = _flat(shards)
    assert len(flat) == n  # no padding
    assert len(set(flat)) == n  # no duplicates, hence disjoint shards
    assert set(flat) == set(range(n))
    for r, shard in enumerate(shards):
        assert shard == list(range(r, n, world))  # deterministic, unshuffled


def test_eval_loader_single_process_keeps_order_and_last_partial_batch():
    batches = _batches(eval_loader(_index_dataset(7), batch_size=3))
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_persistent_workers_serve_every_epoch_with_the_same_batches():
    """data.persistent_workers=true: one loader per split, its 2 worker processes kept across epochs, and per
    epoch (and after a mid-epoch resume's skip) exactly the batches of a fresh loader; eval shards of an odd
    split still cover every sample once."""
    fresh = MultiDigits(n_train=90, n_val=13, n_test=13, batch_size=8, num_workers=0)
    kept = MultiDigits(n_train=90, n_val=13, n_test=13, batch_size=8, num_workers=2, persistent_workers=True)
    cpu = torch.device("cpu")
    first = kept.train_loader(epoch=0, seed=5, device=cpu, rank=1, world_size=2)
    workers = None
    for epoch, skip in ((0, 0), (1, 0), (2, 3)):
        loader = kept.train_loader(epoch=epoch, seed=5, device=cpu, rank=1, world_size=2, skip_batches=skip)
        assert loader is first
        got = [b["targets"]["left"].tolist() for b in loader]
        want = [b["targets"]["left"].tolist() for b in fresh.train_loader(epoch=epoch, seed=5, device=cpu, rank=1,
                                                                           world_size=2, skip_batches=skip)]
        assert got == want and len(got) == 5 - skip  # 45 samples on rank 1 -> 5 full batches of 8
        pids = [w.pid for w in loader._iterator._workers]
        assert workers is None or pids == workers  # the same worker processes every epoch
        workers = pids
    for split in ("val", "test"):
        shards = [kept.eval_loader(split, device=cpu, rank=r, world_size=2) for r in range(2)]
        assert shards[0] is kept.eval_loader(split, device=cpu, rank=0, world_size=2)
        for _ in range(2):  # a second pass through the kept loaders gives the same
            seen = [b["targets"]["left"] for loader in shards for b in loader]
            assert sum(len(t) for t in seen) == 13
            assert torch.equal(torch.cat(seen).sort().values,
                               torch.cat([b["targets"]["left"] for b in fresh.eval_loader(split, device=cpu)]).sort().values)
    from mtlrun.errors import UsageError

    with pytest.raises(UsageError, match="data.persistent_workers=yes: must be true or false"):
        MultiDigits(n_train=90, n_val=13, n_test=13, persistent_workers="yes")
