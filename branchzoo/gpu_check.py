"""One command that checks the zoo on the GPUs of this machine: ``python -m branchzoo.gpu_check``.

For one CPU-sized zoo entry of every family it trains a fixed number of steps
on the bundled digits data (no download), through train.py's own run
(`branchzoo.training.train`), with `tf.distribute.MirroredStrategy` over all
visible GPUs, three ways: float32, mixed precision (``mixed_float16``, loss
scaling; ``--mixed mixed_bfloat16`` for GPUs that prefer it) and float32
with XLA; then prints one table: images per second after the first
``--warmup`` steps, the last training loss (finite or not) and the peak GPU
memory of the run. On a machine without a GPU it says so in one line and
exits 0. ``--cpu`` runs the same table on the CPU (a smoke test of the
check itself, not a measurement).

Budget: under 5 minutes on one GPU with the defaults (6 entries x 3 ways x
``--steps`` 40 steps of ``--batch-size`` 64 per replica, most of it
tracing).
"""

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One CPU-sized entry per family: MPNet, GatedConnect ResNeXt, modular ensemble, BranchSum,
# branched stem (Distill), BranchedGenerator GAN.
ENTRIES = ("mpnet_tiny_digits", "resnext_gated_tiny_cifar10", "modular_mlp_256x4",
           "branched_resnet18_8x4_cifar10", "branched_stem_2x2_cifar10", "branched_gan_tiny_digits")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ENTRIES), help="comma-separated zoo entries")
    p.add_argument("--steps", type=int, default=40,
                   help="training steps per phase of each run (whole digits epochs: at least this many)")
    p.add_argument("--warmup", type=int, default=10, help="steps not timed (tracing, autotuning)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per replica and step")
    p.add_argument("--mixed", default="mixed_float16", choices=("mixed_float16", "mixed_bfloat16"))
    p.add_argument("--cpu", action="store_true", help="run on the CPU (checks this script, measures nothing)")
    args = p.parse_args(argv)
    for flag in ("steps", "warmup", "batch_size"):
        if getattr(args, flag) < (0 if flag == "warmup" else 1):
            p.error(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if args.warmup >= args.steps:
        p.error(f"--warmup: expected fewer than --steps ({args.steps}) steps, got {args.warmup}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def _step_clock(warmup):
    """A Keras callback timing the training steps after the first `warmup`, keeping the last loss."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps, self.start, self.seconds, self.timed, self.last_loss = 0, None, 0.0, 0, None

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            now = time.perf_counter()
            if self.steps == warmup:
                self.start = now
            elif self.steps > warmup and self.start is not None:
                self.seconds, self.timed = now - self.start, self.steps - warmup
            logs = logs or {}
            loss = logs.get("loss", logs.get("g_loss"))
            if loss is not None:
                self.last_loss = float(loss)

    return StepClock()


def run_one(name, way, args, replicas):
    """Trains `name` one way; returns (images/s, last loss, peak memory in MiB or None)."""
    import tensorflow as tf

    from branchzoo import training, zoo

    from branchzoo import data

    precision = args.mixed if way == "mixed" else "float32"
    phases = len(zoo.get_entry(name)["recipe"].get("phases") or [None])
    batch = args.batch_size * replicas
    per_epoch = -(-data.dataset_info("digits").num_examples["train"] // batch)
    with tempfile.TemporaryDirectory() as folder:
        run = training.resolve_run_config(
            name, dataset="digits", epochs=phases * -(-args.steps // per_epoch), batch_size=batch,
            strategy="default" if args.cpu else "mirrored", jit_compile="on" if way == "xla" else "off",
            precision=precision, output=folder, validate=False)
        clock = _step_clock(args.warmup)
        gpus = tf.config.list_logical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.reset_memory_stats(gpu.name)
        training.train(run, verbose=0, callbacks=[clock])
        peak = (max(tf.config.experimental.get_memory_info(g.name)["peak"] for g in gpus) / 2**20
                if gpus else None)
    rate = clock.timed * args.batch_size * replicas / clock.seconds if clock.seconds else float("nan")
    return rate, clock.last_loss, peak


def main(argv=None):
    args = parse_args(argv)
    import branchzoo  # noqa: F401  (oneDNN and start-up logging set before TensorFlow loads)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.cpu:
        print("No GPU visible to TensorFlow: nothing to check here (python -m branchzoo.gpu_check --cpu "
              "runs the table on the CPU).")
        return 0
    replicas = 1 if args.cpu else len(gpus)
    device = "CPU" if args.cpu else f"{len(gpus)} GPU(s): " + ", ".join(
        tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    print(f"branchzoo GPU check on {device}; TensorFlow {tf.__version__}; {args.steps} steps per phase, "
          f"batch {args.batch_size} per replica, {args.warmup} warm-up steps not timed")
    header = f"| {'model':32s} | {'way':14s} | {'images/s':>9s} | {'last loss':>10s} | {'peak MiB':>8s} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    failures = 0
    for name in args.models:
        for way in ("float32", "mixed", "xla"):
            label = args.mixed if way == "mixed" else ("float32 + XLA" if way == "xla" else "float32")
            started = time.perf_counter()
            try:
                rate, loss, peak = run_one(name, way, args, replicas)
            except Exception as e:  # one failing way must not hide the others
                failures += 1
                print(f"| {name:32s} | {label:14s} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                continue
            ok = loss is not None and math.isfinite(loss)
            failures += not ok
            print(f"| {name:32s} | {label:14s} | {rate:9.0f} | {loss if loss is not None else float('nan'):10.4f} | "
                  f"{'-' if peak is None else f'{peak:8.0f}'} |  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    print("all runs finite" if not failures else f"{failures} run(s) failed or ended with a non-finite loss")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
