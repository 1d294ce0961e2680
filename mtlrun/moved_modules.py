"""Old module paths of modules that moved, kept importable for one release with a deprecation warning.

The code folders were renamed after the config groups that pick from them (arch/, backbone/, logger/), and
the modules shared by several commands got packages named for what they hold (inference/, diagnostics/).
A user's YAML, script or notebook naming an old path, e.g. `_target_: mtlrun.models.sharing.hps.HPS`, still
imports the same module object, with a FutureWarning (shown by default, unlike DeprecationWarning) naming
the new path. A checkpoint's or an export's config is rewritten silently instead (checkpoint.rename_targets):
its author cannot edit it. Pure standard library, so `import mtlrun` stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.3"
# old module prefix -> new one; a prefix covers the module and everything under it
MOVED_MODULES: dict[str, str] = {
    "mtlrun.models.sharing": "mtlrun.models.arch",
    "mtlrun.models.encoders": "mtlrun.models.backbone",
    "mtlrun.engine.loggers": "mtlrun.engine.logger",
    "mtlrun.engine.portable": "mtlrun.inference.portable",
    "mtlrun.engine.predictions": "mtlrun.inference.predictions",
    "mtlrun.engine.affinity": "mtlrun.diagnostics.affinity",
    "mtlrun.engine.conflict": "mtlrun.diagnostics.conflict",
}


def moved_name(dotted: str) -> str | None:
    """The current name of a dotted module or object path under a moved module, None if it did not move."""
    for old, new in MOVED_MODULES.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return None


class _Alias(importlib.abc.Loader):
    """Loads an old module name as the module object of its new name (one module, one set of classes)."""

    def __init__(self, module):
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import system stamped the alias's spec on it; the module keeps its own


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = moved_name(fullname)
        if new is None:
            return None
        if fullname in MOVED_MODULES:  # one warning per import: a submodule's import imports this one first
            warnings.warn(f"{fullname} moved to {new} (with everything under it); the old name is deprecated and "
                          f"goes in mtlrun {REMOVED_IN}", FutureWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(importlib.import_module(new)))


def install() -> None:
    """Put the finder first on sys.meta_path (idempotent): before the path finder, which would otherwise load
    a moved package's submodules a second time under the old name."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
