"""The one entry point that reads any checkpoint this package accepts: :func:`load_checkpoint_file`.

A torch file (``.pth`` / ``.pt`` / ``.ckpt``: ours, rfdetr's, Lightning's, a bare state dict) is read by
:func:`rfdetr.checkpoint.files.load_torch_checkpoint`; a Hugging Face transformers RF-DETR folder (or its
``model.safetensors`` with ``config.json`` beside it) is converted to our layout by
:func:`rfdetr.checkpoint.huggingface.read_transformers_checkpoint`. In a module of its own, above both, so that
neither imports the other back.
"""

from __future__ import annotations

import os
from typing import Any

from rfdetr.checkpoint.files import is_transformers_checkpoint, load_torch_checkpoint

__all__ = ["load_checkpoint_file"]


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load any supported checkpoint on the CPU, without executing pickled code.

    Args:
        path: a torch checkpoint file, or a transformers folder / ``.safetensors`` file.

    Returns:
        The checkpoint dict in our layout (a bare state dict is returned as is).

    Raises:
        FileNotFoundError: the path does not exist (or is a folder that is not a transformers checkpoint).
        CheckpointError: not a readable checkpoint; the message says why, in one line.
    """
    if is_transformers_checkpoint(path):
        # Imported when used: reading a torch file needs none of it, and ``python -m rfdetr.checkpoint.huggingface``
        # must find that module not yet imported by this package.
        from rfdetr.checkpoint.huggingface import read_transformers_checkpoint

        return read_transformers_checkpoint(path)
    return load_torch_checkpoint(path)
