from mtlrun.models.encoders.base import Encoded, Encoder, StagedEncoder
from mtlrun.models.encoders.dense import DenseEncoder, ResNetDense, SegNetLite
from mtlrun.models.encoders.image import ResNet, SmallCNN

__all__ = ["DenseEncoder", "Encoded", "Encoder", "ResNet", "ResNetDense", "SegNetLite", "SmallCNN", "StagedEncoder"]
