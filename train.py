#!/usr/bin/env python
"""Train a branchzoo model: recipe defaults from its zoo entry, overrides here.

    python train.py --model mpnet --dataset digits --epochs 2 --export runs/mpnet_savedmodel
    python train.py --list 'mpnet*'
    python -m branchzoo.launch --workers 2 -- train.py --model mpnet --strategy multiworker

Writes to --output (default runs/<model>-<dataset>): config.json (the resolved
run config), model.keras, metrics.json; TensorBoard logs to --logdir (default
<output>/logs). The recipe says what training is (loss, phases, task); this
script only overrides it. Interrupted? Rerun the same command with --resume.
"""

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keys of metrics.json that are bookkeeping, not results: not printed.
_NOT_PRINTED = ("history", "parameters", "finished", "phases", "export", "export_max_abs_diff",
                "epochs_run_in_this_process", "first_epoch_in_this_process")


def build_parser():
    p = argparse.ArgumentParser(prog=os.path.basename(__file__), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="zoo model name or alias (see --list)")
    p.add_argument("--list", nargs="?", const="*", metavar="PATTERN",
                   help="print the registered model names (fnmatch PATTERN) and exit")
    p.add_argument("--dataset", help="a dataset of branchzoo.data.list_datasets(): digits, mnist, cifar10, "
                                     "imagenette, image_folder, ... (default: the recipe's)")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="resize images (shorter side, centre crop) to PX x PX (default: the recipe's)")
    p.add_argument("--data-dir", help="local data: folder, image-folder layout, official archive or .tar.gz (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--epochs", type=int, help="total epochs; a recipe's phases and LR steps scale with it")
    p.add_argument("--batch-size", type=int, help="global batch size (split over replicas)")
    p.add_argument("--lr", type=float, help="base learning rate (scales every phase's rate and step schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE",
                   help='builder overrides, values as JSON, e.g. widths="[8,16,32,64]"')
    p.add_argument("--steps-per-epoch", type=int,
                   help="only this many batches per training epoch and per-epoch validation "
                        "(short runs); the final test evaluation still reads the whole split")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None)
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the per-epoch evaluation on the test split")
    p.add_argument("--logdir", help="TensorBoard folder (default <output>/logs)")
    p.add_argument("--output", help="run folder (default runs/<model>-<dataset>)")
    p.add_argument("--export", help="also write a TF SavedModel here (checked against the Keras model)")
    p.add_argument("--strategy", choices=("auto", "mirrored", "default", "multiworker"), default="auto",
                   help="auto: MirroredStrategy when more than one GPU is visible; multiworker: "
                        "MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG (run the same "
                        "command on every worker; see python -m branchzoo.launch)")
    p.add_argument("--cpu-devices", type=int,
                   help="split the CPU into N logical devices (MirroredStrategy without GPUs)")
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                   help="XLA compilation of the train step (auto: Keras' choice)")
    p.add_argument("--precision", metavar="P",
                   help="float32 | mixed_bfloat16 | mixed_float16: the Keras dtype policy the model is "
                        "built and trained under (mixed: float32 variables, 16-bit compute; "
                        "mixed_float16 with loss scaling). Default: the recipe's, else float32")
    p.add_argument("--analysis", metavar="A,B",
                   help="log these analyses (branchzoo.analysis) to TensorBoard during training")
    p.add_argument("--analysis-every", type=int, metavar="N",
                   help="run --analysis every N epochs (default: each analysis' own period)")
    p.add_argument("--deterministic", action="store_true", help="TensorFlow op determinism")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --output")
    p.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"), help="Keras progress")
    p.add_argument("--quiet", action="store_true",
                   help="no progress: neither Keras' bars (unless --verbose is given) nor the lines "
                        "saying what a slow step does (decoding a dataset, evaluating, exporting); "
                        "those lines are only shown on a terminal anyway")
    return p


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list is not None:
        from branchzoo import zoo

        print("\n".join(zoo.list_models(args.list)))
        return 0
    if not args.model:
        parser.error("the following arguments are required: --model (or --list)")
    from branchzoo import _progress, training

    _progress.set_quiet(args.quiet)
    try:
        if args.cpu_devices is not None and args.cpu_devices < 1:
            raise ValueError(f"`cpu_devices` must be >= 1. Received: cpu_devices={args.cpu_devices}")
        run = _resolve(training, args)  # checks everything, TensorFlow untouched
        training.configure_cpu_devices(args.cpu_devices)
        # Builds the model and opens the data before anything is written.
        prepared = training.prepare(run, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:  # a user error: the message, exit 2, nothing written
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    # SIGTERM (a scheduler's stop) ends the run like Ctrl-C: the last finished
    # epoch is already backed up, so report how to resume.
    signal.signal(signal.SIGTERM, _stop)
    verbose = (0 if args.quiet else "auto") if args.verbose == "auto" else int(args.verbose)
    try:
        metrics = training.run_prepared(prepared, verbose=verbose)
    except KeyboardInterrupt:
        backup = training.distributed.backup_dir(run["output"], prepared.cluster)
        print(f"\nInterrupted. Continue with the same command plus --resume "
              f"(backup in {backup}).", file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in metrics.items() if k not in _NOT_PRINTED}, indent=2))
    if not prepared.paths.is_chief:
        print(f"Worker {prepared.cluster.name} done; the chief wrote the model, config and metrics "
              f"to its {run['output']}.")
        return 0
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
        jit_compile=args.jit_compile, precision=args.precision,
        analysis=args.analysis, analysis_every=args.analysis_every,
        dataset_options={"image_size": args.image_size} if args.image_size is not None else None,
    )


if __name__ == "__main__":
    sys.exit(main())
