from mtlrun.data.base import DataModule, DataSpec, TargetInfo, TensorDictDataset, collate

__all__ = ["DataModule", "DataSpec", "TargetInfo", "TensorDictDataset", "collate"]
