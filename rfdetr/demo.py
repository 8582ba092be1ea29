"""``make demo``: the whole pipeline on the embedded synthetic dataset, on the CPU, in a few minutes.

Steps so far: write the synthetic dataset, then check the environment and the dataset (``validate_setup.py``).
Later stages (stage-1 training, head surgery, stage-2 masks, prediction) are added here as they land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset
from rfdetr.data.validate import validate_dataset
from rfdetr.util.checklist import Checklist
from rfdetr.util.environment import check_environment


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="runs/demo", help="demo folder (dataset and runs go below it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    return parser


def main(args: argparse.Namespace) -> int:
    out = Path(args.output)
    dataset = write_synthetic_dataset(out / "dataset", SyntheticSpec(seed=args.seed))
    print(f"[demo] synthetic dataset written to {dataset}")

    print("[demo] validate_setup: environment and dataset (stage 2: masks required)")
    checks = Checklist()
    check_environment(checks, out)
    validate_dataset(dataset, checks, stage=2)
    checks.summarize()
    if checks.failed:
        print("[demo] validation failed; see the FAIL lines above", file=sys.stderr)
        return 1
    print("[demo] done")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
