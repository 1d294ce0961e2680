"""Inference and export: opening a checkpoint or an export and predicting from it (opener), the portable
export formats (portable), and the writers of predictions (predictions).

`from mtlrun.inference import load` (the name of the former module mtlrun/inference.py) still works: a
name this package does not define is looked up in opener on first use, so importing portable or predictions
alone does not build the whole assembly layer.
"""


def __getattr__(name: str):
    import importlib

    opener = importlib.import_module("mtlrun.inference.opener")
    try:
        return getattr(opener, name)
    except AttributeError:
        raise AttributeError(f"module 'mtlrun.inference' has no attribute {name!r}") from None
