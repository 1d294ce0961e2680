"""`data.split`: which manifest rows are train, val and test (a column of split names, or seeded ratios)."""

from __future__ import annotations

import numpy as np

from mtlrun.checks import is_int, is_number
from mtlrun.data.base import SPLITS
from mtlrun.data.table.fields.base import plain
from mtlrun.data.table.manifest import Manifest, Problems


DEFAULT_COLUMN = "split"


def parse_split(split, problems: list[str]) -> dict:
    """`{column: name}` or `{ratios: [...], seed: n}` from data.split (null: the column `split`).

    Hydra merges the data.split of an experiment YAML or of the command line into the default, `{column: split,
    ratios: null, seed: null}`: a key that is null is not given, and ratios win over the default's column, so
    `{ratios: [0.7, 0.15, 0.15], seed: 0}` works as written, wherever it is written."""
    split = plain(split)
    if split is None:
        return {"column": DEFAULT_COLUMN}
    if not isinstance(split, dict) or set(split) - {"column", "ratios", "seed"}:
        problems.append(f"data.split={split!r}: give {{column: <name>}} (a column of train / val / test) or "
                        f"{{ratios: [train, val, test], seed: 0}}")
        return {}
    given = {k: v for k, v in split.items() if v is not None}
    if "ratios" in given and given.get("column") == DEFAULT_COLUMN:
        del given["column"]  # the default's, merged in
    if ("column" in given) == ("ratios" in given):
        what = (f"both a column ({given['column']!r}) and ratios; set the other to null: data.split.ratios=null to "
                f"split by the column, or data.split.column=null to draw with the ratios" if given else
                "give {column: <name>} (a column of train / val / test) or {ratios: [train, val, test], seed: 0}")
        problems.append(f"data.split={split!r}: {what}")
        return {}
    if "column" in given:
        if "seed" in given:
            problems.append("data.split.seed: only used with ratios")
        if not isinstance(given["column"], str) or not given["column"].strip():
            problems.append(f"data.split.column={given['column']!r}: must be a column name")
        return {"column": given["column"]}
    ratios, seed = given["ratios"], given.get("seed", 0)
    if not isinstance(ratios, (list, tuple)) or len(ratios) != 3 or not all(is_number(r) and r > 0 for r in ratios):
        problems.append(f"data.split.ratios={ratios!r}: must be three numbers > 0 (train, val, test), e.g. "
                        f"[0.8, 0.1, 0.1]; they are normalised to sum to 1")
    if not is_int(seed) or seed < 0:
        problems.append(f"data.split.seed={seed!r}: must be an integer >= 0")
    return {"ratios": ratios, "seed": seed}


def assign_splits(m: Manifest, s: dict, p: Problems) -> dict[str, np.ndarray]:
    """The manifest rows of each split: from the split column, or drawn with the ratios and seed."""
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
