"""Reads the manifest once, validates every cell and file, fits on the train split and builds the splits."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mtlrun.checks import is_real
from mtlrun.data import media
from mtlrun.data.base import SPLITS, DataSpec, ModalityInfo, TargetInfo
from mtlrun.data.table.cells import BOOLEAN_WORDS, _canon, _labels, _means, _numbers, _sorted_labels
from mtlrun.data.table.dataset import FileColumn, Reader, TableDataset, _DecodeAll, _passthrough
from mtlrun.data.table.fields import FILE_TYPES, FieldSpec
from mtlrun.data.table.manifest import _Problems, read_manifest
from mtlrun.data.text import Tokenizer
from mtlrun.errors import ConfigError, UsageError

log = logging.getLogger("mtlrun")


@dataclass
class _Prepared:
    spec: DataSpec
    splits: dict[str, TableDataset]
    state: dict = field(default_factory=dict)


class _Builder:
    """Reads the manifest once, validates every cell and file, fits on train, and builds the splits."""

    def __init__(self, table):  # the Table (datamodule.py, which imports this module)
        self.t = table
        self.loaded = table._loaded
        self.problems = _Problems()
        self.state = {"classes": {}, "categories": {}, "numeric": {}, "tokenizers": {}, "sizes": {}, "targets": {}}
        self.cardinalities: dict[str, list[int]] = {}  # tabular input -> categories per categorical column
        self.vocab: dict[str, tuple[int, int]] = {}  # text input -> (vocab_size, max_len)

    def run(self) -> _Prepared:
        t, p = self.t, self.problems
        m = read_manifest(t.path, p, t.encoding)
        self.m = m
        if m.rows == 0:
            p.add(f"{t.path}: the manifest has no data rows")
            p.raise_if_any()
        fields = [f for f in [*t.inputs, *t.targets] if self._columns_exist(f)]
        self.splits = self._assign_splits()
        train = self.splits["train"]
        values: dict[str, tuple] = {}
        for f in fields:
            handler = getattr(self, f"_{f.type}")
            values[f.name if f.role == "inputs" else f"target:{f.name}"] = handler(f, train)
        p.raise_if_any()
        prepared = self._assemble(fields, values)
        if t.validate == "full" or t.cache:
            self._decode_everything(prepared)
            p.raise_if_any()
        return prepared

    # ------------------------------------------------------------------ columns and splits
    def _columns_exist(self, f: FieldSpec) -> bool:
        missing = [c for c in f.columns if c not in self.m.cells]
        for c in missing:
            option = "column" if "column" in f.options and f.options.get("column") == c else \
                next(o for o in ("columns", "numeric", "categorical") if c in (f.options.get(o) or []))
            self.problems.add(f"{f.key}.{option}: {self.m.path} has no column '{c}'; available: "
                              f"{', '.join(self.m.columns)}")
        return not missing

    def _assign_splits(self) -> dict[str, np.ndarray]:
        m, s, p = self.m, self.t.split, self.problems
        if "ratios" in s:
            r = np.asarray(s["ratios"], dtype=np.float64)
            r = r / r.sum()
            n_val, n_test = round(r[1] * m.rows), round(r[2] * m.rows)
            order = np.random.default_rng(s["seed"]).permutation(m.rows)
            parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
            parts = {k: np.sort(parts[k]) for k in SPLITS}
        else:
            column = s["column"]
            if column not in m.cells:
                p.add(f"data.split.column: {m.path} has no column '{column}' to split by; available: "
                      f"{', '.join(m.columns)}; or use data.split={{ratios: [0.8, 0.1, 0.1], seed: 0}}")
                return {"train": np.arange(m.rows), "val": np.arange(0), "test": np.arange(0)}
            names = np.array(["" if c is None else str(c).strip().lower() for c in m.cells[column]])
            for row in np.flatnonzero(~np.isin(names, SPLITS)):
                cell = m.cells[column][row]
                what = "empty" if cell is None else f"{cell!r} is not a split"
                p.add(f"{m.at(int(row), column)}: {what}; every row needs train, val or test", group=("split", column))
            parts = {k: np.flatnonzero(names == k) for k in SPLITS}
        for k in SPLITS:
            if len(parts[k]) == 0 and not p:
                p.add(f"data.split: the {k} split of {m.path} has no row; every split needs at least one")
        return parts

    # ------------------------------------------------------------------ one handler per type
    # Each returns per-row data over the whole manifest: (values, present) with placeholders where absent.
    def _fitted(self, section: str, name: str, fit):
        """The state entry `section/name`: from the checkpoint if loaded, else `fit()` on the train split."""
        if self.loaded is not None:
            if name not in self.loaded[section]:
                raise UsageError(f"data=table: the checkpoint's data state has no {section} for '{name}'")
            value = self.loaded[section][name]
        else:
            value = fit()
        self.state[section][name] = value
        return value

    def _train_has_some(self, f: FieldSpec, present: np.ndarray, train: np.ndarray, column: str) -> bool:
        if self.loaded is None and not present[train].any():
            what = "label" if f.role == "targets" else "value"
            why = "a task needs labelled training rows" if f.role == "targets" else "nothing to fit on"
            self.problems.add(f"{f.key}: {self.m.path}, column '{column}': no row of the train split has a {what}; "
                              f"{why}")
            return False
        return True

    def _labels_to_codes(self, f: FieldSpec, labels: list, present: np.ndarray, classes: list) -> np.ndarray:
        index = {c: i for i, c in enumerate(classes)}
        codes = np.full(len(labels), -1, dtype=np.int64)
        origin = "the checkpoint's" if self.loaded is not None else "the train split's"
        for row in np.flatnonzero(present):
            code = index.get(labels[row])
            if code is None:
                present[row] = False
                if f.options["unknown"] == "error":
                    shown = ", ".join(map(repr, classes[:12])) + (", ..." if len(classes) > 12 else "")
                    self.problems.add(f"{self.m.at(int(row), f.column)}: class {labels[row]!r} is not among "
                                      f"{origin} {len(classes)} classes ({shown}); fix the cell, or set "
                                      f"{f.key}.unknown=missing to read it as a missing label",
                                      group=("unknown", f.key))
            else:
                codes[row] = code
        return codes

    def _label_column(self, f: FieldSpec, train: np.ndarray):
        """(labels, present) of a label column, or None when it cannot be read or train has no label."""
        labels = _labels(self.m, f.column, self.problems)
        if labels is None:
            return None
        present = np.array([v is not None for v in labels])
        if not self._train_has_some(f, present, train, f.column):
            return None
        return labels, present

    def _boolean_label(self, f: FieldSpec, option: str, labels: Sequence):
        """The one label of the column that a YAML boolean option means (`positive: yes` reads as True), or
        None and a problem when no label or several labels mean it."""
        flag = f.options[option]
        matches = _sorted_labels(v for v in labels if v is not None and _means(flag, v))
        if len(matches) == 1:
            log.info(f"{f.key}.{option}: YAML read it as the boolean {str(flag).lower()}; it matches the label "
                     f"{matches[0]!r} of column '{f.column}'")
            return matches[0]
        if matches:
            found = f"several labels that mean {str(flag).lower()}: {', '.join(map(repr, matches))}"
        else:
            shown = _sorted_labels(v for v in labels if v is not None)
            found = (f"no label that means {str(flag).lower()} (labels: "
                     f"{', '.join(map(repr, shown[:6]))}{', ...' if len(shown) > 6 else ''})")
        example = matches[0] if matches else BOOLEAN_WORDS[flag][0]
        self.problems.add(f"{f.key}.{option}={str(flag).lower()}: YAML reads an unquoted yes / no / true / false / "
                          f"on / off as a boolean, and column '{f.column}' of {self.m.path} has {found}; quote the "
                          f"label as the column writes it, e.g. {option}: \"{example}\"")
        return None

    def _classification(self, f: FieldSpec, train: np.ndarray):
        if (column := self._label_column(f, train)) is None:
            return None
        labels, present = column
        classes = self._fitted("classes", f.name, lambda: _sorted_labels(labels[i] for i in train if present[i]))
        if self.loaded is None and len(classes) == 1:
            log.warning(f"{f.key}: every labelled row of the train split has the class {classes[0]!r} (column "
                        f"'{f.column}' of {self.m.path}); the task has a single class to learn, so it learns "
                        f"nothing useful; training continues")
        codes = self._labels_to_codes(f, labels, present, classes)
        return torch.from_numpy(codes), present

    def _binary(self, f: FieldSpec, train: np.ndarray):
        if (column := self._label_column(f, train)) is None:
            return None
        labels, present = column

        def fit():
            seen = {labels[i] for i in train if present[i]}
            positive = f.options["positive"]
            if isinstance(positive, bool):
                positive = self._boolean_label(f, "positive", labels)
                if positive is None:
                    return []
            if positive is not None:
                positive = _canon(positive)[1]
                seen.add(positive)
            ordered = _sorted_labels(seen)
            if len(ordered) > 2:
                self.problems.add(f"{f.key}: {self.m.path}, column '{f.column}' has {len(ordered)} values in the "
                                  f"train split ({', '.join(map(repr, ordered[:6]))}); a binary target has two; use "
                                  f"type: classification")
                return ordered[:2]
            if len(ordered) == 1:
                self.problems.add(f"{f.key}: {self.m.path}, column '{f.column}' has the single value "
                                  f"{ordered[0]!r} in the train split; set {f.key}.positive to the positive label")
                return ordered
            if positive is not None and ordered[1] != positive:
                ordered = ordered[::-1]
            return ordered  # [negative, positive]

        before = sum(self.problems.counts.values())
        classes = self._fitted("classes", f.name, fit)
        if sum(self.problems.counts.values()) > before:
            return None  # not two classes: every other row would only repeat it
        codes = self._labels_to_codes(f, labels, present, classes)
        target = torch.from_numpy(codes).float()
        return torch.where(torch.from_numpy(present), target, torch.full_like(target, float("nan"))), present

    def _multilabel(self, f: FieldSpec, train: np.ndarray):
        m, sep, none = self.m, f.options["sep"], f.options["none"]
        if isinstance(none, bool):
            none = self._boolean_label(f, "none", [c.strip() for c in m.cells[f.column] if isinstance(c, str)])
            if none is None:
                return None
        sets, present = [], np.zeros(m.rows, dtype=bool)
        for row, cell in enumerate(m.cells[f.column]):
            if cell is None:
                sets.append(None)
                continue
            if isinstance(cell, str):
                items = [] if none is not None and cell.strip() == none else [s for s in cell.split(sep) if s.strip()]
            elif isinstance(cell, list):
                items = cell
            else:
                items = [cell]
            canon = [_canon(x) for x in items]
            bad = [x for (kind, _), x in zip(canon, items) if kind not in ("number", "text", "boolean")]
            if bad:
                self.problems.add(f"{m.at(row, f.column)}: labels must be numbers or texts, got {bad[0]!r}",
                                  group=("kind", f.key))
            sets.append({v for kind, v in canon if kind in ("number", "text", "boolean")})
            present[row] = True
        kinds = {type(v).__name__ if not is_real(v) else "number" for s in sets if s for v in s}
        if len(kinds) > 1:
            self.problems.add(f"{m.path}, column '{f.column}': mixed types: labels of kinds "
                              f"{', '.join(sorted(kinds))}; a label column holds only numbers or only texts",
                              group=("mixed", f.key))
            return None
        if not self._train_has_some(f, present, train, f.column):
            return None
        labels = self._fitted("classes", f.name,
                              lambda: _sorted_labels(v for i in train if present[i] for v in sets[i]))
        index = {c: i for i, c in enumerate(labels)}
        target = torch.full((m.rows, len(labels)), float("nan"))
        origin = "the checkpoint's" if self.loaded is not None else "the train split's"
        for row in np.flatnonzero(present):
            unknown = [v for v in sets[row] if v not in index]
            if unknown:
                present[row] = False
                if f.options["unknown"] == "error":
                    self.problems.add(f"{m.at(int(row), f.column)}: label {unknown[0]!r} is not among {origin} "
                                      f"{len(labels)} labels; fix the cell, or set {f.key}.unknown=missing to read "
                                      f"it as a missing label", group=("unknown", f.key))
                continue
            target[row] = 0.0
            target[row, [index[v] for v in sets[row]]] = 1.0
        return target, present

    def _regression(self, f: FieldSpec, train: np.ndarray):
        cols = [_numbers(self.m, c, f.key, self.problems) for c in f.columns]
        values = np.stack([v for v, _ in cols], axis=1)
        present = np.all(np.stack([p for _, p in cols], axis=1), axis=1)
        if not self._train_has_some(f, present, train, f.column):
            return None
        if f.options["standardize"]:  # the train split's mean and std per column, kept in the checkpoint

            def fit():
                x = values[train][present[train]]
                std = x.std(axis=0)
                return {"mean": x.mean(axis=0).tolist(), "std": np.where(std > 1e-12, std, 1.0).tolist()}

            stats = self._fitted("targets", f.name, fit)
            values = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
        target = torch.from_numpy(values).float()
        target[torch.from_numpy(~present)] = float("nan")
        return target, present

    def _tabular(self, f: FieldSpec, train: np.ndarray):
        m, o = self.m, f.options
        numeric = [_numbers(m, c, f.key, self.problems) for c in o["numeric"]]
        if numeric:
            values = np.stack([v for v, _ in numeric], axis=1)
            given = np.stack([p for _, p in numeric], axis=1)
            for j, column in enumerate(o["numeric"]):
                self._train_has_some(f, given[:, j], train, column)

            def fit():
                stats = {"mean": [], "std": []}
                for j in range(len(o["numeric"])):
                    x = values[train][given[train, j], j]
                    stats["mean"].append(float(x.mean()) if len(x) else 0.0)
                    std = float(x.std()) if len(x) else 1.0
                    stats["std"].append(std if std > 1e-12 else 1.0)
                return stats

            stats = self._fitted("numeric", f.name, fit)
            standard = (values - np.asarray(stats["mean"])) / np.asarray(stats["std"])
            standard = np.where(given, standard, 0.0)  # empty cells read as the train mean
        else:
            standard, given = np.zeros((m.rows, 0)), np.zeros((m.rows, 0), dtype=bool)
        codes, cat_given = [], []
        labels_by_column = [_labels(m, c, self.problems) for c in o["categorical"]]
        if any(labels is None for labels in labels_by_column):
            return None
        for labels, column in zip(labels_by_column, o["categorical"]):
            present = np.array([v is not None for v in labels])
            cat_given.append(present)
            self._train_has_some(f, present, train, column)

        def fit_categories():
            return [_sorted_labels(labels[i] for i in train if labels[i] is not None) for labels in labels_by_column]

        categories = self._fitted("categories", f.name, fit_categories) if o["categorical"] else []
        for labels, cats in zip(labels_by_column, categories):
            index = {c: i + 1 for i, c in enumerate(cats)}  # 0 = empty or unseen in train
            codes.append(np.array([index.get(v, 0) for v in labels], dtype=np.float64))
        table = np.concatenate([standard, np.stack(codes, axis=1) if codes else np.zeros((m.rows, 0))], axis=1)
        present = np.concatenate([given, np.stack(cat_given, axis=1) if cat_given else np.zeros((m.rows, 0), bool)],
                                 axis=1).any(axis=1)
        self.cardinalities[f.name] = [len(c) for c in categories]
        return torch.from_numpy(table).float(), present

    def _text(self, f: FieldSpec, train: np.ndarray):
        o = f.options
        texts = ["" if c is None else str(c) for c in self.m.cells[f.column]]
        present = np.array([c is not None for c in self.m.cells[f.column]])
        if not self._train_has_some(f, present, train, f.column):
            return None

        def fit():
            tokenizer = Tokenizer(level=o["level"], max_len=o["max_len"], min_freq=o["min_freq"],
                                  lowercase=o["lowercase"])
            return tokenizer.fit([texts[i] for i in train if present[i]]).state_dict()

        tokenizer = Tokenizer.from_state(self._fitted("tokenizers", f.name, fit))
        ids = tokenizer.encode(texts)
        ids[torch.from_numpy(~present)] = 0
        self.vocab[f.name] = (tokenizer.vocab_size, tokenizer.max_len)
        return ids, present

    def _files(self, f: FieldSpec, train: np.ndarray, suffixes: Sequence[str] = ()):
        """Resolved paths ('' where empty) and presence; every non-empty cell must name an existing file, inside
        data.root unless data.allow_outside_root."""
        m, root = self.m, self.t.root
        paths = np.full(m.rows, "", dtype=object)
        present = np.zeros(m.rows, dtype=bool)
        top = os.path.abspath(root)
        for row, cell in enumerate(m.cells[f.column]):
            if cell is None:
                continue
            if not isinstance(cell, str):
                self.problems.add(f"{m.at(row, f.column)}: expected a file path, got {cell!r}", group=("path", f.key))
                continue
            path = Path(cell.strip()).expanduser()
            paths[row] = str(path if path.is_absolute() else root / path)
            present[row] = True
            if not self.t.allow_outside_root and not _inside(os.path.abspath(paths[row]), top):
                self._outside(row, f, cell, top, "")
        exists, links = _existing(paths[present])
        missing = np.flatnonzero(present)[~exists]
        for row in missing:
            self.problems.add(f"{m.at(int(row), f.column)}: file not found: {paths[row]}", group=("missing", f.key))
        if not self.t.allow_outside_root:  # a path inside the root may still lead out through a symlink
            real_top, real_folders = os.path.realpath(top), {}
            for row, link in zip(np.flatnonzero(present)[exists], links[exists]):
                full = os.path.abspath(paths[row])
                if not _inside(full, top):
                    continue  # reported above
                folder, name = os.path.split(full)
                if folder not in real_folders:
                    real_folders[folder] = os.path.realpath(folder)
                real = os.path.realpath(full) if link else os.path.join(real_folders[folder], name)
                if not _inside(real, real_top):
                    self._outside(int(row), f, m.cells[f.column][row], top, f" through a symbolic link to {real}")
        if len(missing) and len(missing) == present.sum():
            self.problems.add(f"{f.key}: none of the {len(missing)} files of column '{f.column}' exists; relative "
                              f"paths start at data.root (null: the manifest's folder, here {root.resolve()})")
        if suffixes:
            for row in np.flatnonzero(present):
                if Path(paths[row]).suffix.lower() not in suffixes:
                    self.problems.add(f"{m.at(int(row), f.column)}: {paths[row]}: a {f.type} file must end with "
                                      f"{' or '.join(suffixes)}", group=("suffix", f.key))
        self._train_has_some(f, present, train, f.column)
        return paths.astype(str), present

    def _outside(self, row: int, f: FieldSpec, cell: str, top: str, how: str) -> None:
        self.problems.add(f"{self.m.at(row, f.column)}: {cell!r} leads{how} outside the data root {top}; keep the "
                          f"files under data.root (null: the manifest's folder), set data.root to a folder that "
                          f"holds them all, or set data.allow_outside_root=true to read files anywhere",
                          group=("outside", f.key))

    def _image(self, f: FieldSpec, train: np.ndarray):
        paths, present = self._files(f, train)
        if f.options["size"] is None and not self.problems:
            def first_size():
                i = next(i for i in train if present[i])
                try:
                    return list(media.image_size(paths[i]))
                except media.MediaError as exc:
                    self.problems.add(f"{self.m.at(int(i), f.column)}: cannot read the image {paths[i]}: {exc}")
                    return [1, 1]
            self._fitted("sizes", f.name, first_size)
        return paths, present

    def _audio(self, f: FieldSpec, train: np.ndarray):
        return self._files(f, train, media.AUDIO_SUFFIXES)

    def _segmentation(self, f: FieldSpec, train: np.ndarray):
        return self._files(f, train)

    def _depth(self, f: FieldSpec, train: np.ndarray):
        return self._files(f, train, media.DEPTH_SUFFIXES)

    # ------------------------------------------------------------------ assembling the splits
    def _size(self, f: FieldSpec) -> tuple[int, int]:
        if f.options["size"] is not None:
            return tuple(f.options["size"])
        if f.type == "image":
            return tuple(self.state["sizes"][f.name])
        images = [g for g in self.t.inputs if g.type == "image"]
        if len(images) != 1:
            message = (f"{f.key}.size: give [H, W]; it defaults to the image input's size only when the data "
                       f"has exactly one image input (it has {len(images)})")
            raise ConfigError([message])
        return self._size(images[0])

    def _reader(self, f: FieldSpec) -> Reader:
        o = f.options
        if f.type == "audio":
            return Reader("audio", sample_rate=o["sample_rate"], num_samples=o["num_samples"])
        size = self._size(f)
        if f.type == "image":
            return Reader("image", size=size, channels=o["channels"])
        if f.type == "segmentation":
            return Reader("segmentation", size=size, num_classes=o["num_classes"], ignore_index=o["ignore_index"])
        return Reader("depth", size=size, png_scale=float(o["png_scale"]))

    def _assemble(self, fields: list[FieldSpec], values: dict) -> _Prepared:
        m, t = self.m, self.t
        modalities, targets, normalise, readers = {}, {}, {}, {}
        for f in fields:
            if f.type in FILE_TYPES:
                readers[f.name if f.role == "inputs" else f"target:{f.name}"] = self._reader(f)
        for f in t.inputs:
            o = f.options
            if f.type == "image":
                r = readers[f.name]
                modalities[f.name] = ModalityInfo("image", r.shape, {"in_channels": r.channels, "input_size": r.size})
                mean = o["mean"] if o["mean"] is not None else [0.0]
                std = o["std"] if o["std"] is not None else [1.0]
                normalise[f.name] = (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                                     torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
            elif f.type == "text":
                vocab_size, max_len = self.vocab[f.name]
                modalities[f.name] = ModalityInfo("text", (max_len,), {"vocab_size": vocab_size, "max_len": max_len})
            elif f.type == "audio":
                modalities[f.name] = ModalityInfo("audio", (o["num_samples"],),
                                                  {"sample_rate": o["sample_rate"], "num_samples": o["num_samples"]})
            else:
                cards = self.cardinalities[f.name]
                modalities[f.name] = ModalityInfo("tabular", (len(o["numeric"]) + len(cards),),
                                                  {"num_numeric": len(o["numeric"]), "cardinalities": cards})
        for f in t.targets:
            o = f.options
            if f.type in ("classification", "binary", "multilabel"):
                n = len(self.state["classes"][f.name])
                targets[f.name] = {"classification": TargetInfo("classification", num_classes=n),
                                   "binary": TargetInfo("binary", dim=1),
                                   "multilabel": TargetInfo("multilabel", dim=n)}[f.type]
            elif f.type == "regression":
                targets[f.name] = TargetInfo("regression", dim=len(f.columns))
            elif f.type == "segmentation":
                targets[f.name] = TargetInfo("segmentation", num_classes=o["num_classes"])
            else:
                targets[f.name] = TargetInfo("depth", dim=1)

        splits = {}
        for split, rows in self.splits.items():
            tensors = {"inputs": {}, "targets": {}, "label_mask": {}, "modality_mask": {}}
            files = []
            idx = torch.from_numpy(rows)
            for f in fields:
                key = f.name if f.role == "inputs" else f"target:{f.name}"
                data, present = values[key]
                present = torch.from_numpy(present[rows])
                mask_group = "modality_mask" if f.role == "inputs" else "label_mask"
                if not bool(present.all()):
                    tensors[mask_group][f.name] = present
                if key in readers:
                    files.append(FileColumn(f.role, f.name, readers[key], data[rows], rows,
                                            (m.path, m.numbers, m.lines, f.column)))
                else:
                    tensors[f.role][f.name] = data.index_select(0, idx)
            tensors = {g: d for g, d in tensors.items() if d or g in ("inputs", "targets")}
            augment = t.augment if split == "train" and t.augment else None
            splits[split] = TableDataset(tensors, files, len(rows), normalise, augment)
        state = self.state if self.loaded is None else self.loaded
        return _Prepared(DataSpec(modalities, targets), splits, state)

    def _decode_everything(self, prepared: _Prepared) -> None:
        """Decode every file once (data.num_workers processes); problems are collected; kept if cache."""
        t = self.t
        columns = [c for ds in prepared.splits.values() for c in ds.files]
        total = sum(int((c.paths != "").sum()) for c in columns)
        log.info(f"data=table: decoding {total} files ({'cache' if t.cache else 'validate=full'})")
        for column in columns:
            job = _DecodeAll(column)
            store = column.reader.blank(len(column.paths)).to(column.reader.stored_dtype) if t.cache else None
            loader = DataLoader(job, batch_size=64, collate_fn=_passthrough, num_workers=t.num_workers)
            for items in loader:
                for i, tensor, problem in items:
                    if problem is not None:
                        self.problems.add(problem, group=("decode", column.role, column.name))
                    elif store is not None:
                        store[i] = tensor.to(store.dtype)
            if store is not None:
                column.cache = store


def _existing(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of `paths` exist as files, and which of those are symbolic links: one directory listing per folder
    instead of a stat per file."""
    listing: dict[str, dict[str, bool] | None] = {}
    exists, links = np.zeros(len(paths), dtype=bool), np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listing:
            try:
                with os.scandir(folder or ".") as entries:
                    listing[folder] = {e.name: e.is_symlink() for e in entries if not e.is_dir()}
            except OSError:
                listing[folder] = None
        names = listing[folder]
        exists[i] = names is not None and name in names
        links[i] = exists[i] and names[name]
    return exists, links


def _inside(path: str, folder: str) -> bool:
    """Whether the absolute, normalised `path` is `folder` or lies under it."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False
