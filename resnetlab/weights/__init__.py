"""Weights I/O, below the engine and export: checkpoints, foreign state dicts, safetensors, rebuilding models.

* :mod:`.checkpoint`: the resnetlab checkpoint format (self-describing, ``weights_only`` loadable, atomic writes);
* :mod:`.read`: reading torchvision/timm/DDP/compiled state dicts and safetensors, fitting them to a
  registered model strictly, and writing safetensors with resnetlab metadata.

The engine (training, evaluation, prediction), export and the CLI all read and write weights through here,
so the import graph runs one way: models, data <- weights <- engine <- experiments, export, bench <- cli.
"""

from .checkpoint import (
    FORMAT, atomic_save, first_mismatch, load_checkpoint, load_weights, make_checkpoint, model_from_checkpoint,
    model_record, normalization_record, pretrained_checkpoint, unwrap,
)
from .read import (
    SAFETENSORS_FORMAT, LoadedModel, Weights, build_from_weights, complete_state_dict, default_normalization,
    infer_architecture, load_model, load_pretrained, read_weights, save_safetensors, strip_prefixes,
)

__all__ = [
    "FORMAT", "SAFETENSORS_FORMAT", "LoadedModel", "Weights", "atomic_save", "build_from_weights",
    "complete_state_dict", "default_normalization", "first_mismatch", "infer_architecture", "load_checkpoint",
    "load_model", "load_pretrained", "load_weights", "make_checkpoint", "model_from_checkpoint", "model_record",
    "normalization_record", "pretrained_checkpoint", "read_weights", "save_safetensors", "strip_prefixes", "unwrap",
]
