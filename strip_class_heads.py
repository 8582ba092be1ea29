"""Remove every class-count-dependent tensor (and optimizer / scheduler / EMA state) for a fresh start.

    python strip_class_heads.py rf-detr-nano.pth rf-detr-nano-noheads.pth

The result initializes a model with any num_classes; only the removed keys are then missing. Exit code 2 and nothing
written on any error.
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.checkpoint import CheckpointError
from rfdetr.checkpoint.surgery import SurgeryError, strip_class_heads_file


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("in_ckpt", help="checkpoint to read (never modified)")
    parser.add_argument("out_ckpt", help="checkpoint to write")
    parser.add_argument("--force", action="store_true", help="replace out_ckpt if it exists")
    return parser


def main(args: argparse.Namespace) -> int:
    try:
        lines = strip_class_heads_file(args.in_ckpt, args.out_ckpt, force=args.force)
    except (SurgeryError, CheckpointError) as e:
        print(f"strip_class_heads.py: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
