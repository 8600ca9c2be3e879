"""Training throughput (images/second) of the registered BranchedGANs on this machine.

    python benchmarks/gan_throughput.py                                  # all branched_gan* entries
    python benchmarks/gan_throughput.py --models "branched_gan_cifar10*" --batch-size 32 \\
        --model-kwargs smoothing='"learned"'

One training step of a `branchzoo.models.BranchedGAN` is one discriminator
update (generator forward, discriminator on reals and translations, the R1
penalty's double backward pass) and one generator update (generator forward
and backward through the discriminator). Each model runs in its own
process, compiled by its task as train.py compiles it (two Adam optimizers)
and fit on random [-1, 1] images of its entry's size with random
class-transfer pairs, for one epoch of `--steps` steps after a one-step
warm-up epoch (tracing and first-step costs excluded). A callback times
every step of the timed epoch; the table gives the median and the fastest
step in milliseconds, images/second at the median step, and images/second of
the whole timed epoch (steps plus Keras' per-epoch work).
"""

import argparse
import os
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)
from train_throughput import StepTimer, machine_header, measure_each  # the same timing and driver

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402


def measure(name, batch, steps, overrides):
    """One table row for `name`: builds, warms up and times a training epoch."""
    import numpy as np
    import tensorflow as tf

    import branchzoo
    from branchzoo import tasks, zoo

    card = branchzoo.model_card(name)
    config = dict(card["config"], **overrides)
    shape = tuple(config.get("input_shape", (32, 32, 3)))
    classes = int(config.get("num_classes", 2))
    rng = np.random.default_rng(0)
    count = batch * steps
    images = rng.uniform(-1, 1, (count, *shape)).astype("float32")
    source = rng.integers(0, classes, count).astype("int32")
    target = ((source + 1 + rng.integers(0, classes - 1, count)) % classes).astype("int32")
    data = tf.data.Dataset.from_tensor_slices(((images, source), target)).batch(batch)

    gan = branchzoo.build(name, **overrides)
    task = tasks.task_for(zoo.get_entry(name))
    run = {"recipe": card["recipe"], "jit_compile": "auto"}
    phase = tasks.resolve_phases(card["recipe"])[0]
    task.compile(gan, run, phase, steps)
    gan.fit(data.take(1), epochs=1, verbose=0)  # trace + warm-up
    timer = StepTimer()
    start = time.perf_counter()
    gan.fit(data, epochs=1, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - start
    median = float(np.median(timer.seconds))
    g = zoo.count_parameters(gan.generator)["trainable"]
    d = zoo.count_parameters(gan.discriminator)["trainable"]
    arch = f"{config.get('num_branches', 4)} branches, {config.get('dim_in', 8)}/{config.get('max_dim', 64)}, " \
           f"S={config.get('smoothing', 'gaussian')}, {shape[0]} px"
    if overrides:
        arch += f" {overrides}"
    return (f"| {name} | {arch} | {g:,} | {d:,} | {1000 * median:.0f} | {1000 * min(timer.seconds):.0f} | "
            f"{batch / median:.1f} | {count / seconds:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="branched_gan*", help="fnmatch pattern over zoo names")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=6, help="timed steps (one epoch)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="builder overrides for every model, e.g. num_branches=2 dim_in=16")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print its row
    args = p.parse_args(argv)

    from branchzoo.training import parse_model_kwargs

    overrides = parse_model_kwargs(args.model_kwargs)
    if args.one:
        print(measure(args.one, args.batch_size, args.steps, overrides))
        return

    import branchzoo

    names = branchzoo.list_models(args.models)
    if not names:
        p.error(f"--models: expected a pattern matching zoo models, got {args.models!r} "
                f"(registered: {', '.join(branchzoo.list_models())})")
    print(machine_header())
    print(f"# batch {args.batch_size}, {args.steps} timed steps (one D and one G update each), "
          "one process per model")
    print("| model | config | G parameters | D parameters | median ms / step | fastest ms / step | "
          "images / s (median step) | images / s (epoch) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    forwarded = [f"--batch-size={args.batch_size}", f"--steps={args.steps}"]
    if args.model_kwargs:
        forwarded += ["--model-kwargs", *args.model_kwargs]
    measure_each(__file__, names, forwarded)


if __name__ == "__main__":
    main()
