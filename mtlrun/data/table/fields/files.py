"""What the field types whose cells name files share: `FileField` checks those cells (every file exists, inside
data.root unless data.allow_outside_root), `DenseTarget` is a per-pixel target whose size defaults to the
image input's. Each type's FileReader (fields/base.py) decodes its files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtlrun.data.table.fields.base import Field, Reading, is_size
from mtlrun.errors import ConfigError


class FileField(Field):
    """A field whose cells are paths of files, relative to data.root; its values are the resolved paths."""

    suffixes: tuple[str, ...] = ()  # the file endings it reads; () = any

    def read(self, reading: Reading, train: np.ndarray):
        """Resolved paths ('' where empty) and presence; every non-empty cell must name an existing file, inside
        data.root unless data.allow_outside_root."""
        m, root, problems = reading.m, reading.root, reading.problems
        paths = np.full(m.rows, "", dtype=object)
        present = np.zeros(m.rows, dtype=bool)
        top = os.path.abspath(root)
        for row, cell in enumerate(m.cells[self.column]):
            if cell is None:
                continue
            if not isinstance(cell, str):
                problems.add(f"{m.at(row, self.column)}: expected a file path, got {cell!r}", group=("path", self.key))
                continue
            path = Path(cell.strip()).expanduser()
            paths[row] = str(path if path.is_absolute() else root / path)
            present[row] = True
            if not reading.allow_outside_root and not inside(os.path.abspath(paths[row]), top):
                self._outside(reading, row, cell, top, "")
        exists, links = existing_files(paths[present])
        missing = np.flatnonzero(present)[~exists]
        for row in missing:
            problems.add(f"{m.at(int(row), self.column)}: file not found: {paths[row]}", group=("missing", self.key))
        if not reading.allow_outside_root:  # a path inside the root may still lead out through a symlink
            real_top, real_folders = os.path.realpath(top), {}
            for row, link in zip(np.flatnonzero(present)[exists], links[exists]):
                full = os.path.abspath(paths[row])
                if not inside(full, top):
                    continue  # reported above
                folder, name = os.path.split(full)
                if folder not in real_folders:
                    real_folders[folder] = os.path.realpath(folder)
                real = os.path.realpath(full) if link else os.path.join(real_folders[folder], name)
                if not inside(real, real_top):
                    self._outside(reading, int(row), m.cells[self.column][row], top,
                                  f" through a symbolic link to {real}")
        if len(missing) and len(missing) == present.sum():
            problems.add(f"{self.key}: none of the {len(missing)} files of column '{self.column}' exists; relative "
                         f"paths start at data.root (null: the manifest's folder, here {root.resolve()})")
        if self.suffixes:
            for row in np.flatnonzero(present):
                if Path(paths[row]).suffix.lower() not in self.suffixes:
                    problems.add(f"{m.at(int(row), self.column)}: {paths[row]}: a {self.type} file must end with "
                                 f"{' or '.join(self.suffixes)}", group=("suffix", self.key))
        reading.train_has_some(self, present, train, self.column)
        return paths.astype(str), present

    def _outside(self, reading: Reading, row: int, cell: str, top: str, how: str) -> None:
        reading.problems.add(f"{reading.m.at(row, self.column)}: {cell!r} leads{how} outside the data root {top}; keep "
                             f"the files under data.root (null: the manifest's folder), set data.root to a folder "
                             f"that holds them all, or set data.allow_outside_root=true to read files anywhere",
                             group=("outside", self.key))


class DenseTarget(FileField):
    """A per-pixel target read from files (an image of class ids, a depth map); `size` null = the image's."""

    resample = "nearest"  # a class id or a depth is never blended with its neighbours

    def check_options(self, problems: list[str]) -> None:
        self.need(problems, is_size(self.options["size"]), "size",
                  "must be null (the image input's size) or [H, W] of ints >= 1")

    def size(self, reading: Reading) -> tuple[int, int]:
        if self.options["size"] is not None:
            return tuple(self.options["size"])
        sizes = [size for f in reading.inputs if (size := f.image_size(reading)) is not None]
        if len(sizes) != 1:
            message = (f"{self.key}.size: give [H, W]; it defaults to the image input's size only when the data "
                       f"has exactly one image input (it has {len(sizes)})")
            raise ConfigError([message])
        return sizes[0]


def existing_files(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
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


def inside(path: str, folder: str) -> bool:
    """Whether the absolute, normalised `path` is `folder` or lies under it."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False
