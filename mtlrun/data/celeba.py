"""`celeba`: CelebA face attributes from the official on-disk layout (nothing is downloaded unless asked).

Files, under `<root>/celeba/` (what torchvision.datasets.CelebA and the official Google Drive give):
- `img_align_celeba/*.jpg`: the aligned and cropped 178x218 faces;
- `list_attr_celeba.txt`: line 1 the number of images, line 2 the 40 attribute names, then one line per
  image `filename v1 ... v40` with each v in {-1, 1};
- `list_eval_partition.txt`: one line per image `filename p`, p = 0 (train), 1 (val), 2 (test).
The files are validated when the splits are built: a malformed line names the file and the line number,
an image that is listed but not on disk names the image and its line in list_attr_celeba.txt.

Targets: each chosen attribute (`attributes`, null = all 40) is a binary target named like the attribute
(e.g. `Smiling`): float [N], 1 where the file says 1, 0 where it says -1. The `tasks` preset picks which
are trained; it can only train attributes the data exposes.

Images: the centre square of each image (178x178 for CelebA's 178x218) resized to `image_size` (antialiased),
normalised with CelebA's per-channel mean/std. `cache=false` (the default) decodes every image when it is
fetched (Pillow; each file is opened and closed within the fetch, so DataLoader workers are safe and
useful: set data.num_workers); `cache=true` decodes each split once (using `num_workers` processes) into a uint8
tensor in memory (3 * image_size^2 bytes per image: 2.5 GB for all 202,599 at 64x64) and then runs as fast
as an in-memory dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mtlrun.data._download import (
    UInt8ImageDataset,
    check_limit,
    fetch_if_missing,
    is_int,
    normalise,
    normaliser,
    resolve_root,
)
from mtlrun.data.base import DataModule, DataSpec, ModalityInfo, TargetInfo
from mtlrun.errors import ConfigError, UsageError

log = logging.getLogger("mtlrun")

FOLDER = "celeba"
IMAGES = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
PROJECT_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
DRIVE_URL = "https://drive.google.com/drive/folders/0B7EVK8r0v71pWEZsZE9oNnFzTm8"
SPLIT_CODES = {"0": "train", "1": "val", "2": "test"}
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
# Approximate per-channel mean and standard deviation of img_align_celeba, pixels scaled to [0, 1].
MEAN = (0.5063, 0.4258, 0.3832)
STD = (0.3107, 0.2904, 0.2897)
MAX_SHOWN = 10  # problems listed per file before "... and N more"


def manual_steps(root: Path) -> str:
    folder = root / FOLDER
    return (f"CelebA is distributed on Google Drive ({DRIVE_URL}, linked from {PROJECT_URL}): download "
            f"Img/img_align_celeba.zip, Anno/{ATTR_FILE} and Eval/{PARTITION_FILE}, then run "
            f"`mkdir -p {folder} && unzip img_align_celeba.zip -d {folder} && mv {ATTR_FILE} {PARTITION_FILE} "
            f"{folder}/` so that {folder} holds {IMAGES}/, {ATTR_FILE} and {PARTITION_FILE}")


def load_image(path: str, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: the file decoded as RGB, its centre square resized to size x size.

    Pillow (a torchvision dependency) rather than torchvision.io, whose decoders are deprecated since
    torchvision 0.29. The file is opened and closed here. `draft` lets the JPEG decoder downscale by a
    power of two while staying at least `size` pixels on the short side, which only makes decoding cheaper.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))
            image = image.convert("RGB")
    except Exception as exc:
        raise UsageError(f"data=celeba: cannot decode the image {path}: {type(exc).__name__}: {exc}") from exc
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class _Decode(Dataset):
    """uint8 images decoded from files; `files` is a numpy string array (no per-item Python objects, so
    forked workers do not copy it page by page) and nothing is held open between items."""

    def __init__(self, image_dir: Path, files: np.ndarray, size: int):
        self.image_dir, self.files, self.size = str(image_dir), files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(f"{self.image_dir}/{self.files[index]}", self.size)

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self[int(i)] for i in indices])


def _passthrough(batch):
    return batch


class CelebAFiles(Dataset):
    """CelebA images decoded per item, in the batch-dict layout; a batch is normalised at once."""

    def __init__(self, image_dir: Path, files: np.ndarray, targets: dict[str, torch.Tensor], size: int):
        self.decode = _Decode(image_dir, files, size)
        self.targets = targets
        self.scale, self.shift = normaliser(MEAN, STD)

    def __len__(self) -> int:
        return len(self.decode)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.decode.__getitems__(idx.tolist())
        return {"inputs": {"image": normalise(images, self.scale, self.shift)},
                "targets": {name: t.index_select(0, idx) for name, t in self.targets.items()}}

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: {name: t[0] for name, t in group.items()} for k, group in batch.items()}

    def select_modalities(self, keep: Sequence[str]) -> CelebAFiles:
        if list(keep) != ["image"]:
            raise ValueError(f"this dataset has only the modality 'image', asked for {list(keep)}")
        return self


def _format_error(path: Path, problems: list[str]) -> UsageError:
    shown = problems[:MAX_SHOWN] + ([f"... and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else [])
    lines = "\n".join(f"  - {p}" for p in shown)
    return UsageError(f"data=celeba: {path} is not in the official CelebA format ({len(problems)} problem(s)):\n"
                      f"{lines}")


def read_attributes(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(attribute names, file names [N], values float32 [N, A] in {0, 1}, line numbers [N]) of list_attr."""
    lines = path.read_text().splitlines()
    problems = []
    if len(lines) < 2:
        raise _format_error(path, [(f"has {len(lines)} line(s); expected the image count on line 1, the "
                                    f"attribute names on line 2, then one line per image")])
    count = lines[0].strip()
    if not count.isdigit():
        problems.append(f"line 1: expected the number of images, got {count[:40]!r}")
    names = lines[1].split()
    files, rows, numbers = [], [], []
    for number, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 1 + len(names):
            problems.append(f"line {number}: {tokens[0]!r} has {len(tokens) - 1} values, expected {len(names)} "
                            f"(one -1/1 per attribute of line 2)")
            continue
        files.append(tokens[0])
        rows.append(tokens[1:])
        numbers.append(number)
    values = np.array(rows, dtype=str).reshape(len(rows), len(names))
    valid = (values == "1") | (values == "-1")
    bad = np.argwhere(~valid)
    for r, c in bad[:MAX_SHOWN]:
        problems.append(f"line {numbers[r]}: {files[r]!r} has {str(values[r, c])!r} for {names[c]}; expected -1 or 1")
    if len(bad) > MAX_SHOWN:
        problems.append(f"{len(bad) - MAX_SHOWN} more values that are neither -1 nor 1")
    if count.isdigit() and int(count) != len(files) and not problems:
        problems.append(f"line 1 says {int(count)} images but the file lists {len(files)}")
    seen: dict[str, int] = {}
    for name, number in zip(files, numbers):
        if name in seen:
            problems.append(f"line {number}: {name!r} is listed again (first on line {seen[name]})")
        seen.setdefault(name, number)
    if problems:
        raise _format_error(path, problems)
    return names, np.array(files, dtype=str), (values == "1").astype(np.float32), np.array(numbers)


def read_partition(path: Path) -> dict[str, str]:
    """{file name: "train" | "val" | "test"} from list_eval_partition."""
    problems, split_of = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2 or tokens[1] not in SPLIT_CODES:
            problems.append(f"line {number}: expected `<file name> 0|1|2` (train|val|test), got {line.strip()[:60]!r}")
            continue
        split_of[tokens[0]] = SPLIT_CODES[tokens[1]]
    if problems:
        raise _format_error(path, problems)
    return split_of


class CelebA(DataModule):
    name = "celeba"

    def __init__(self, root: str = "data", download: bool = False, attributes: Sequence[str] | str | None = None,
                 image_size: int = 64, cache: bool = False, limit: int | None = None, **loader):
        super().__init__(**loader)
        problems = []
        if isinstance(attributes, str):
            attributes = [attributes]
        if attributes is not None:
            attributes = [str(a) for a in attributes]
            unknown = [a for a in attributes if a not in ATTRIBUTES]
            if unknown:
                problems.append(f"data.attributes: unknown attribute(s) {', '.join(unknown)}; valid (case "
                                f"matters): {', '.join(ATTRIBUTES)}; or null for all 40")
            elif not attributes or len(set(attributes)) != len(attributes):
                problems.append(f"data.attributes={attributes}: needs one or more distinct attribute names "
                                f"(null = all 40)")
        if not is_int(image_size) or image_size < 8:
            problems.append(f"data.image_size={image_size}: must be an integer >= 8 (the side of the square "
                            f"images, in pixels; 64 by default)")
        for key, value in (("download", download), ("cache", cache)):
            if not isinstance(value, bool):
                problems.append(f"data.{key}={value}: must be true or false")
        check_limit(limit, problems)
        if problems:
            raise ConfigError(problems)
        self.root = resolve_root(root)
        self.download, self.cache, self.limit = download, cache, limit
        self.attributes = list(ATTRIBUTES) if attributes is None else attributes
        self.image_size = image_size
        if not download:
            self._check_files()  # fail before the model is built, not at the first batch

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def _missing(self) -> list[str]:
        wanted = [(self.folder / ATTR_FILE, Path.is_file), (self.folder / PARTITION_FILE, Path.is_file),
                  (self.folder / IMAGES, Path.is_dir)]
        return [f"{p.resolve()}{'/' if check is Path.is_dir else ''}" for p, check in wanted if not check(p)]

    def _check_files(self) -> None:
        missing = self._missing()
        if missing:
            raise UsageError(f"data=celeba: CelebA not found under data.root={self.root}: missing "
                             f"{', '.join(missing)}. {manual_steps(self.root)}. Or pass data.download=true to fetch "
                             f"it with torchvision (needs `pip install gdown`; Google Drive's download quota often "
                             f"makes that fail, then use the manual steps)")

    def _fetch(self) -> None:
        import torchvision

        def fetch():
            self.root.mkdir(parents=True, exist_ok=True)
            torchvision.datasets.CelebA(str(self.root), split="all", target_type="attr", download=True)

        fetch_if_missing("CelebA from Google Drive", self._missing, fetch,
                         f"torchvision needs the gdown package (pip install gdown), and Google Drive's daily "
                         f"download quota for CelebA is often exceeded; retry later or fetch the files by hand. "
                         f"{manual_steps(self.root)}; then run again with data.download=false")

    @property
    def full_spec(self) -> DataSpec:
        s = self.image_size
        image = ModalityInfo("image", (3, s, s), {"in_channels": 3, "input_size": (s, s)})
        return DataSpec(modalities={"image": image},
                        targets={a: TargetInfo("binary", dim=1) for a in self.attributes})

    def _split_indices(self, files: np.ndarray, numbers: np.ndarray) -> dict[str, np.ndarray]:
        part_path = self.folder / PARTITION_FILE
        split_of = read_partition(part_path)
        codes = np.array([split_of.get(f, "") for f in files.tolist()])
        unassigned = np.flatnonzero(codes == "")
        if len(unassigned):
            raise _format_error(part_path, [f"has no line for {str(files[i])!r} ({ATTR_FILE} line {numbers[i]})"
                                            for i in unassigned])
        return {split: np.flatnonzero(codes == split)[: self.limit] for split in ("train", "val", "test")}

    def _check_images(self, files: np.ndarray, numbers: np.ndarray, keep: np.ndarray) -> None:
        image_dir = self.folder / IMAGES
        present = {entry.name for entry in os.scandir(image_dir)}
        missing = [i for i in keep.tolist() if files[i] not in present]
        if missing:
            shown = ", ".join(f"{files[i]} ({ATTR_FILE} line {numbers[i]})" for i in missing[:MAX_SHOWN])
            more = f" and {len(missing) - MAX_SHOWN} more" if len(missing) > MAX_SHOWN else ""
            raise UsageError(f"data=celeba: {len(missing)} image(s) listed in {self.folder / ATTR_FILE} are missing "
                             f"from {image_dir.resolve()}: {shown}{more}. Re-extract img_align_celeba.zip into "
                             f"{self.folder} ({PROJECT_URL})")

    def _decode_all(self, split: str, files: np.ndarray) -> torch.Tensor:
        s = self.image_size
        log.info(f"data.cache=true: decoding {len(files)} {split} images to {s}x{s} "
                 f"({len(files) * 3 * s * s / 2**20:.0f} MiB in memory)")
        images = torch.empty(len(files), 3, s, s, dtype=torch.uint8)
        loader = DataLoader(_Decode(self.folder / IMAGES, files, s), batch_size=256, collate_fn=_passthrough,
                            num_workers=self.num_workers)
        done, step = 0, max(1, len(files) // 10)
        for batch in loader:
            images[done:done + len(batch)] = batch
            if (done + len(batch)) // step > done // step:
                log.info(f"  {split}: {done + len(batch)}/{len(files)}")
            done += len(batch)
        return images

    def build(self) -> dict[str, Dataset]:
        if self.download:
            self._fetch()
        self._check_files()
        attr_path = self.folder / ATTR_FILE
        names, files, values, numbers = read_attributes(attr_path)
        absent = [a for a in self.attributes if a not in names]
        if absent:
            raise UsageError(f"data=celeba: line 2 of {attr_path} has no attribute {', '.join(absent)} (it names "
                             f"{', '.join(names)}); pick data.attributes from those or restore the official file")
        indices = self._split_indices(files, numbers)
        self._check_images(files, numbers, np.concatenate(list(indices.values())))
        columns = [names.index(a) for a in self.attributes]
        splits: dict[str, Dataset] = {}
        for split, idx in indices.items():
            targets = {a: torch.from_numpy(np.ascontiguousarray(values[idx, c]))
                       for a, c in zip(self.attributes, columns)}
            if self.cache:
                splits[split] = UInt8ImageDataset(self._decode_all(split, files[idx]), targets, MEAN, STD)
            else:
                splits[split] = CelebAFiles(self.folder / IMAGES, files[idx], targets, self.image_size)
        return splits
