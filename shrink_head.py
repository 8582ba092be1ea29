"""Cut a checkpoint's class heads down to the classes you keep, by name, in the order given.

    python shrink_head.py --in_ckpt runs/detector_nano_384_1/checkpoint_best_total.pth \\
        --out_ckpt runs/detector_nano_384_1/checkpoint_3class.pth --keep Flower Fruit Leaf

Every class-dependent tensor is sliced (class_embed and the 13 two-stage encoder heads); num_classes and class_names
are updated in the saved args; everything else stays bit-identical. Exit code 2 and nothing written on any error.
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.checkpoint import CheckpointError
from rfdetr.checkpoint.surgery import SurgeryError, shrink_head_file


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in_ckpt", "--in-ckpt", required=True, help="checkpoint to read (never modified)")
    parser.add_argument("--out_ckpt", "--out-ckpt", required=True, help="checkpoint to write")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep", nargs="+", metavar="NAME", help="class names to keep, in the new order")
    which.add_argument("--keep_ids", "--keep-ids", nargs="+", type=int, metavar="ROW", help="head rows to keep")
    which.add_argument("--dataset", help="keep exactly the classes of this dataset (Roboflow COCO layout), by name")
    parser.add_argument("--force", action="store_true", help="replace --out_ckpt if it exists")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print what would change, write nothing")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        lines = shrink_head_file(args.in_ckpt, args.out_ckpt, keep=args.keep, keep_ids=args.keep_ids,
                                 dataset=args.dataset, force=args.force, dry_run=args.dry_run)
    except (SurgeryError, CheckpointError) as e:
        print(f"shrink_head.py: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
