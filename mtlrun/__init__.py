"""mtlrun: config-driven training of multi-task and multi-modal PyTorch models."""

__version__ = "0.1.0"

from mtlrun import moved_modules as _moved_modules  # old module paths, for one release

_moved_modules.install()


def __getattr__(name: str):
    """`mtlrun.load(checkpoint)`, imported on first use so that `import mtlrun` stays cheap (no torch).

    It lives in mtlrun.inference.opener (the assembly layer); the package root names it for notebooks, by a lazy
    lookup rather than an import, the one place the foundation layer points upward (docs/architecture.md)."""
    if name == "load":
        import importlib

        return importlib.import_module("mtlrun.inference.opener").load
    raise AttributeError(f"module 'mtlrun' has no attribute {name!r}")
