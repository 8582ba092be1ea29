"""Two stages vs one (issue #27): every arm trained from the same stage-1 detector D, in one run, one table.

    python bench/bench_two_stage.py --dataset data/strawberry --size nano --stage1_epochs 20 --epochs 20 \\
        --eval_split valid+test --output runs/bench_two_stage --json runs/bench_two_stage/two_stage.json
    python bench/bench_two_stage.py --resolution 96 --stage1_epochs 3 --epochs 2   # tiny, synthetic shapes
    python bench/bench_two_stage.py --dataset runs/demo/dataset --size tiny --resolution 96 --stage1_epochs 3 \\
        --epochs 2 --arms A B C                                   # a subset; D is always trained first

Stage 1 trains D (``train_detector_stage1.py``) from ``--start_weights`` (default: ``assets/demo_shapes_tiny.pth``
for ``--size tiny``, as the demo does; the preset's official weights otherwise). Then every arm is one run of the
project's own script, exactly as a user would type it (the command is printed):

* ``stage1_D`` (kind stage1, from start): D itself, ``--stage1_epochs`` epochs; bbox only (segm fields null);
* ``A_nano`` (stage2, from D): ``train_seg_stage2.py --mask_head nano --cache_features memory``, ``--epochs`` epochs;
* ``B_full`` (stage2, from D): the same with ``--mask_head full`` (rfdetr's MaskHead);
* ``E_<kind>`` (stage2, from D): the same for every other kind of ``rfdetr.models.mask_head.MASK_HEAD_KINDS`` but
  auto (found at run time, e.g. ``E_dynamic``);
* ``C_joint_from_D`` (single_stage, from D): ``train_seg_single_stage.py --pretrained D``, detector and mask head
  trained together for as many epochs as A and B;
* ``D_joint_from_start`` (single_stage, from start): the same from D's own starting weights for ``--stage1_epochs +
  --epochs`` epochs: what a user does instead of two stages (``--skip_from_start`` leaves this slowest arm out).

A and B run on the frozen D, so their bbox mAP must be D's exactly: the bench prints that check.

``--arms`` picks a subset by name or letter (``A B C``, ``D`` or ``D'`` for D_joint_from_start, ``E`` for every new
head); D is trained regardless. Every run uses the same seed, resolution, batch (``--accum 1``), ``--workers``,
``--multi_scale 0``, fixed epochs, no early stopping, no EMA and validation after the last epoch only
(``--eval_interval``); stage 1 and the single-stage arms augment (``--augment``), the stage-2 arms cannot (their
feature cache needs ``--augment 0``; ``--no_cache`` drops the cache).
``--stage1_args`` / ``--stage2_args`` / ``--single_args`` pass more flags to those scripts (last, so they win).

Held out: every arm is scored by ``rfdetr.evaluate`` (COCO bbox, and segm for models with masks, through the same
predictor) on its LAST checkpoint (``checkpoint.pth``, the regular weights) and on ``--eval_split`` (default ``test``),
a split no run trains, selects a checkpoint or early-stops on (the runs validate on ``valid`` each epoch, but nothing
is chosen by it). ``--eval_split valid+test`` merges those splits into ``{output}/heldout/valid+test/`` (symlinked
images, one COCO file with re-numbered ids) for datasets whose test split alone is tiny.

Measured per arm: train time = the sum of the run's per-epoch ``train_epoch_time`` in ``log.jsonl`` (the training loop
only: setup and the per-epoch validation are excluded; a stage-2 arm's first epoch includes filling its feature
cache); peak memory = the training process's ``ru_maxrss`` from ``os.wait4`` (host RSS of the whole run, validation
included; not GPU memory); trainable parameters = ``parameters.trainable`` of the run's ``config.json``. Writes
``{output}/runs/<arm>/<run folder>``, ``{output}/logs/<arm>.{stdout,stderr}.txt``, ``{output}/eval/<arm>.json`` and the
JSON ``--json`` (default ``{output}/bench_two_stage.json``)::

    {"arms": {NAME: {"kind": "stage1" | "stage2" | "single_stage", "from": "D" | "start", "bbox_map", "segm_map",
                     "segm_ap50", "segm_ap75", "train_seconds", "peak_mb", "trainable_params", ...}}, ...}
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the package lives beside bench/
    sys.path.insert(0, str(REPO))

from rfdetr.data.synthetic import SyntheticSpec  # noqa: E402  (light: no torch)
from rfdetr.util.run_dir import write_json_atomic  # noqa: E402

TINY_START = REPO / "assets" / "demo_shapes_tiny.pth"
STAGE1, STAGE2, SINGLE = "train_detector_stage1.py", "train_seg_stage2.py", "train_seg_single_stage.py"
DETECTOR_ARM = "stage1_D"
# Head kinds with their own fixed arm names; every other kind of MASK_HEAD_KINDS (but "auto") becomes E_<kind>.
FIXED_HEADS = {"nano": "A_nano", "full": "B_full"}
JOINT_FROM_D, JOINT_FROM_START = "C_joint_from_D", "D_joint_from_start"
METRIC_KEYS = ("bbox_map", "segm_map", "segm_ap50", "segm_ap75")
STDERR_TAIL_LINES = 25
# The data when no --dataset is given (``make bench``): the demo's shapes, 40 / 10 / 10 images of 96 px.
SYNTHETIC_DATA = SyntheticSpec(splits=(("train", 40), ("valid", 10), ("test", 10)), width=96, height=96,
                               radius=(0.15, 0.3))


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which command and why (printed without a traceback)."""


@dataclass
class Arm:
    """One training run of the bench and what it measured."""

    name: str
    kind: str  # "stage1" | "stage2" | "single_stage"
    source: str  # "D" | "start"
    script: str
    argv: list[str]
    epochs: int
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Arms
# ---------------------------------------------------------------------------------------------------------------------


def extra_head_kinds() -> list[str]:
    """Mask-head kinds beyond auto / full / nano that ``train_seg_stage2.py --mask_head`` accepts right now."""
    from rfdetr.models.mask_head import MASK_HEAD_KINDS

    return [k for k in MASK_HEAD_KINDS if k != "auto" and k not in FIXED_HEADS]


def stage2_arm_names(kinds: list[str]) -> dict[str, str]:
    """``{arm name: --mask_head kind}`` of the stage-2 arms, A and B first."""
    names = {name: kind for kind, name in FIXED_HEADS.items()}
    names.update({f"E_{kind}": kind for kind in kinds})
    return names


def select_arms(all_names: list[str], wanted: list[str] | None, skip_from_start: bool) -> list[str]:
    """The arms to run, in ``all_names``' order: ``wanted`` by full name or letter (``D'`` / ``D``: from start).

    Raises:
        BenchError: a name that matches no arm.
    """
    chosen = set(all_names) if not wanted else set()
    for token in wanted or []:
        letter = token.rstrip("'").upper() if len(token.rstrip("'")) == 1 else None
        hits = [n for n in all_names if n == token or (letter is not None and n.split("_")[0] == letter)]
        if not hits:
            raise BenchError(f"--arms {token}: no such arm; choose from {', '.join(all_names)} (or their letters)")
        chosen.update(hits)
    if skip_from_start:
        chosen.discard(JOINT_FROM_START)
    return [n for n in all_names if n in chosen]


def default_start_weights(size: str) -> str:
    """The demo's tiny detector for ``tiny``, else the preset's official weights' name (``none`` if it has none)."""
    if size == "tiny":
        return str(TINY_START)
    from rfdetr.train.args import default_pretrained

    return default_pretrained(size) or "none"


def common_flags(args: argparse.Namespace) -> list[str]:
    """What every training arm shares: data, model size, seed, batch, fixed epochs without early stopping or EMA."""
    flags = ["--size", args.size, "--dataset", str(args.dataset), "--seed", str(args.seed), "--batch",
             str(args.batch), "--accum", "1", "--workers", str(args.workers), "--multi_scale", "0", "--tensorboard",
             "0", "--early_stopping", "0", "--run_test", "0", "--use_ema", "0"]
    if args.resolution is not None:
        flags += ["--resolution", str(args.resolution)]
    if args.device:
        flags += ["--device", args.device]
    return flags


def _validate_last(epochs: int) -> list[str]:
    """Validate only after the last epoch: nothing is chosen by validation here, so per-epoch evaluation would only
    cost wall time (training time is measured without it anyway)."""
    return ["--eval_interval", str(max(epochs, 1))]


def stage1_arm(args: argparse.Namespace, start: str) -> Arm:
    argv = [*common_flags(args), "--pretrained", start, "--pretrain_exclude_keys", args.pretrain_exclude_keys,
            "--epochs", str(args.stage1_epochs), *_validate_last(args.stage1_epochs), "--augment",
            str(int(args.augment)), *shlex.split(args.stage1_args)]
    return Arm(DETECTOR_ARM, "stage1", "start", STAGE1, argv, args.stage1_epochs)


def stage2_arm(args: argparse.Namespace, name: str, head: str, detector: Path) -> Arm:
    cache = [] if args.no_cache else ["--cache_features", "memory"]
    argv = [*common_flags(args), "--checkpoint", str(detector), "--mask_head", head, "--epochs", str(args.epochs),
            *_validate_last(args.epochs), "--augment", "0", *cache, *shlex.split(args.stage2_args)]
    return Arm(name, "stage2", "D", STAGE2, argv, args.epochs)


def single_stage_arm(args: argparse.Namespace, name: str, weights: str, exclude: str, epochs: int) -> Arm:
    argv = [*common_flags(args), "--pretrained", weights, "--pretrain_exclude_keys", exclude, "--mask_head",
            args.joint_mask_head, "--epochs", str(epochs), *_validate_last(epochs), "--augment", str(int(args.augment)),
            *shlex.split(args.single_args)]
    return Arm(name, "single_stage", "D" if name == JOINT_FROM_D else "start", SINGLE, argv, epochs)


# ---------------------------------------------------------------------------------------------------------------------
# Held-out split
# ---------------------------------------------------------------------------------------------------------------------


def _read_coco(dataset: Path, split: str) -> dict[str, Any]:
    path = dataset / split / "_annotations.coco.json"
    if not path.is_file():
        raise BenchError(f"--eval_split: {path} does not exist (splits there: "
                         f"{', '.join(sorted(p.name for p in dataset.iterdir() if p.is_dir())) or 'none'})")
    return json.loads(path.read_text())


def merge_splits(dataset: Path, splits: list[str], root: Path) -> Path:
    """Write ``root/{a+b}/``: symlinks to the splits' images and one COCO file with re-numbered image and annotation
    ids (written atomically). Returns the split folder.

    Raises:
        BenchError: a split is missing or the splits' categories differ.
    """
    name = "+".join(splits)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {"images": [], "annotations": []}
    for split in splits:
        coco = _read_coco(dataset, split)
        if "categories" not in merged:
            merged.update({k: v for k, v in coco.items() if k not in ("images", "annotations")})
        elif coco["categories"] != merged["categories"]:
            raise BenchError(f"--eval_split {name}: the categories of {split} differ from those of {splits[0]}")
        new_ids: dict[int, int] = {}
        for image in coco["images"]:
            new_ids[image["id"]] = len(merged["images"]) + 1
            file_name = f"{split}__{image['file_name'].replace('/', '__')}"
            link = folder / file_name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to((dataset / split / image["file_name"]).resolve())
            merged["images"].append({**image, "id": new_ids[image["id"]], "file_name": file_name})
        for ann in coco["annotations"]:
            merged["annotations"].append({**ann, "id": len(merged["annotations"]) + 1,
                                          "image_id": new_ids[ann["image_id"]]})
    write_json_atomic(folder / "_annotations.coco.json", merged)
    return folder


def heldout_split(args: argparse.Namespace, out: Path) -> tuple[Path, str, dict[str, int]]:
    """(dataset folder, split name, {"images", "objects"}) of ``--eval_split``; a merged split is written first.

    Raises:
        BenchError: ``train`` is asked for (the runs train on it), or a split is missing.
    """
    splits = [s for s in args.eval_split.split("+") if s]
    if not splits or "train" in splits:
        raise BenchError(f"--eval_split {args.eval_split}: give held-out splits (test, valid+test), never train")
    dataset = Path(args.dataset)
    if len(splits) == 1:
        coco = _read_coco(dataset, splits[0])
        root, split = dataset, splits[0]
    else:
        folder = merge_splits(dataset, splits, out / "heldout")
        coco = json.loads((folder / "_annotations.coco.json").read_text())
        root, split = folder.parent, folder.name
    counts = {"images": len(coco["images"]), "objects": sum(1 for a in coco["annotations"] if not a.get("iscrowd"))}
    return root, split, counts


# ---------------------------------------------------------------------------------------------------------------------
# Running and measuring
# ---------------------------------------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, progress-bar redraws (``\\r``) split into lines and blank ones dropped."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    parts = [p for p in text.replace("\r", "\n").splitlines() if p.strip()]
    return "\n".join(parts[-lines:])


def run_child(cmd: list[str], logs: Path, name: str, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` in the repository root, its output in ``logs/name.{stdout,stderr}.txt``; returns (wall seconds,
    peak RSS in MB of that process from ``os.wait4``).

    Raises:
        BenchError: a non-zero exit, with the command and the tail of its stderr.
    """
    logs.mkdir(parents=True, exist_ok=True)
    out_file, err_file = logs / f"{name}.stdout.txt", logs / f"{name}.stderr.txt"
    print(f"[{name}] {shlex.join(['python', *cmd[1:]])}", flush=True)  # run in the repository root
    start = time.perf_counter()
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"[{name}] failed (exit code {proc.returncode}) after {wall:.0f}s:\n  {shlex.join(cmd)}\n"
                         f"--- last lines of {err_file} ---\n{_tail(err_file)}")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def new_run_folder(root: Path, before: set[Path], name: str) -> Path:
    """The run folder a script just created under ``root``."""
    created = sorted(p for p in root.iterdir() if p.is_dir() and p not in before) if root.is_dir() else []
    if len(created) != 1:
        raise BenchError(f"[{name}] expected one new run folder in {root}, found {[p.name for p in created]}")
    return created[0]


def read_run(run_dir: Path, arm: Arm) -> dict[str, Any]:
    """Training time, epochs and trainable parameters from the run's ``log.jsonl`` and ``config.json``."""
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    if len(lines) != arm.epochs:
        raise BenchError(f"[{arm.name}] {run_dir / 'log.jsonl'} has {len(lines)} epochs, not {arm.epochs}: the run "
                         "stopped early (the bench needs fixed epochs)")
    config = json.loads((run_dir / "config.json").read_text())
    trainable = config.get("parameters", {}).get("trainable")
    return {"train_seconds": sum(float(r["train_epoch_time"]) for r in lines), "epochs": len(lines),
            "trainable_params": trainable}


def evaluate_arm(arm: Arm, weights: Path, dataset: Path, split: str, out: Path) -> dict[str, Any]:
    """``python -m rfdetr.evaluate --weights W --dataset D --split S --output J`` (in this process, its console
    output in the arm's eval log); returns the metrics of the table.

    Raises:
        BenchError: the evaluation failed (its error, no traceback).
    """
    from rfdetr import evaluate

    json_path = out / "eval" / f"{arm.name}.json"
    argv = ["--weights", str(weights), "--dataset", str(dataset), "--split", split, "--output", str(json_path),
            "--no_progress"]
    print(f"[{arm.name}] python -m rfdetr.evaluate {shlex.join(argv)}", flush=True)
    log = out / "logs" / f"{arm.name}.eval.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log.open("w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            results = evaluate.run_evaluate(evaluate.get_args_parser().parse_args(argv))
    except Exception as err:  # noqa: BLE001  (any failure: one message, no traceback)
        raise BenchError(f"[{arm.name}] rfdetr.evaluate failed: {type(err).__name__}: {err}\n--- {log} ---\n"
                         f"{_tail(log)}") from None
    segm = results.get("segm")
    where = None
    if segm:
        # Where masks win or lose: COCO's size ranges (stats 3-5: small < 32^2 <= medium < 96^2 <= large pixels)
        # and each class (non-convex shapes, say) at AP50:95; -1 (no object of that size) becomes None.
        where = {name: (value if value >= 0 else None) for name, value in
                 zip(("small", "medium", "large"), segm["stats"][3:6], strict=True)}
        where.update({str(k): (v if v >= 0 else None) for k, v in segm.get("per_class_AP", {}).items()})
    return {"bbox_map": results["bbox"]["mAP"], "segm_map": segm["mAP"] if segm else None,
            "segm_ap50": segm["mAP50"] if segm else None, "segm_ap75": segm["mAP75"] if segm else None,
            "segm_where": where, "eval_images": results["images"]}


def train_and_evaluate(arm: Arm, args: argparse.Namespace, out: Path, env: dict[str, str], heldout: tuple[Path, str]
                       ) -> Path:
    """Train ``arm``, read its run folder and evaluate its last checkpoint (filling ``arm.result``); returns that
    checkpoint."""
    root = out / "runs" / arm.name
    root.mkdir(parents=True, exist_ok=True)
    before = {p for p in root.iterdir() if p.is_dir()}
    cmd = [sys.executable, arm.script, *arm.argv, "--output", str(root)]
    wall, peak = run_child(cmd, out / "logs", arm.name, env)
    run_dir = new_run_folder(root, before, arm.name)
    last = run_dir / "checkpoint.pth"
    if not last.is_file():
        raise BenchError(f"[{arm.name}] {run_dir} has no checkpoint.pth")
    arm.result = {"kind": arm.kind, "from": arm.source, **read_run(run_dir, arm), "peak_mb": peak,
                  "wall_seconds": wall, "run_dir": str(run_dir), "weights": str(last),
                  "command": shlex.join(["python", *cmd[1:]])}
    arm.result.update(evaluate_arm(arm, last, *heldout, out))
    print(f"[{arm.name}] trained {arm.result['train_seconds']:.1f}s ({wall:.0f}s wall), peak {peak:.0f} MB; bbox "
          f"{arm.result['bbox_map']:.4f}" + (f", segm {arm.result['segm_map']:.4f}" if arm.result["segm_map"]
                                              is not None else ""), flush=True)
    return last


def reuse_detector(arm: Arm, weights: Path, out: Path, heldout: tuple[Path, str]) -> Path:
    """``--detector``: D from an earlier bench (or stage-1) run instead of training it again; its training time and
    parameters come from that run's folder, its scores from the same evaluation as every arm.

    Raises:
        BenchError: the file or its run folder's log.jsonl / config.json is missing.
    """
    if not weights.is_file():
        raise BenchError(f"--detector {weights}: no such file (give a stage-1 run's checkpoint.pth)")
    run_dir = weights.parent
    arm.epochs = sum(1 for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()) if (
        run_dir / "log.jsonl").is_file() else 0
    if not arm.epochs or not (run_dir / "config.json").is_file():
        raise BenchError(f"--detector {weights}: {run_dir} is not a stage-1 run folder (log.jsonl, config.json)")
    print(f"[{arm.name}] reused: {weights} ({arm.epochs} epochs)", flush=True)
    arm.result = {"kind": arm.kind, "from": arm.source, **read_run(run_dir, arm), "peak_mb": None,
                  "wall_seconds": None, "run_dir": str(run_dir), "weights": str(weights), "command": "reused"}
    arm.result.update(evaluate_arm(arm, weights, *heldout, out))
    return weights


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(arms: list[Arm]) -> str:
    """The markdown table, one row per arm."""
    header = ["arm", "kind", "from", "epochs", "bbox mAP50:95", "segm mAP50:95", "segm AP50", "segm AP75",
              "train s", "peak MB", "trainable params"]
    rows = [header, ["---"] * len(header)]
    for arm in arms:
        r = arm.result
        rows.append([arm.name, arm.kind, arm.source, str(r["epochs"]), _num(r["bbox_map"]), _num(r["segm_map"]),
                     _num(r["segm_ap50"]), _num(r["segm_ap75"]), _num(r["train_seconds"], 1),
                     _num(r["peak_mb"], 0), "-" if r["trainable_params"] is None else f"{r['trainable_params']:,}"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def format_where(arms: list[Arm]) -> str:
    """Segm AP50:95 of every arm with masks by object size and by class (markdown), or "" without any."""
    rows = [a for a in arms if a.result.get("segm_where")]
    if not rows:
        return ""
    columns = list(rows[0].result["segm_where"])
    lines = [["segm AP50:95 by", *columns], ["---"] * (len(columns) + 1)]
    lines += [[a.name, *(_num(a.result["segm_where"].get(c), 3) for c in columns)] for a in rows]
    return "\n".join("| " + " | ".join(row) + " |" for row in lines)


def comparisons(arms: list[Arm]) -> tuple[list[str], bool | None]:
    """Lines: each stage-2 arm's train time / C's and segm mAP - C's (points); the D bbox check. And the check."""
    by_name = {a.name: a for a in arms}
    lines = []
    joint = by_name.get(JOINT_FROM_D)
    stage2 = [a for a in arms if a.kind == "stage2"]
    for arm in stage2:
        if joint is None:
            lines.append(f"{arm.name}: (no {JOINT_FROM_D} arm to compare with)")
            continue
        time_ratio = arm.result["train_seconds"] / max(joint.result["train_seconds"], 1e-9)
        diff = 100 * (arm.result["segm_map"] - joint.result["segm_map"])
        lines.append(f"{arm.name} vs {JOINT_FROM_D}: train time {time_ratio:.2f}x, segm mAP50:95 {diff:+.1f} points")
    same: bool | None = None
    detector = by_name[DETECTOR_ARM]
    if stage2:
        same = all(a.result["bbox_map"] == detector.result["bbox_map"] for a in stage2)
        values = ", ".join(f"{a.name} {a.result['bbox_map']:.6f}" for a in stage2)
        lines.append(f"{'/'.join(a.name.split('_')[0] for a in stage2)} bbox mAP == D's: {'yes' if same else 'no'}"
                     + ("" if same else f" (D {detector.result['bbox_map']:.6f}; {values})"))
    return lines, same


def footer(args: argparse.Namespace, split: str, counts: dict[str, int]) -> str:
    return (f"Held out: {split} ({counts['images']} images, {counts['objects']} objects), never trained, selected or "
            f"early-stopped on; each arm's LAST checkpoint (checkpoint.pth), scored by rfdetr.evaluate. {args.size}"
            f"{f' @ {args.resolution}' if args.resolution else ''}, batch {args.batch}, seed {args.seed}; epochs: "
            f"stage 1 {args.stage1_epochs}, stage 2 and C {args.epochs}, D_joint_from_start "
            f"{args.stage1_epochs + args.epochs}.\n"
            "train s: training loop only (sum of log.jsonl train_epoch_time; setup and per-epoch validation excluded; "
            "a cached stage-2 arm's first epoch fills its feature cache); the run's whole wall time is wall_seconds "
            "in the JSON. peak MB: ru_maxrss of the training process (host RSS, whole run). trainable params: "
            "config.json parameters.trainable.")


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None,
                        help="Roboflow COCO export with instance masks: train/, valid/, test/ (default: a synthetic "
                             "shapes set, 40 / 10 / 10 images of 96 px, written to {output}/dataset)")
    parser.add_argument("--size", default="tiny", help="detection preset of every arm ('tiny': CPU preset)")
    parser.add_argument("--resolution", type=int, default=None, help="square input side (default: the preset's)")
    parser.add_argument("--stage1_epochs", "--stage1-epochs", type=int, default=3, help="stage-1 epochs of D")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the stage-2 arms and of C")
    parser.add_argument("--seed", type=int, default=42, help="training seed of every run")
    parser.add_argument("--batch", type=int, default=4, help="batch size of every run (no gradient accumulation)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of every run")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (default: the environment's, else 1)")
    parser.add_argument("--device", default=None, help="torch device of every run (default: CUDA when available)")
    parser.add_argument("--output", default="runs/bench_two_stage", help="folder for the runs, logs and JSON")
    parser.add_argument("--json", default=None, help="results JSON (default: {output}/bench_two_stage.json)")
    parser.add_argument("--eval_split", "--eval-split", default="test",
                        help="held-out split to score on; 'valid+test' merges splits (never 'train')")
    parser.add_argument("--arms", nargs="+", default=None,
                        help="arms to run, by name or letter (A B C D E); default all. D is always trained")
    parser.add_argument("--skip_from_start", "--skip-from-start", action="store_true",
                        help=f"leave out {JOINT_FROM_START} (the slowest arm)")
    parser.add_argument("--start_weights", "--start-weights", default=None,
                        help="D's (and D_joint_from_start's) starting weights: a file, an official name or 'none' "
                             "(default: assets/demo_shapes_tiny.pth for tiny, the preset's official weights otherwise)")
    parser.add_argument("--detector", default=None,
                        help="reuse D: a stage-1 run's checkpoint.pth (e.g. {output}/runs/stage1_D/<run>/"
                             "checkpoint.pth of an earlier bench) instead of training it; --stage1_epochs then "
                             "becomes that run's epoch count")
    parser.add_argument("--pretrain_exclude_keys", "--pretrain-exclude-keys", default="",
                        help="keys left out of the start weights, for D and D_joint_from_start alike (default: none)")
    parser.add_argument("--augment", type=int, choices=(0, 1), default=1,
                        help="augmentation of stage 1 and the single-stage arms (stage 2 with the cache: always 0)")
    parser.add_argument("--joint_mask_head", "--joint-mask-head", default="auto",
                        help="--mask_head of the single-stage arms (auto: nano for tiny / nano)")
    parser.add_argument("--no_cache", "--no-cache", action="store_true",
                        help="stage-2 arms without --cache_features (then --stage2_args may turn augmentation on)")
    parser.add_argument("--stage1_args", "--stage1-args", default="", help="more flags for train_detector_stage1.py")
    parser.add_argument("--stage2_args", "--stage2-args", default="", help="more flags for train_seg_stage2.py")
    parser.add_argument("--single_args", "--single-args", default="", help="more flags for train_seg_single_stage.py")
    return parser


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Train D and every chosen arm, evaluate them, print the table; returns the JSON written."""
    import torch

    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.dataset is None:
        from rfdetr.data.synthetic import write_synthetic_dataset

        args.dataset = write_synthetic_dataset(out / "dataset", dataclasses.replace(SYNTHETIC_DATA, seed=args.seed))
        print(f"[bench] no --dataset: synthetic shapes written to {args.dataset}")
    args.dataset = Path(args.dataset).resolve()
    for split in ("train", "valid"):
        if not (args.dataset / split / "_annotations.coco.json").is_file():
            raise BenchError(f"--dataset {args.dataset}: no {split}/_annotations.coco.json (a Roboflow COCO export)")
    threads = str(args.threads) if args.threads else os.environ.get("OMP_NUM_THREADS", "1")
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    torch.set_num_threads(int(threads))

    heads = stage2_arm_names(extra_head_kinds())
    names = select_arms([*heads, JOINT_FROM_D, JOINT_FROM_START], args.arms, args.skip_from_start)
    eval_root, split, counts = heldout_split(args, out)
    start = args.start_weights or default_start_weights(args.size)
    print(f"[bench] arms: {DETECTOR_ARM} (D), {', '.join(names)}; start weights: {start}; held-out split {split}: "
          f"{counts['images']} images, {counts['objects']} objects", flush=True)

    detector = stage1_arm(args, start)
    try:
        if args.detector:
            weights = reuse_detector(detector, Path(args.detector), out, (eval_root, split))
            args.stage1_epochs = detector.epochs  # D' trains as long as D and the stage 2 arms together
        else:
            weights = train_and_evaluate(detector, args, out, env, (eval_root, split))
    except BenchError as err:
        if args.start_weights is None and args.size != "tiny":
            raise BenchError(f"{err}\n(D starts from {start}, the preset's official weights: without network access "
                             "put the file in place or pass --start_weights FILE / none)") from None
        raise
    arms = [detector]
    for name in names:
        if name in heads:
            arm = stage2_arm(args, name, heads[name], weights)
        elif name == JOINT_FROM_D:
            arm = single_stage_arm(args, name, str(weights), "", args.epochs)
        else:
            arm = single_stage_arm(args, name, start, args.pretrain_exclude_keys, args.stage1_epochs + args.epochs)
        train_and_evaluate(arm, args, out, env, (eval_root, split))
        arms.append(arm)

    print()
    print(format_table(arms))
    where = format_where(arms)
    if where:
        print()
        print(where)
    lines, same = comparisons(arms)
    print()
    for line in lines:
        print(line)
    print()
    print(footer(args, split, counts))
    report = {
        "arms": {a.name: {k: a.result.get(k) for k in ("kind", "from", *METRIC_KEYS, "train_seconds", "peak_mb",
                                                       "trainable_params", "segm_where", "epochs", "wall_seconds",
                                                       "run_dir", "weights", "command")} for a in arms},
        "bbox_equal_to_D": same,
        "heldout": {"split": split, "dataset": str(eval_root), **counts},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
    }
    json_path = Path(args.json) if args.json else out / "bench_two_stage.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, report)
    print(f"[bench] results: {json_path}")
    return report


def main(args: argparse.Namespace) -> int:
    try:
        run_bench(args)
    except BenchError as err:
        print(f"bench_two_stage.py: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
