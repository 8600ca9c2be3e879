#!/usr/bin/env python
"""Evaluate a zoo model or a train.py checkpoint: loss, top-1, top-5 on the test split.

    python evaluate.py --model mpnet_tiny_digits
    python evaluate.py --checkpoint runs/mpnet2_2x3_2x7_cifar10-digits/model.keras
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="zoo model name (published weights unless --weights)")
    src.add_argument("--checkpoint", help="a .keras file written by train.py")
    p.add_argument("--weights", default="default", help="with --model: a local weights file")
    p.add_argument("--dataset", help="default: the model's recipe dataset / the checkpoint run's")
    p.add_argument("--data-dir", help="local data (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--output", help="JSON file for the metrics (default eval-<name>-<dataset>.json)")
    args = p.parse_args(argv)

    from branchzoo import training

    try:
        metrics = training.evaluate(
            model=args.model, checkpoint=args.checkpoint, weights=args.weights,
            dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
            output=args.output, verbose=0,
        )
    except FileNotFoundError as e:  # missing data or checkpoint (DatasetNotFoundError included)
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"loss {metrics['loss']:.4f}  top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
          f"({metrics['dataset']} test)")
    print(json.dumps({k: v for k, v in metrics.items() if k != "environment"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
