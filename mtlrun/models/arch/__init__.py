"""Sharing architectures, one file each; `arch=<name>` picks one (configs/arch/<name>.yaml)."""

from mtlrun.models.arch.cross_stitch import CrossStitch
from mtlrun.models.arch.hps import HardParameterSharing
from mtlrun.models.arch.mmoe import MMoE
from mtlrun.models.arch.mtan import MTAN
from mtlrun.models.arch.ple import PLE
from mtlrun.models.arch.soft import SoftParameterSharing

__all__ = ["CrossStitch", "HardParameterSharing", "MMoE", "MTAN", "PLE", "SoftParameterSharing"]
