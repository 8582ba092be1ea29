"""Run folders: ``{output_root}/{prefix}_{n}`` reserved atomically, and the resolved config written into it first.

Layout of a run folder (written by rank 0 only):

* ``config.json``: the resolved configuration, written before anything else so every run explains itself;
* ``log.jsonl``: one JSON object per epoch (:class:`rfdetr.util.loggers.JsonlLogger`);
* TensorBoard event files (:class:`rfdetr.util.loggers.RunLogger`);
* checkpoints (:mod:`rfdetr.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rfdetr.util.atomic import atomic_path, write_bytes_atomic

__all__ = ["CONFIG_FILE", "create_run_dir", "to_jsonable", "write_bytes_atomic", "write_config", "write_json_atomic"]

CONFIG_FILE = "config.json"


def create_run_dir(output_root: str | os.PathLike[str], prefix: str) -> Path:
    """Create and return ``output_root/{prefix}_{n}`` for the first free ``n = 1, 2, ...``.

    The folder is reserved with ``mkdir(exist_ok=False)``, which is atomic: when two runs race for the same number,
    one gets ``FileExistsError`` and moves on, so two runs never share (or overwrite) a folder.

    Args:
        output_root: parent folder, created if missing (e.g. ``runs``).
        prefix: run name without the number, e.g. ``detector_nano_384``.
    """
    if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
        raise ValueError(f"run prefix must be a non-empty folder name, got {prefix!r}")
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = root / f"{prefix}_{n}"
        try:
            candidate.mkdir(exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for logs and configs: tensors / numpy scalars -> numbers or lists, paths / dtypes -> str,
    dataclasses -> dicts, non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_jsonable(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays / scalars, without importing either here
        return to_jsonable(value.tolist())
    return str(value)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON (values made plain by :func:`to_jsonable`) through
    :func:`~rfdetr.util.atomic.atomic_path`: readers never see a partial file."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8") as f:
        json.dump(to_jsonable(data), f, indent=2)
        f.write("\n")
    return Path(path)


def link_or_copy(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bool:
    """Make ``dest`` hold ``source``'s bytes without storing them twice: a hard link, or a copy where the file system
    has none. Atomic (:func:`rfdetr.util.atomic.atomic_path`): ``dest`` is whole or absent.

    Safe because checkpoints are never written in place: every writer replaces the file (a new inode), so rewriting
    one name later leaves the other's content as it was.

    Returns:
        True for a hard link, False for a copy.
    """
    with atomic_path(dest, durable=True) as tmp:
        try:
            os.link(source, tmp)
            return True
        except OSError:  # no hard links here (some network / FAT file systems), or another device
            shutil.copyfile(source, tmp)
            return False


def write_config(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """Write the resolved configuration to ``run_dir/config.json``; call it right after :func:`create_run_dir`.

    Args:
        run_dir: the run folder.
        config: e.g. ``{"train": asdict(train_cfg), "optim": ..., "loss": ..., "model": model_cfg.to_dict(),
            "argv": sys.argv}``; values are converted with :func:`to_jsonable`.

    Returns:
        The path of ``config.json``.
    """
    return write_json_atomic(Path(run_dir) / CONFIG_FILE, dict(config))
