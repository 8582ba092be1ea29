"""Checkpoint surgery on the class heads: keep some classes by name (shrink) or remove the heads (strip).

Class-dependent tensors of RF-DETR are ``class_embed.{weight,bias}`` and, for each of the 13 query groups,
``transformer.enc_out_class_embed.{g}.{weight,bias}``; their first dimension has one row per logit. Every other tensor
is left untouched (the very same tensor objects), so the result differs from the input only where it must.

Head rows follow the DETR convention: ``num_classes + 1`` logits, where the extra row is a spare "background" slot
that is never a positive. Where the classes sit in the rows depends on who wrote the checkpoint:

* ours and rfdetr >= 1.9 (contiguous labels): class ``i`` is row ``i``, the spare row is the last one;
* rfdetr <= 1.5 on a Roboflow export: class ``i`` is row ``i + 1`` (the COCO category id; row 0 is the unused
  placeholder category), recognised by ``rows == len(class_names) + 2``;
* official COCO checkpoints (91 rows, no names): row = COCO category id 1..90, row 0 never positive.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Entries of a checkpoint dict that hold a state dict with class heads (Lightning's ``state_dict`` has "model." keys).
STATE_DICT_ENTRIES: tuple[str, ...] = ("model", "ema_model", "ema", "state_dict")
# Training state whose tensors are shaped like the parameters: meaningless once the heads change.
TRAINING_STATE_ENTRIES: tuple[str, ...] = (
    "optimizer", "lr_scheduler", "optimizer_states", "lr_schedulers", "scaler", "ema_state",
)
_CLASS_KEY = re.compile(r"(^|\.)(class_embed|transformer\.enc_out_class_embed\.\d+)\.(weight|bias)$")


class SurgeryError(ValueError):
    """A surgery request that cannot be carried out; the message says why and what to do."""


def is_class_key(key: str) -> bool:
    """Whether ``key`` is a class-count-dependent tensor (any prefix such as ``model.`` allowed)."""
    return _CLASS_KEY.search(key) is not None


def class_head_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """The class-dependent keys of a state dict, in its order."""
    return [k for k in state_dict if is_class_key(k)]


def num_head_rows(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Logit rows of the main class head (``class_embed.bias`` under any prefix)."""
    for key, value in state_dict.items():
        if key == "class_embed.bias" or key.endswith(".class_embed.bias"):
            return int(value.shape[0])
    raise SurgeryError("the checkpoint has no class head (no 'class_embed.bias'): nothing to shrink. If it was "
                       "stripped with strip_class_heads.py, train or fine-tune it on your classes first.")


def select_class_rows(state_dict: Mapping[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """A new state dict whose class tensors keep ``rows`` in that order; other entries are the same objects.

    Args:
        state_dict: any RF-DETR state dict; class tensors are [K, D] weights and [K] biases.
        rows: row indices into K (the spare background row included if wanted).

    Returns:
        The state dict with class tensors [len(rows), D] / [len(rows)], contiguous copies.
    """
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        out[key] = value.index_select(0, index).contiguous() if is_class_key(key) else value
    return out


def drop_class_heads(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove every class-dependent tensor; returns the new dict and the removed keys."""
    removed = class_head_keys(state_dict)
    return {k: v for k, v in state_dict.items() if k not in set(removed)}, removed


@dataclass(frozen=True)
class HeadLayout:
    """Which head row holds which class.

    Attributes:
        names: class names in row order of ``rows``.
        rows: the head row of each name.
        spare_row: the row kept as the spare (background) slot after shrinking.
        source: how the mapping was found (for messages).
    """

    names: tuple[str, ...]
    rows: tuple[int, ...]
    spare_row: int
    source: str

    def row_of(self, name: str) -> int:
        return self.rows[self.names.index(name)]


def head_layout(num_rows: int, class_names: Sequence[str] | None,
                coco_names: Sequence[str] | None = None) -> HeadLayout:
    """Map class names to head rows (see the module docstring for the three conventions).

    Args:
        num_rows: logit rows of the checkpoint's class head.
        class_names: the checkpoint's own class names, if it has them.
        coco_names: the 91-slot COCO names table (index = category id) for official checkpoints without names.
    """
    if class_names:
        names = tuple(class_names)
        if num_rows == len(names) + 1:
            return HeadLayout(names, tuple(range(len(names))), num_rows - 1, "class names (row i = class i)")
        if num_rows == len(names) + 2:
            # rfdetr <= 1.5 kept Roboflow's category ids as rows: row 0 is the placeholder category.
            return HeadLayout(names, tuple(range(1, len(names) + 1)), 0, "class names (row i+1 = class i, rfdetr<=1.5)")
        if num_rows >= len(names):
            return HeadLayout(names, tuple(range(len(names))), num_rows - 1,
                              f"class names ({len(names)} names for {num_rows} rows)")
        raise SurgeryError(f"the checkpoint has {len(names)} class names but only {num_rows} head rows")
    if coco_names is not None and num_rows == len(coco_names):
        pairs = [(n, i) for i, n in enumerate(coco_names) if n and n != "N/A" and i > 0]
        return HeadLayout(tuple(n for n, _ in pairs), tuple(i for _, i in pairs), 0, "COCO category ids")
    raise SurgeryError(f"the checkpoint stores no class names and its head has {num_rows} rows (not COCO's 91): "
                       "use --keep_ids with row numbers instead of names")


def rows_to_keep(layout: HeadLayout, keep: Sequence[str] | None = None, keep_ids: Sequence[int] | None = None,
                 num_rows: int | None = None) -> tuple[list[int], list[str]]:
    """Resolve a keep request to head rows and the new class names.

    Raises:
        SurgeryError: empty request, duplicates, unknown names (with the closest matches), rows out of range.
    """
    if keep:
        if len(set(keep)) != len(keep):
            dupes = sorted({k for k in keep if list(keep).count(k) > 1})
            raise SurgeryError(f"duplicate names in --keep: {dupes}")
        unknown = [k for k in keep if k not in layout.names]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, layout.names, n=3, cutoff=0.5)
                close += [n for n in layout.names if n.lower() == name.lower() and n not in close]
                hints.append(f"'{name}'" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
            raise SurgeryError(f"unknown class name(s): {'; '.join(hints)}. Available ({layout.source}): "
                               f"{', '.join(layout.names)}")
        return [layout.row_of(k) for k in keep], list(keep)
    if keep_ids:
        if len(set(keep_ids)) != len(keep_ids):
            raise SurgeryError(f"duplicate ids in --keep_ids: {sorted({i for i in keep_ids if keep_ids.count(i) > 1})}")
        limit = num_rows if num_rows is not None else max(layout.rows, default=-1) + 1
        bad = [i for i in keep_ids if not 0 <= i < limit]
        if bad:
            raise SurgeryError(f"--keep_ids {bad} out of range: the head has rows 0..{limit - 1}")
        names = [layout.names[layout.rows.index(i)] if i in layout.rows else f"class_{i}" for i in keep_ids]
        return list(keep_ids), names
    raise SurgeryError("nothing to keep: pass --keep NAME [NAME ...], --keep_ids ROW [ROW ...] or --dataset DIR")


def _set_arg(args: Any, key: str, value: Any) -> Any:
    """Set a field on a Namespace or dict ``args`` without changing its type."""
    if isinstance(args, argparse.Namespace):
        setattr(args, key, value)
    elif isinstance(args, dict):
        args[key] = value
    return args


def _update_metadata(ckpt: dict[str, Any], num_classes: int, class_names: list[str] | None) -> None:
    """Record the new class count (and names) wherever this checkpoint layout keeps them."""
    if "args" in ckpt:
        _set_arg(ckpt["args"], "num_classes", num_classes)
        _set_arg(ckpt["args"], "class_names", class_names)
    if isinstance(ckpt.get("model_config"), dict):
        ckpt["model_config"]["num_classes"] = num_classes
        if "class_names" in ckpt["model_config"]:
            ckpt["model_config"]["class_names"] = class_names
    if "class_names" in ckpt:
        ckpt["class_names"] = class_names


def shrink_checkpoint(ckpt: dict[str, Any], rows: Sequence[int], class_names: list[str],
                      spare_row: int) -> tuple[dict[str, Any], list[str]]:
    """Keep ``rows`` (then the spare row) of every class head in every state dict of ``ckpt``.

    Args:
        ckpt: a loaded checkpoint dict (published, rfdetr >= 1.7 training, or ours); not modified.
        rows: head rows to keep, in the output order.
        class_names: the names of those rows.
        spare_row: the row that becomes the new spare (background) slot, last.

    Returns:
        The new checkpoint (num_classes = len(rows), head rows = len(rows) + 1) and a list of change descriptions.
    """
    order = list(rows) + [spare_row]
    out = dict(ckpt)
    changes: list[str] = []
    for entry in STATE_DICT_ENTRIES:
        state = ckpt.get(entry)
        if isinstance(state, Mapping) and class_head_keys(state):
            out[entry] = select_class_rows(state, order)
            changes.append(f"{entry}: {len(class_head_keys(state))} class tensors sliced to {len(order)} rows")
    for entry in TRAINING_STATE_ENTRIES:
        if entry in out:
            del out[entry]
            changes.append(f"{entry}: dropped (its moments are shaped like the old heads)")
    if "args" in out:
        out["args"] = argparse.Namespace(**vars(out["args"])) if isinstance(out["args"], argparse.Namespace) \
            else dict(out["args"])
    if isinstance(out.get("model_config"), dict):
        out["model_config"] = dict(out["model_config"])
    _update_metadata(out, len(rows), class_names)
    changes.append(f"num_classes -> {len(rows)}, class_names -> {class_names}")
    ids = out.get("category_ids")
    if isinstance(ids, list):
        # The dataset ids of the kept classes (rows are class indices); a row beyond them has none to keep.
        if all(0 <= r < len(ids) for r in rows):
            out["category_ids"] = [ids[r] for r in rows]
            changes.append(f"category_ids -> {out['category_ids']}")
        else:
            del out["category_ids"]
            changes.append("category_ids: dropped (a kept row has no recorded dataset id)")
    return out, changes


def unchanged_by_shrink(ckpt: Mapping[str, Any], rows: Sequence[int], class_names: Sequence[str], spare_row: int,
                        rows_total: int) -> bool:
    """Whether :func:`shrink_checkpoint` would return ``ckpt`` as it is: every row kept in place, the spare row last,
    the same class names, and no training state to drop."""
    from rfdetr.checkpoint import checkpoint_class_names

    return (list(rows) + [spare_row] == list(range(rows_total))
            and list(checkpoint_class_names(ckpt) or []) == list(class_names)
            and not any(entry in ckpt for entry in TRAINING_STATE_ENTRIES))


def strip_checkpoint(ckpt: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove every class-dependent tensor and all optimizer / scheduler / EMA state.

    Returns:
        The new checkpoint (same layout, so rfdetr still reads it) and the removed keys / entries.
    """
    out = dict(ckpt)
    removed: list[str] = []
    for entry in STATE_DICT_ENTRIES:
        state = ckpt.get(entry)
        if not isinstance(state, Mapping):
            continue
        if entry in ("ema_model", "ema"):
            del out[entry]
            removed.append(f"{entry} (EMA weights)")
            continue
        out[entry], keys = drop_class_heads(state)
        removed += [f"{entry}: {k}" for k in keys]
    for entry in TRAINING_STATE_ENTRIES:
        if entry in out:
            del out[entry]
            removed.append(f"{entry} (training state)")
    if "category_ids" in out:  # no class heads, no classes: the next training records its dataset's ids
        del out["category_ids"]
        removed.append("category_ids")
    return out, removed


def dataset_class_names(root: str | Path) -> list[str]:
    """The class names a dataset (COCO or YOLO) trains with (train split, placeholder category dropped), in label
    order."""
    from rfdetr.data.annotations import load_split, resolve_categories

    try:
        _, data = load_split(root, "train")
    except (FileNotFoundError, ValueError) as e:
        raise SurgeryError(f"--dataset {root}: {e}") from e
    return [c["name"] for c in resolve_categories(data, root)]


def _check_paths(in_path: Path, out_path: Path, force: bool) -> None:
    from rfdetr.checkpoint.files import is_transformers_checkpoint

    if not (in_path.is_file() or is_transformers_checkpoint(in_path)):
        raise SurgeryError(f"input checkpoint {in_path} does not exist")
    if out_path.resolve() == in_path.resolve():
        raise SurgeryError(f"the output {out_path} is the input: inputs are never overwritten; choose another path")
    if out_path.exists() and not force:
        raise SurgeryError(f"{out_path} already exists: choose another path or pass --force to replace it")


def shrink_head_file(in_path: str | Path, out_path: str | Path, keep: Sequence[str] | None = None,
                     keep_ids: Sequence[int] | None = None, dataset: str | Path | None = None, force: bool = False,
                     dry_run: bool = False) -> list[str]:
    """Load ``in_path``, keep the requested classes, and write ``out_path`` atomically (unless ``dry_run``).

    Exactly one of ``keep`` (names), ``keep_ids`` (head rows) or ``dataset`` (a dataset's class names) selects the
    classes. Returns the lines describing what changed.

    Raises:
        SurgeryError / CheckpointError: any problem; nothing is written then.
    """
    from rfdetr.checkpoint import checkpoint_class_names, load_checkpoint_file, save_checkpoint
    from rfdetr.data.coco_classes import COCO_CLASSES

    in_path, out_path = Path(in_path), Path(out_path)
    if bool(keep) + bool(keep_ids) + (dataset is not None) > 1:
        raise SurgeryError("give only one of --keep, --keep_ids and --dataset")
    _check_paths(in_path, out_path, force)
    ckpt = load_checkpoint_file(in_path)
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise SurgeryError(f"{in_path} has no 'model' state dict: not an RF-DETR checkpoint")
    rows_total = num_head_rows(state)
    layout = head_layout(rows_total, checkpoint_class_names(ckpt), COCO_CLASSES)
    if dataset is not None:
        keep = dataset_class_names(dataset)
    rows, names = rows_to_keep(layout, keep, keep_ids, rows_total)
    if unchanged_by_shrink(ckpt, rows, names, layout.spare_row, rows_total):
        # Writing the input again under another name would only double the disk use (120 MB for nano).
        return [f"{in_path}: nothing to change: it already has exactly these {len(rows)} classes, in this order "
                f"({', '.join(names)}), and no training state; {out_path} not written. Use {in_path} itself "
                f"(e.g. train_seg_stage2.py --checkpoint {in_path})"]
    out, changes = shrink_checkpoint(ckpt, rows, names, layout.spare_row)
    lines = [f"{in_path}: {rows_total} head rows, classes from {layout.source}",
             f"keep {len(rows)} classes: " + ", ".join(f"{n} (row {r})" for n, r in zip(names, rows, strict=True)),
             f"spare background row: {layout.spare_row} -> becomes row {len(rows)}"] + changes
    if dry_run:
        lines.append(f"dry run: {out_path} not written")
    else:
        save_checkpoint(out, out_path)
        lines.append(f"wrote {out_path}")
    return lines


def strip_class_heads_file(in_path: str | Path, out_path: str | Path, force: bool = False) -> list[str]:
    """Load ``in_path``, remove class heads and training state, write ``out_path`` atomically; returns the log."""
    from rfdetr.checkpoint import load_checkpoint_file, save_checkpoint

    in_path, out_path = Path(in_path), Path(out_path)
    _check_paths(in_path, out_path, force)
    ckpt = load_checkpoint_file(in_path)
    if not isinstance(ckpt.get("model"), Mapping):
        raise SurgeryError(f"{in_path} has no 'model' state dict: not an RF-DETR checkpoint")
    if not class_head_keys(ckpt["model"]):
        raise SurgeryError(f"{in_path} has no class heads: it was already stripped")
    out, removed = strip_checkpoint(ckpt)
    save_checkpoint(out, out_path)
    return [f"removed {len(removed)} entries:"] + [f"  {r}" for r in removed] + [f"wrote {out_path}"]
