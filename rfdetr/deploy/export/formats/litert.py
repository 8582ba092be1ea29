"""What the float and the INT8 TFLite writers share: the named signature, the quiet converter, the metadata entry.

:mod:`~rfdetr.deploy.export.formats.tflite` (float files, the runtime) and
:mod:`~rfdetr.deploy.export.formats.tflite_int8` (PT2E INT8) both import from here, never from each other.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.graph import OUTPUT_NAMES, ExportForward
from rfdetr.deploy.export.metadata import decode_metadata

__all__ = ["METADATA_NAME", "NamedIO", "converter", "embed_metadata", "quiet_converter"]

# Name of the flatbuffer metadata entry that holds the export metadata (JSON, UTF-8).
METADATA_NAME = "rfdetr_export"


class NamedIO(nn.Module):
    """The export forward with a keyword input and a dict of outputs, so the file's signature names both.

    litert-torch names signature inputs after the keyword arguments and outputs after dict keys (a tuple gives
    ``output_0`` ...); names let :class:`~rfdetr.deploy.export.formats.tflite.Session` find each output without relying
    on the converter's order.
    """

    def __init__(self, module: ExportForward) -> None:
        super().__init__()
        self.module = module

    def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002 - the signature's input name
        """input [B, 3, R, R] -> {dets [B, Q, 4], labels [B, Q, K][, masks [B, Q, R/4, R/4]]}."""
        return dict(zip(OUTPUT_NAMES, self.module(input), strict=False))


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """litert-torch prints a progress tree for every conversion; keep it off for this one only."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    previous = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def converter() -> Any:
    """The ``litert_torch`` package (:class:`~rfdetr.util.optional.MissingPackageError` with the pip command when it
    is not installed)."""
    FORMATS["tflite"].require()
    import litert_torch

    return litert_torch


def embed_metadata(content: bytes, metadata: Mapping[str, str]) -> bytes:
    """``content`` (a TFLite flatbuffer) with ``metadata`` as the JSON entry :data:`METADATA_NAME` (replacing any).

    Raises:
        ImportError: ai-edge-litert is not installed.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    old = [m for m in (model.metadata or []) if m.name in (METADATA_NAME, METADATA_NAME.encode())]
    entries = [m for m in (model.metadata or []) if m not in old]
    buffer = model.buffers[old[0].buffer] if old else schema.BufferT()
    # Stored decoded (lists and numbers as JSON, not JSON inside strings) so that a reader on the phone gets plain
    # values; the reader (:mod:`~rfdetr.deploy.export.formats.tflite`) encodes them back to the framework's strings.
    text = json.dumps(decode_metadata(metadata), sort_keys=True)
    buffer.data = np.frombuffer(text.encode(), dtype=np.uint8)
    if not old:
        model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = old[0].buffer if old else len(model.buffers) - 1
    model.metadata = [*entries, entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
