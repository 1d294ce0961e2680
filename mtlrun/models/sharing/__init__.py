from mtlrun.models.sharing.hps import HardParameterSharing

__all__ = ["HardParameterSharing"]
