"""Sharing architectures, one file each; `arch=<name>` picks one (configs/arch/<name>.yaml)."""

from mtlrun.models.sharing.cross_stitch import CrossStitch
from mtlrun.models.sharing.hps import HardParameterSharing
from mtlrun.models.sharing.mmoe import MMoE
from mtlrun.models.sharing.mtan import MTAN
from mtlrun.models.sharing.ple import PLE
from mtlrun.models.sharing.soft import SoftParameterSharing

__all__ = ["CrossStitch", "HardParameterSharing", "MMoE", "MTAN", "PLE", "SoftParameterSharing"]
