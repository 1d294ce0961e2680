"""Fusions, one file each; `fusion=<name>` picks one (configs/fusion/<name>.yaml builds fusion/<name>.py).

base.py holds the contract (`Fusion`) and the public masking/option helpers a new fusion is built from.
"""

from mtlrun.models.fusion.attention import Attention
from mtlrun.models.fusion.base import Fusion, Projected
from mtlrun.models.fusion.concat import Concat
from mtlrun.models.fusion.cross_attention import CrossAttention
from mtlrun.models.fusion.early import Early
from mtlrun.models.fusion.embrace import Embrace
from mtlrun.models.fusion.film import FiLM
from mtlrun.models.fusion.gated import Gated
from mtlrun.models.fusion.late import LateFusion
from mtlrun.models.fusion.low_rank import LowRank
from mtlrun.models.fusion.mean import Mean
from mtlrun.models.fusion.sum import Sum
from mtlrun.models.fusion.tensor import Tensor
from mtlrun.models.fusion.weighted import Weighted

__all__ = ["Attention", "Concat", "CrossAttention", "Early", "Embrace", "FiLM", "Fusion", "Gated", "LateFusion",
           "LowRank", "Mean", "Projected", "Sum", "Tensor", "Weighted"]
