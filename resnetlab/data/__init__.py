"""Data: dataset formats (CIFAR, IDX, image folders), splits, and the loaders the engine trains from."""

from .folder import FolderDataset
from .loader import MemoryLoader, StreamLoader, crop_flip
from .resolve import ArrayDataset, DataBundle, load_eval_split, open_data, with_normalization

__all__ = [
    "ArrayDataset", "DataBundle", "FolderDataset", "MemoryLoader", "StreamLoader", "crop_flip",
    "load_eval_split", "open_data", "with_normalization",
]
