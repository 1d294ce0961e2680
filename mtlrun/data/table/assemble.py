"""From what the fields read over the whole manifest to the datasets of the splits, and decoding every file
once (`validate: full`, `cache: true`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from mtlrun.data.base import DataSpec
from mtlrun.data.table.augment import Augment
from mtlrun.data.table.dataset import MASK_GROUPS, DecodeAll, FileColumn, TableDataset, passthrough
from mtlrun.data.table.fields.base import Field, Reading
from mtlrun.data.table.manifest import Manifest, Problems

log = logging.getLogger("mtlrun")


@dataclass
class Prepared:
    """What a Table serves once read: its spec, its splits and the state that goes in the checkpoint."""

    spec: DataSpec
    splits: dict[str, TableDataset]
    state: dict = field(default_factory=dict)
    manifest: Manifest | None = None  # for the samples' ids (Table.sample_ids)
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # each split's manifest rows


def slot(f: Field) -> str:
    """A field's key among all fields read: an input and a target may share a name."""
    return f.name if f.role == "inputs" else f"target:{f.name}"


def assemble(reading: Reading, fields: list[Field], values: dict, splits: dict[str, np.ndarray],
             targets: list[Field], augment: Augment) -> Prepared:
    """The datasets of the splits from `values` (slot -> (values, present) over every manifest row), the spec
    from every declared input (reading.inputs) and target."""
    m = reading.m
    readers = {slot(f): reader for f in fields if (reader := f.reader(reading)) is not None}
    spec = DataSpec({f.name: f.info(reading) for f in reading.inputs}, {f.name: f.info(reading) for f in targets})
    datasets = {}
    for split, rows in splits.items():
        tensors = {"inputs": {}, "targets": {}, "label_mask": {}, "modality_mask": {}}
        files = []
        idx = torch.from_numpy(rows)
        for f in fields:
            key = slot(f)
            data, present = values[key]
            present = torch.from_numpy(present[rows])
            if not bool(present.all()):
                tensors[MASK_GROUPS[f.role]][f.name] = present
            if key in readers:
                files.append(FileColumn(f.role, f.name, readers[key], data[rows], rows,
                                        (m.path, m.numbers, m.lines, f.column)))
            else:
                tensors[f.role][f.name] = data.index_select(0, idx)
        tensors = {g: d for g, d in tensors.items() if d or g in ("inputs", "targets")}
        datasets[split] = TableDataset(tensors, files, len(rows), augment if split == "train" and augment else None)
    state = reading.state if reading.loaded is None else reading.loaded
    return Prepared(spec, datasets, state, m, splits)


def decode_everything(prepared: Prepared, problems: Problems, cache: bool, num_workers: int) -> None:
    """Decode every file once (num_workers processes); problems are collected; the tensors kept if `cache`."""
    columns = [c for ds in prepared.splits.values() for c in ds.files]
    total = sum(int((c.paths != "").sum()) for c in columns)
    log.info(f"data=table: decoding {total} files ({'cache' if cache else 'validate=full'})")
    for column in columns:
        job = DecodeAll(column)
        store = column.reader.blank(len(column.paths)).to(column.reader.stored_dtype) if cache else None
        loader = DataLoader(job, batch_size=64, collate_fn=passthrough, num_workers=num_workers)
        for items in loader:
            for i, tensor, problem in items:
                if problem is not None:
                    problems.add(problem, group=("decode", column.role, column.name))
                elif store is not None:
                    store[i] = tensor.to(store.dtype)
        if store is not None:
            column.cache = store
