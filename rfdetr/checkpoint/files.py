"""Checkpoint files: reading every supported layout, the key names they share, and writing our own atomically.

Pure functions over plain dicts and tensors; no nn.Module is built here. Supported file layouts (spec section 12.1):

* published rfdetr files: ``{"model": state_dict, "args": argparse.Namespace, ...}``;
* rfdetr >= 1.7 training files: ``model``, ``state_dict`` (``model.``-prefixed), ``args`` as a dict, ``model_config``,
  ``model_name``, Lightning bookkeeping;
* Lightning ``.ckpt`` files: only ``state_dict`` (``model.`` and ``_orig_mod.`` prefixes);
* our own files (:func:`make_checkpoint`), which keep rfdetr's ``model`` / ``args`` keys so upstream rfdetr loads them;
* a bare state dict, possibly with DDP's ``module.`` prefix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rfdetr.config import ModelConfig
from rfdetr.util.atomic import atomic_path

logger = logging.getLogger(__name__)

# Key names of the released checkpoints (spec section 12.2).
PATCH_EMBED_KEY = "backbone.0.encoder.encoder.embeddings.patch_embeddings.projection.weight"
POS_EMBED_KEY = "backbone.0.encoder.encoder.embeddings.position_embeddings"
CLASS_BIAS_KEY = "class_embed.bias"
QUERY_KEYS: tuple[str, ...] = ("query_feat.weight", "refpoint_embed.weight")
# Tensors whose first dimension is the number of class logits; re-initialised when the class count changes.
CLASS_HEAD_PREFIXES: tuple[str, ...] = ("class_embed.", "transformer.enc_out_class_embed.")
# rfdetr >= 1.7 registers this empty keypoint buffer even on detection models; released files do not have it.
IGNORED_KEYS: frozenset[str] = frozenset({"_kp_active_mask"})

# The architecture fields of spec 12.1 that upstream rfdetr reads back from ``args`` (plus the patch/window fields).
_ARGS_FIELDS: tuple[str, ...] = (
    "encoder", "hidden_dim", "patch_size", "num_windows", "positional_encoding_size", "out_feature_indexes",
    "projector_scale", "dec_layers", "sa_nheads", "ca_nheads", "dec_n_points", "num_queries", "num_select",
    "group_detr", "segmentation_head", "mask_downsample_ratio", "resolution", "num_classes", "dim_feedforward",
)
# Fixed for every released variant (spec section 1.1); upstream's args carry them, so ours do too.
_FIXED_ARGS: dict[str, Any] = {
    "two_stage": True, "bbox_reparam": True, "lite_refpoint_refine": True, "layer_norm": True, "num_channels": 3,
    "dataset_file": "roboflow", "pretrain_weights": None,
}
# ModelConfig fields that a saved ``model_config`` dict (ours or upstream's) may override.
_OVERRIDABLE_FIELDS: tuple[str, ...] = ("resolution", "num_windows", "num_queries", "num_select")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or its tensors do not fit the model."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------


# A Hugging Face transformers RF-DETR checkpoint is a folder with these (rfdetr.checkpoint.huggingface).
TRANSFORMERS_CONFIG_FILE = "config.json"
TRANSFORMERS_WEIGHTS_FILE = "model.safetensors"


def is_transformers_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is meant as a transformers folder: a folder with ``model.safetensors`` or a ``config.json``
    naming a ``model_type``, or a ``.safetensors`` file. (A training run's folder has a config.json without one.)"""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    if not path.is_dir():
        return False
    if (path / TRANSFORMERS_WEIGHTS_FILE).is_file():
        return True
    config = path / TRANSFORMERS_CONFIG_FILE
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def load_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a torch checkpoint file on the CPU without executing arbitrary pickled code.

    Uses ``torch.load(weights_only=True)`` with ``argparse.Namespace`` as the only extra allowed global (the published
    files store their training arguments as a Namespace). Every loader reads files through
    :func:`rfdetr.checkpoint.reader.load_checkpoint_file`, which also takes Hugging Face transformers folders.

    Args:
        path: a ``.pth`` / ``.pt`` / ``.ckpt`` file.

    Returns:
        The top-level dict of the file (a bare state dict is returned as is).

    Raises:
        FileNotFoundError: the path does not exist or is a directory.
        CheckpointError: the file is not a torch checkpoint, is truncated, or needs globals we do not allow.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path is not a file: {path}")
    check_torch_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if match:
            raise CheckpointError(
                f"{path} was pickled with a Python object that is not allowed for safe loading ({match.group(1)}); "
                "only tensors, containers, primitives and argparse.Namespace are accepted. Re-save the checkpoint "
                "with plain types (e.g. `torch.save({'model': model.state_dict()}, path)`)."
            ) from None
        # torch's own message advises weights_only=False, which is unsafe and never what a user needs here.
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: its pickled data holds something other than "
                              "tensors and containers") from None
    except (RuntimeError, EOFError, KeyError, IndexError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {_first_line(err)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict checkpoint or a state dict")
    return dict(obj)


# How a torch.save file starts: a zip archive (the default since PyTorch 1.6) or a pickle (the legacy format).
_TORCH_HEADERS: tuple[bytes, ...] = (b"PK\x03\x04", b"\x80")


def check_torch_file(path: str | os.PathLike[str]) -> None:
    """Cheaply check that ``path`` looks like a ``torch.save`` file (its first bytes only).

    Raises:
        CheckpointError: one line saying what the file is not, instead of an unpickler error (a text, JSON or image
            file given as a checkpoint).
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_TORCH_HEADERS):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (a torch.save file is a zip archive or a pickle; "
                              f"this one starts with {head!r}): pass a .pth file, e.g. a run's checkpoint.pth")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights of any supported checkpoint layout, with wrapper prefixes removed.

    Order of preference: ``model`` (published, rfdetr >= 1.7 and our files), then a Lightning ``state_dict`` (keys
    under ``model.``), then the dict itself when it is a bare state dict. DDP's ``module.`` prefix and
    ``torch.compile``'s ``_orig_mod.`` segments are stripped; ``_kp_active_mask`` is dropped.

    Args:
        ckpt: the dict returned by :func:`load_checkpoint_file`.

    Returns:
        A new ``{key: tensor}`` dict (tensors are shared, not copied).

    Raises:
        CheckpointError: no state dict found, or LoRA adapter weights that must be merged first.
    """
    raw: Mapping[str, Any] | None = None
    if _is_state_dict(ckpt.get("model")):
        raw = ckpt["model"]
    elif _is_state_dict(ckpt.get("state_dict")):
        lightning = ckpt["state_dict"]
        raw = {k[len("model.") :]: v for k, v in lightning.items() if k.startswith("model.")}
        if not raw:  # a plain state dict that someone stored under "state_dict"
            raw = lightning
    elif _is_state_dict(ckpt):
        raw = ckpt
    if raw is None:
        raise CheckpointError(
            "no model weights found in the checkpoint: expected a 'model' or 'state_dict' entry holding tensors, "
            f"got top-level keys {sorted(map(str, ckpt))[:20]}"
        )

    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        key = key.replace("_orig_mod.", "")
        if key.startswith("module."):
            key = key[len("module.") :]
        if key in IGNORED_KEYS:
            continue
        out[key] = value
    if any(".base_model.model." in k or ".lora_" in k for k in out):
        raise CheckpointError(
            "the checkpoint holds LoRA adapter weights (backbone_lora=True); merge the adapters into the encoder "
            "before loading it here"
        )
    return out


def checkpoint_args(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``args`` as a plain dict (Namespace in published files, dict in newer ones; ``{}`` if none)."""
    args = ckpt.get("args")
    if args is None:
        args = ckpt.get("hyper_parameters")  # Lightning's name for the same thing
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    return {}


def checkpoint_category_ids(ckpt: Mapping[str, Any]) -> list[int] | None:
    """The training dataset's category id of each class (our ``category_ids`` key), or ``None`` when not recorded
    (rfdetr's checkpoints, ours from before it was recorded, or an entry that is not a list of distinct ints)."""
    ids = ckpt.get("category_ids")
    if isinstance(ids, Sequence) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids) \
            and len(set(ids)) == len(ids):
        return [int(i) for i in ids]
    return None


def checkpoint_class_names(ckpt: Mapping[str, Any]) -> list[str] | None:
    """Class names recorded in the checkpoint, or ``None``.

    Looked up in our top-level ``class_names`` key, then ``args.class_names`` (rfdetr), then ``model_config``.
    """
    model_config = ckpt.get("model_config")
    candidates = [
        ckpt.get("class_names"),
        checkpoint_args(ckpt).get("class_names"),
        model_config.get("class_names") if isinstance(model_config, Mapping) else None,
    ]
    for names in candidates:
        if isinstance(names, str):
            return [names]
        if isinstance(names, Sequence) and len(names) > 0 and all(isinstance(n, str) for n in names):
            return list(names)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Writing files
# ---------------------------------------------------------------------------------------------------------------------


def make_checkpoint(
    model_state_dict: Mapping[str, Tensor],
    cfg: ModelConfig,
    class_names: Sequence[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a checkpoint dict that both this package and upstream rfdetr can load.

    Keeps rfdetr's top-level ``model`` and ``args`` (an ``argparse.Namespace`` with the architecture fields upstream
    reads back: num_classes, class_names, resolution, patch_size, num_queries, group_detr, segmentation_head ...), and
    adds ``model_name`` (the rfdetr class), ``model_config`` (our config as a dict) and ``class_names``.

    Args:
        model_state_dict: the weights; tensors are detached and moved to the CPU.
        cfg: the model's config.
        class_names: label names indexed by class id (``None``: ``cfg.class_names`` if set, else not recorded).
        **extra: more top-level entries (``stage``, ``epoch``, ``optimizer`` ...); must be ``weights_only``-loadable.

    Returns:
        The checkpoint dict, ready for :func:`save_checkpoint`.
    """
    names = list(class_names) if class_names is not None else list(cfg.class_names) or None
    args = {k: _plain(getattr(cfg, k)) for k in _ARGS_FIELDS}
    args.update(_FIXED_ARGS)
    if names is not None:  # upstream treats a present class_names as authoritative, so never write an empty one
        args["class_names"] = names
    config = cfg.to_dict()
    config["class_names"] = names or []
    ckpt: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in model_state_dict.items() if k not in IGNORED_KEYS},
        "args": argparse.Namespace(**args),
        "model_name": cfg.upstream_name,
        "model_config": config,
        "class_names": names,
    }
    ckpt.update(extra)
    return ckpt


def _plain(value: Any) -> Any:
    """Tuples become lists, as in rfdetr's own args."""
    return list(value) if isinstance(value, tuple) else value


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: a crash never leaves a partial file at ``path``.

    The data goes to a temporary file in the same directory, is fsync-ed, then renamed over ``path``
    (``os.replace`` is atomic within one file system).

    Args:
        obj: the checkpoint dict (see :func:`make_checkpoint`).
        path: destination; parent directories are created.

    Returns:
        The destination path.
    """
    with atomic_path(path, durable=True) as tmp, open(tmp, "xb") as f:
        torch.save(dict(obj), f)
    return Path(path)


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values (key order ignored): the identity of a set of
    weights however its file was saved or named (a stage-2 run records its frozen detector's)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
