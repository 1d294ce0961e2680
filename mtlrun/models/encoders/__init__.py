from mtlrun.models.encoders.image import ResNet, SmallCNN

__all__ = ["ResNet", "SmallCNN"]
