"""The value overrides a user types on top of a checkpoint's config (`mtlrun eval`, `mtlrun train resume=`)."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from mtlrun.errors import UsageError


def apply_overrides(base: dict, current: DictConfig, overrides: list[str], allowed: tuple[str, ...] | None,
                    what: str, skip: tuple[str, ...] = ()) -> DictConfig:
    """Apply the value overrides the user typed (e.g. `trainer.max_epochs=4`) to a checkpoint's config.

    Group choices (e.g. `optim=sgd`) cannot change for a checkpointed model and are refused.
    """
    cfg = OmegaConf.create(base)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra.") or key in ("resume", "checkpoint") or key.split(".")[0] in skip:
            continue
        value = OmegaConf.select(current, key, default=None)
        if isinstance(value, (DictConfig, ListConfig)) and "." not in key:
            raise UsageError(f"{override}: {what} keeps the checkpoint's '{key}' choice; "
                             f"override single values instead (e.g. trainer.max_epochs=8)")
        if allowed is not None and not key.startswith(allowed):
            raise UsageError(f"{override}: {what} accepts overrides of {', '.join(allowed)} only")
        if value is None and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise UsageError(f"{override}: the checkpoint's config has no key '{key}'")
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg
