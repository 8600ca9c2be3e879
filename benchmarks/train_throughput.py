"""Training throughput (images/second) of registered zoo models on this machine.

    python benchmarks/train_throughput.py                      # all mpnet* entries, 32x32
    python benchmarks/train_throughput.py --models "resnext_*tiny*"  # any classifier entry
    python benchmarks/train_throughput.py --models "mpnet2*" --image-size 64

Each model runs in its own process (in one process, models measured after
the first ran 2x slower here even after `keras.backend.clear_session()`), is
compiled like train.py compiles it (SGD, cross-entropy, top-1 and top-5) and
fit on random images of the given size for one epoch of `--steps` steps
after a one-step warm-up epoch (tracing and first-step costs excluded). A
callback times every step of the timed epoch; the table gives the median and
the fastest step in milliseconds, images/second at the median step, and
images/second of the whole timed epoch (steps plus Keras' per-epoch work).
"""

import argparse
import os
import platform
import subprocess
import sys
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training step (``seconds``) and of every epoch (``epoch_seconds``)."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.epoch_seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)


def measure(name, size, batch, steps, overrides):
    """One table row for `name`: builds, warms up and times a training epoch."""
    import numpy as np

    import branchzoo
    from branchzoo import publish, tasks

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, batch * steps)
    card = branchzoo.model_card(name)
    model = branchzoo.build(name, input_shape=(size, size, 3), num_classes=10, **overrides)
    # compiled as train.py compiles a classifier recipe: SGD momentum 0.9, cross-entropy, top-1/5
    tasks.get_task("classification").compile(
        model, {"recipe": {}, "jit_compile": "auto"},
        {"optimizer": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}}, steps)
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # trace + warm-up
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    seconds = time.perf_counter() - start
    median = float(np.median(timer.seconds))
    config = publish.architecture(card)  # as the README table names them
    if overrides:
        config += f" {overrides}"
    return (f"| {name} | {config} | {model.count_params():,} | {1000 * median:.0f} | "
            f"{1000 * min(timer.seconds):.0f} | {batch / median:.1f} | {len(x) / seconds:.1f} |")


def machine_header():
    """The table's first line: the machine and the framework versions."""
    import tensorflow as tf

    return (f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"TF {tf.__version__}, Keras {keras.__version__} ({keras.config.backend()}), "
            f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")


def measure_each(script, names, forwarded):
    """Runs ``script --one NAME`` per model in its own process; prints each table row."""
    for name in names:
        proc = subprocess.run([sys.executable, os.path.abspath(script), "--one", name, *forwarded],
                              capture_output=True, text=True)
        rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
        if proc.returncode or not rows:
            raise RuntimeError(f"measuring {name} failed:\n{proc.stderr[-3000:]}")
        print(rows[-1], flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mpnet*", help="fnmatch pattern over zoo names")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=6, help="timed steps (one epoch)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="builder overrides for every model, e.g. widths=[16,32,64,128]")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print its row
    args = p.parse_args(argv)

    from branchzoo.training import parse_model_kwargs

    overrides = parse_model_kwargs(args.model_kwargs)
    if args.one:
        print(measure(args.one, args.image_size, args.batch_size, args.steps, overrides))
        return

    import branchzoo

    print(machine_header())
    print(f"# images {args.image_size}x{args.image_size}x3, batch {args.batch_size}, "
          f"{args.steps} timed steps, one process per model")
    print("| model | config | parameters | median ms / step | fastest ms / step | "
          "images / s (median step) | images / s (epoch) |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    forwarded = [f"--image-size={args.image_size}", f"--batch-size={args.batch_size}",
                 f"--steps={args.steps}"]
    if args.model_kwargs:
        forwarded += ["--model-kwargs", *args.model_kwargs]
    names = branchzoo.list_models(args.models)
    if not names:
        p.error(f"--models: expected a pattern matching zoo models, got {args.models!r} "
                f"(registered: {', '.join(branchzoo.list_models())})")
    measure_each(__file__, names, forwarded)


if __name__ == "__main__":
    main()
