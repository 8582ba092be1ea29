"""Checkpoints: files, the architecture they hold, fitting them to a model, weight download and class-head surgery.

* :mod:`~rfdetr.checkpoint.reader`: :func:`load_checkpoint_file`, the one entry point that reads any checkpoint;
* :mod:`~rfdetr.checkpoint.files`: read torch files of any supported layout (rfdetr's, Lightning's, ours, bare state
  dicts), write ours atomically in a layout rfdetr loads back; the shared key names and :class:`CheckpointError`;
* :mod:`~rfdetr.checkpoint.huggingface`: Hugging Face transformers RF-DETR folders, both ways.
* :mod:`~rfdetr.checkpoint.infer`: the :class:`~rfdetr.config.ModelConfig` a state dict was trained with.
* :mod:`~rfdetr.checkpoint.adapt`: fit a state dict to a model (class heads, position grid, queries) and load it.
* :mod:`~rfdetr.checkpoint.loading`: what a checkpoint says about the model to build (stage-2 mask heads, class names).
* :mod:`~rfdetr.checkpoint.weights`: the official weight files, their cache and download.
* :mod:`~rfdetr.checkpoint.surgery`: cut or strip the class heads (``shrink_head.py``, ``strip_class_heads.py``).

The names of reader, files, infer and adapt are re-exported here
(``from rfdetr.checkpoint import load_checkpoint_file``).
"""

from rfdetr.checkpoint.adapt import (
    LoadReport,
    adapt_state_dict,
    expected_shapes,
    interpolate_pos_embed,
    load_into,
    slice_queries,
)
from rfdetr.checkpoint.files import (
    CLASS_BIAS_KEY,
    CLASS_HEAD_PREFIXES,
    IGNORED_KEYS,
    PATCH_EMBED_KEY,
    POS_EMBED_KEY,
    QUERY_KEYS,
    CheckpointError,
    checkpoint_args,
    checkpoint_category_ids,
    checkpoint_class_names,
    extract_state_dict,
    make_checkpoint,
    save_checkpoint,
)
from rfdetr.checkpoint.infer import StateDictShapes, infer_model_config, read_shapes
from rfdetr.checkpoint.reader import load_checkpoint_file

__all__ = [
    "CLASS_BIAS_KEY", "CLASS_HEAD_PREFIXES", "IGNORED_KEYS", "PATCH_EMBED_KEY", "POS_EMBED_KEY", "QUERY_KEYS",
    "CheckpointError", "LoadReport", "StateDictShapes", "adapt_state_dict", "checkpoint_args",
    "checkpoint_category_ids", "checkpoint_class_names",
    "expected_shapes", "extract_state_dict", "infer_model_config", "interpolate_pos_embed",
    "load_checkpoint_file", "load_into", "make_checkpoint", "read_shapes", "save_checkpoint", "slice_queries",
]
