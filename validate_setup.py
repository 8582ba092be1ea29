"""Check the environment and a dataset before training: prints PASS / WARN / FAIL per check, exits 1 on any FAIL.

    python validate_setup.py --dataset dataset/ --stage 2
"""

from __future__ import annotations

import argparse
import sys

from rfdetr.data.validate import validate_dataset
from rfdetr.util.checklist import Checklist
from rfdetr.util.environment import check_environment


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="dataset/",
                        help="Roboflow COCO export (train/, valid/, [test/]) or YOLO dataset (data.yaml)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1,
                        help="2: every annotation must have a decodable, non-empty mask")
    parser.add_argument("--output", default="runs", help="where runs will be written (free disk is checked)")
    parser.add_argument("--skip_env", "--skip-env", action="store_true", help="only check the dataset")
    parser.add_argument("--max_lines", "--max-lines", type=int, default=20,
                        help="problem lines printed per kind before only counting them")
    return parser


def main(args: argparse.Namespace) -> int:
    checks = Checklist(max_per_kind=args.max_lines)
    if not args.skip_env:
        print("Environment")
        check_environment(checks, args.output)
        print()
    print(f"Dataset {args.dataset} (stage {args.stage})")
    validate_dataset(args.dataset, checks, stage=args.stage)
    checks.summarize()
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
