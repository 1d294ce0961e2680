"""`data=table`: your own data from one manifest, a table of file paths, texts, numbers and labels.

The manifest is a CSV file (header row), JSON Lines (one object per line; `.jsonl` / `.ndjson`), both in
`encoding` (UTF-8 by default), or, when pyarrow is installed (mtlrun does not depend on it), Parquet. Each
declared input becomes a modality and each declared target a task's labels (configs/data/table.yaml lists
every key):

    inputs:                                     # name: {type, column(s), options}
      image: {type: image, column: image_path, size: [64, 64], channels: 3}
      note:  {type: text, column: note, level: word, max_len: 32}
      clip:  {type: audio, column: wav_path, sample_rate: 8000, num_samples: 4000}
      stats: {type: tabular, numeric: [ink, width], categorical: [pen]}
    targets:
      digit: {type: classification, column: label}
      odd:   {type: binary, column: parity}
      tags:  {type: multilabel, column: tags, sep: "|"}
      size:  {type: regression, columns: [w, h]}
      seg:   {type: segmentation, column: mask_path, num_classes: 5}
      depth: {type: depth, column: depth_path}
    split: {column: split}                      # or {ratios: [0.8, 0.1, 0.1], seed: 0}

Layouts (mtlrun.data.base): image float [C, H, W]; text long [L] (mtlrun.data.text.Tokenizer fitted on
the train split); audio float [T]; tabular float [N + K]: the numeric columns standardised with the train
split's mean and std, then the categorical columns as codes 1..K_j (the train split's categories, sorted;
0 = empty or unseen). Targets: classification long (index into the train split's sorted class list),
binary float (1 = `positive`, by default the larger of the two values), multilabel float [K] (labels of
the train split, sorted), regression float [D] (raw values), segmentation long [H, W] (-1 = ignore),
depth float [1, H, W] (0 = invalid). Files are read by mtlrun.data.media.

Everything fitted on the train split (class lists, categories, numeric statistics, vocabularies, image
sizes taken from the files) is the module's `state_dict`, which travels in the checkpoint, so `mtlrun eval`
reads the manifest exactly as training did.

Empty cells (an empty CSV field, JSON null, a missing key, or a text listed in `na_values`, e.g. [NA] for a
file written by R): an empty target cell makes the row unlabelled for that task (`label_mask` False; the
target holds -1 or NaN, never a label); an empty input cell makes the modality missing for the row
(`modality_mask` False, input zeros). A tabular input is missing only when all its cells are empty; a
single empty numeric cell reads as the train mean (0).

Validation runs before the model is built and lists every problem at once, each naming the manifest, the
row (data rows count from 1; the file line is given for CSV and JSON Lines) and the column. `validate:
files` (default) parses every cell and checks that every referenced file exists (one directory listing per
folder) inside data.root (unless `allow_outside_root`: no `..`, absolute path or symbolic link leading out);
`validate: full` also decodes every file. `cache: true` decodes every file once at start-up and keeps the
tensors in memory, which validates them as fully as `full`. A label option read by YAML as a boolean
(`positive: yes`) stands for the one label of its column that reads as that boolean (yes / y / true / on / 1).

The package: datamodule.py is `Table` (its whole reading in `_read`); manifest.py reads the file and
cells.py says what a cell means; fields/ holds one class per input and target type (its options, checks,
fitting, checkpoint state and file reader) and the registry of their `type:` names; splits.py and augment.py
are the `split` and `augment` options; assemble.py turns what the fields read into the splits' datasets
(dataset.py).
"""

from mtlrun.data.table.datamodule import Table

__all__ = ["Table"]
