#!/usr/bin/env python
"""Evaluate a zoo model or a train.py checkpoint on the test split; optionally write analyses.

    python evaluate.py --model mpnet_tiny_digits
    python evaluate.py --checkpoint runs/mpnet_tiny_digits-digits/model.keras
    python evaluate.py --model mpnet_tiny_digits --analysis probes,saturation --report report/

Prints the model task's metrics (loss, top-1, top-5 for classifiers) and
the precision the model computes in (a checkpoint keeps its run's
--precision), and writes them as JSON to --output, by default beside a
--checkpoint (in its run folder, eval-<checkpoint name>-<dataset>.json);
with --model and no --output nothing is written. With --analysis, --report
DIR receives one PNG per figure and report.json with every number.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(prog=os.path.basename(__file__), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="zoo model name (published weights unless --weights)")
    src.add_argument("--checkpoint", help="a .keras file written by train.py")
    p.add_argument("--weights", default="default", help="with --model: a local weights file")
    p.add_argument("--dataset", help="default: the model's recipe dataset / the checkpoint run's")
    p.add_argument("--data-dir", help="local data (default: the checkpoint run's, or $BRANCHZOO_DATA_DIR)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--output", help="JSON file for the metrics (default: with --checkpoint, "
                                    "eval-<checkpoint name>-<dataset>.json beside it; with --model, none)")
    p.add_argument("--analysis", metavar="A,B", help="analyses to run (branchzoo.analysis.registry)")
    p.add_argument("--report", metavar="DIR", help="folder for the analysis PNGs and report.json")
    p.add_argument("--analysis-batches", type=int, metavar="N",
                   help="analyses read at most N batches of each split")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (shown only on a terminal anyway): what a slow step does "
                        "(fetching weights, decoding a dataset, analyses) and Keras' bar")
    args = p.parse_args(argv)
    if args.report and not args.analysis:
        p.error("--report needs --analysis (which analyses to write)")

    from branchzoo import _progress, training

    _progress.set_quiet(args.quiet)

    try:
        metrics = training.evaluate(
            model=args.model, checkpoint=args.checkpoint, weights=args.weights,
            dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
            output=args.output, verbose=1 if _progress.enabled() else 0,
            analysis=args.analysis, report=args.report,
            analysis_batches=args.analysis_batches,
        )
    except (ValueError, FileNotFoundError) as e:  # bad name, missing data/checkpoint/weights
        p.exit(2, f"{p.prog}: error: {e}\n")
    scores = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print("  ".join(f"{k} {v:.4f}" for k, v in scores.items())
          + f"  ({metrics['dataset']} test, {metrics['precision']})")
    print(json.dumps({k: v for k, v in metrics.items() if k != "environment"}, indent=2))
    if metrics["output"]:
        print(f"Metrics in {metrics['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
