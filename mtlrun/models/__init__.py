from mtlrun.models.base import MultiTaskModel

__all__ = ["MultiTaskModel"]
