from mtlrun.models.backbone.base import Encoded, Encoder, StagedEncoder
from mtlrun.models.backbone.dense import DenseEncoder, ResNetDense, SegNetLite
from mtlrun.models.backbone.image import ResNet, SmallCNN

__all__ = ["DenseEncoder", "Encoded", "Encoder", "ResNet", "ResNetDense", "SegNetLite", "SmallCNN", "StagedEncoder"]
