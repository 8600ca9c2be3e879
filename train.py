#!/usr/bin/env python
"""Train a branchzoo model: recipe defaults from its zoo entry, overrides here.

    python train.py --model mpnet --dataset digits --epochs 2 --export runs/mpnet_savedmodel

Writes to --output (default runs/<model>-<dataset>): config.json (the resolved
run config), model.keras, metrics.json; TensorBoard logs to --logdir (default
<output>/logs). Interrupted? Rerun the same command with --resume.
"""

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo model name or alias (see --list)")
    p.add_argument("--dataset", help="digits, mnist, fashion_mnist, cifar10, cifar100, image_folder (default: the recipe's)")
    p.add_argument("--data-dir", help="local data: folder, image-folder layout, official archive or .tar.gz (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split over replicas)")
    p.add_argument("--lr", type=float, help="base learning rate (the recipe's step schedule scales it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE",
                   help='builder overrides, e.g. widths="[8,16,32,64]"')
    p.add_argument("--steps-per-epoch", type=int,
                   help="only this many batches per epoch (and of the test split): short runs")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None)
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the per-epoch evaluation on the test split")
    p.add_argument("--logdir", help="TensorBoard folder (default <output>/logs)")
    p.add_argument("--output", help="run folder (default runs/<model>-<dataset>)")
    p.add_argument("--export", help="also write a TF SavedModel here (checked against the Keras model)")
    p.add_argument("--strategy", choices=("auto", "mirrored", "default"), default="auto",
                   help="auto: MirroredStrategy when more than one GPU is visible")
    p.add_argument("--cpu-devices", type=int,
                   help="split the CPU into N logical devices (MirroredStrategy without GPUs)")
    p.add_argument("--deterministic", action="store_true", help="TensorFlow op determinism")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output")
    p.add_argument("--verbose", default="auto", help="Keras progress: auto, 0, 1 or 2")
    return p


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from branchzoo import training
    from branchzoo.data import DatasetNotFoundError

    training.configure_cpu_devices(args.cpu_devices)
    try:
        run = _resolve(training, args)
    except (ValueError, FileNotFoundError) as e:  # a bad name or value: usage + message, exit 2
        parser.error(str(e))
    # SIGTERM (a scheduler's stop) ends the run like Ctrl-C: the last finished
    # epoch is already backed up, so report how to resume.
    signal.signal(signal.SIGTERM, _stop)
    verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
    try:
        metrics = training.train(run, resume=args.resume, verbose=verbose)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Continue with the same command plus --resume "
              f"(backup in {os.path.join(run['output'], 'backup')}).", file=sys.stderr)
        return 130
    except DatasetNotFoundError as e:  # data missing offline: say how to point at it, no traceback
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in ("dataset", "loss", "top1", "top5")}, indent=2))
    print(f"Model, config and metrics in {run['output']}; TensorBoard: tensorboard --logdir {run['logdir']}")
    if run["export"]:
        print(f"SavedModel in {run['export']} (serve output within {metrics['export_max_abs_diff']:.2g} of Keras)")
    return 0


def _resolve(training, args):
    return training.resolve_run_config(
        args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        model_kwargs=training.parse_model_kwargs(args.model_kwargs), strategy=args.strategy,
        cpu_devices=args.cpu_devices, logdir=args.logdir, output=args.output,
        export=args.export, augment=args.augment, deterministic=args.deterministic,
        validate=args.validate, steps_per_epoch=args.steps_per_epoch,
    )


if __name__ == "__main__":
    sys.exit(main())
