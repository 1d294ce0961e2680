from mtlrun.weighting.base import Weighting
from mtlrun.weighting.static import StaticWeighting

__all__ = ["StaticWeighting", "Weighting"]
