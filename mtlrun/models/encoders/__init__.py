from mtlrun.models.encoders.base import StagedEncoder
from mtlrun.models.encoders.image import ResNet, SmallCNN

__all__ = ["ResNet", "SmallCNN", "StagedEncoder"]
