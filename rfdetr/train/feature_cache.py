"""``--cache_features``: compute the frozen detector's outputs once per image, then train only the mask head.

With augmentation and multi-scale off, an image reaches the network as the same tensor every epoch, and the frozen
detector (eval mode, no dropout) maps it to the same outputs. The first epoch therefore stores, per image, what the
mask head and the matcher need (:data:`rfdetr.models.segmenter.DetectorOutputs`: the projector map, the decoder
outputs of every layer, their logits and boxes) in float16; later epochs, and every evaluation after the first, skip
the detector. The training split's targets (boxes, labels, masks bit-packed) are stored too, so that a cached training
sample is not even read from disk: its image is only a placeholder of the right size, since the mask head needs the
input size and nothing else (in DataLoader workers, which hold a copy of an in-memory store made before it filled,
images are read as usual; a disk store is seen by every process).

Samples are identified by ``target["cache_key"]`` (``"{split}/{index}"``), which :class:`KeyedDataset` adds, so the
train, valid and test splits (whose COCO image ids overlap) never share entries. Entries live in memory, or on disk
under a folder whose ``manifest.json`` records what they were computed from (a folder made for another detector
checkpoint, resolution or dataset is refused, never silently reused).

Per image, nano at 384 px stores about 0.6 MB: features 256 x 24 x 24 and hs 2 x 300 x 256, in float16 (and 0.9 MB
of pixels, 3 x 384 x 384, for a head that reads the image).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from rfdetr.models.segmenter import DetectorOutputs
from rfdetr.util.atomic import atomic_path
from rfdetr.util.distributed import unwrap_model

logger = logging.getLogger(__name__)

CACHE_KEY = "cache_key"
MANIFEST = "manifest.json"
# Which tensors of DetectorOutputs hold the batch in dim 0 (the rest are [L, B, ...]).
_BATCH_FIRST = ("features",)
_CACHED = ("features", "hs", "logits", "boxes")
# The network input of a sample, kept for heads that read the image (``CachedForward(keep_pixels=True)``).
PIXELS = "pixels"


def _pack_target(target: Mapping[str, Any]) -> dict[str, Any]:
    """A target on the CPU with its bool masks [N, H, W] bit-packed along W (8x smaller)."""
    out = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in target.items()}
    if "masks" in out:
        masks = out.pop("masks")
        out["masks_packed"] = torch.from_numpy(np.packbits(masks.numpy().astype(bool), axis=-1))
        out["masks_width"] = int(masks.shape[-1])
    return out


def _unpack_target(packed: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_pack_target`."""
    out = dict(packed)
    if "masks_packed" in out:
        bits = out.pop("masks_packed").numpy()
        out["masks"] = torch.from_numpy(np.unpackbits(bits, axis=-1, count=out.pop("masks_width")).astype(bool))
    return out


class KeyedDataset(Dataset):
    """A dataset whose targets carry ``cache_key = "{tag}/{index}"``; every other attribute is the wrapped one's.

    Args:
        dataset: e.g. a :class:`rfdetr.data.coco.CocoDetection` split (its transforms must be deterministic).
        tag: the split name, unique among the datasets sharing one cache.
        store: when given, a sample whose target the store holds is served from it without reading the image (the
            image is a zero placeholder of the network input size). Only for training: evaluation draws pictures.
    """

    def __init__(self, dataset: Dataset, tag: str, store: FeatureStore | None = None) -> None:
        self.dataset, self.tag, self.store = dataset, tag, store

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        key = f"{self.tag}/{index}"
        target = self.store.target(key) if self.store is not None else None
        if target is not None:
            height, width = (int(v) for v in target["size"])
            return torch.zeros(()).expand(3, height, width), {**target, CACHE_KEY: key}
        image, target = self.dataset[index]
        return image, {**target, CACHE_KEY: key}

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally; "dataset" itself is excluded so that unpickling in
        # DataLoader workers (before __dict__ is restored) cannot recurse.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class FeatureStore:
    """Per-image float16 detector outputs, in memory or in a folder.

    Args:
        directory: where to keep entries on disk; ``None`` keeps them in memory.
        fingerprint: what the entries are computed from (checkpoint, resolution, dataset); a folder whose manifest
            records another fingerprint is refused.

    Raises:
        ValueError: ``directory`` holds a cache of something else.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 fingerprint: Mapping[str, Any] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self._targets: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        self.nbytes = 0
        if self.directory is not None:
            self._open_directory(dict(fingerprint or {}))

    def _open_directory(self, fingerprint: dict[str, Any]) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / MANIFEST
        if manifest.exists():
            recorded = json.loads(manifest.read_text())
            if recorded != json.loads(json.dumps(fingerprint)):
                raise ValueError(f"feature cache {self.directory} was computed for {recorded}, not {fingerprint}: "
                                 "pass another --cache_features folder, or delete this one")
            logger.info("reusing the feature cache in %s", self.directory)
        else:
            if any(self.directory.iterdir()):
                raise ValueError(f"--cache_features {self.directory}: the folder is not empty and has no {MANIFEST}; "
                                 "choose an empty or new folder")
            manifest.write_text(json.dumps(fingerprint, indent=2))

    def _path(self, key: str, suffix: str = ".pt") -> Path:
        assert self.directory is not None
        return self.directory / (key.replace("/", "_") + suffix)

    def _save(self, obj: Any, path: Path) -> None:
        with atomic_path(path) as tmp:  # an interrupted run never leaves half an entry
            torch.save(obj, tmp)

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry of one image (float16 tensors without a batch dimension), or None."""
        entry = self._memory.get(key)
        if entry is None and self.directory is not None and self._path(key).is_file():
            entry = torch.load(self._path(key), map_location="cpu", weights_only=True)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def target(self, key: str) -> dict[str, Any] | None:
        """The stored target of one sample (masks unpacked), or None; not counted as a hit or miss."""
        packed = self._targets.get(key)
        if packed is None and self.directory is not None and self._path(key, ".target.pt").is_file():
            packed = torch.load(self._path(key, ".target.pt"), map_location="cpu", weights_only=True)
        return None if packed is None else _unpack_target(packed)

    def put(self, key: str, entry: dict[str, torch.Tensor], target: Mapping[str, Any] | None = None) -> None:
        """Store one image's entry (tensors kept as given: float16, CPU) and optionally its target."""
        packed = _pack_target(target) if target is not None else None
        new = key not in self._memory and not (self.directory is not None and self._path(key).is_file())
        if self.directory is None:
            self._memory[key] = entry
            if packed is not None:
                self._targets[key] = packed
        else:
            self._save(entry, self._path(key))
            if packed is not None:
                self._save(packed, self._path(key, ".target.pt"))
        if new:
            tensors = [*entry.values(), *(v for v in (packed or {}).values() if torch.is_tensor(v))]
            self.nbytes += sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        if self.directory is None:
            return len(self._memory)
        return sum(1 for p in self.directory.glob("*.pt") if not p.name.endswith(".target.pt"))


def _split_batch(det: DetectorOutputs, index: int) -> dict[str, torch.Tensor]:
    """One image of a batch of detector outputs, as float16 CPU tensors."""
    return {k: (det[k][index] if k in _BATCH_FIRST else det[k][:, index]).to("cpu", torch.float16).contiguous()
            for k in _CACHED}


def _stack(entries: list[dict[str, torch.Tensor]], device: torch.device) -> DetectorOutputs:
    """Per-image entries -> a float32 batch on ``device`` in the :data:`DetectorOutputs` layout."""
    with _no_cpu_autocast():
        return {k: torch.stack([e[k] for e in entries], dim=0 if k in _BATCH_FIRST else 1).to(device, torch.float32)
                for k in _CACHED}


def _no_cpu_autocast() -> torch.autocast:
    """Assembling a batch from the stored (CPU, float16) entries is data movement, not compute: under CPU autocast
    in bfloat16 ``torch.stack`` would try to promote float16 with bfloat16 and raise "Unexpected floating ScalarType
    in at::autocast::prioritize"."""
    return torch.autocast("cpu", enabled=False)


class CachedForward:
    """A ``TrainingJob.forward`` that runs the frozen detector only for images not yet in ``store``.

    Called as ``forward(model, images, targets)`` with the (possibly DDP-wrapped) :class:`Segmenter` whose detector
    is frozen, and targets from a :class:`KeyedDataset`. The mask head always sees the stored float16 values (also
    on the first, filling pass), so every epoch trains on exactly the same inputs.

    Args:
        store: where entries live.
        target_tags: splits (key prefixes) whose targets are stored as well, so that :class:`KeyedDataset` can skip
            their images later (``("train",)`` in stage 2).
        keep_pixels: store each image's network input too (float16 [3, H, W]) and feed the head the stored one, for
            heads that read the image (MaskHeadDynamic): a cached sample then still needs no decoding.
    """

    def __init__(self, store: FeatureStore, target_tags: tuple[str, ...] = ("train",), keep_pixels: bool = False
                 ) -> None:
        self.store = store
        self.target_tags = target_tags
        self.keep_pixels = keep_pixels

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, Any]:
        segmenter = unwrap_model(model)
        if not getattr(segmenter, "freeze_detector", False):
            raise ValueError("feature caching needs a frozen detector (stage 2)")
        keys = []
        for t in targets:
            if CACHE_KEY not in t:
                raise KeyError(f"target without '{CACHE_KEY}': wrap the dataset in KeyedDataset to cache features")
            keys.append(t[CACHE_KEY])
        entries = [self.store.get(k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            det = segmenter.detect(images[missing])
            for j, i in enumerate(missing):
                entries[i] = _split_batch(det, j)
                if self.keep_pixels:
                    entries[i][PIXELS] = images[i].to("cpu", torch.float16).contiguous()
                keep_target = keys[i].split("/", 1)[0] in self.target_tags
                self.store.put(keys[i], entries[i], target=targets[i] if keep_target else None)
        if self.keep_pixels:
            if any(PIXELS not in e for e in entries):
                raise ValueError(f"a cached entry has no '{PIXELS}': this cache was filled for a head that does not "
                                 "read the image; use a new --cache_features folder")
            # Every epoch (the filling one too) sees the same stored float16 pixels, as it sees the stored features.
            with _no_cpu_autocast():
                images = torch.stack([e[PIXELS] for e in entries]).to(images.device, torch.float32)
        # Through the (DDP) wrapper's forward, so that gradient synchronisation is set up as usual.
        return model(images, detections=_stack(entries, images.device))  # type: ignore[arg-type]
