"""Training-step time of a batched modular ensemble against one wide MLP and M separate branches.

After 004_226906bbadadb648.txt, Sec. 3.3 and 4.1: 256-M-4-H (256 MLPs with 4
hidden units, one `ModularLossEnsemble`: a Dense(1024) first layer and a
`BatchedDense` output layer) has the parameter count of 1-M-1024-H (one MLP
with 1024 hidden units) and, batched, should train nearly as fast; the same
ensemble written as 256 separate Keras Dense branches (Dense(4) -> Dense(10)
each, outputs stacked) is the naive alternative. The three models are timed
in one process:

- each is compiled with SGD (momentum 0.9) and `ModularLoss(lambda_=0.95)`
  (for one module, plain cross-entropy), no metrics, and trained with
  ``train_on_batch`` on random 28x28x1 images, batch 100 (the recipe's);
- the separate-branch model gets the batched ensemble's weights first and
  must reproduce its outputs (so both compute the same function);
- after warm-up (tracing) steps, the models are timed round-robin: per round
  and model one untimed step, then ``--block`` timed steps; the table gives
  the median and fastest step over all rounds, and the CPU share other
  processes used meanwhile (the machine is shared: under load the fastest
  step is the better estimate of a step's own cost, so the ratios are given
  for both).

    python benchmarks/modular_ensemble.py                      # 256-M-4-H, ~2 minutes on 2 cores
    python benchmarks/modular_ensemble.py --modules 64 --hidden 16

Targets (issue 11): 256-M-4-H at most 2x the 1-M-1024-H step; at least 20x
faster than the separate branches.
"""

import argparse
import os
import platform
import statistics
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)
from grouped_conv import LoadMeter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def separate_branches(num_modules, hidden, num_classes=10, input_shape=(28, 28, 1)):
    """The ensemble as `num_modules` independent Keras branches (Dense -> Dense), outputs stacked."""
    inputs = keras.Input(input_shape, name="images")
    x = keras.layers.Flatten()(inputs)
    outs = []
    for j in range(num_modules):
        h = keras.layers.Dense(hidden, activation="relu", name=f"branch{j}_hidden")(x)
        outs.append(keras.layers.Dense(num_classes, name=f"branch{j}_logits")(h))
    return keras.Model(inputs, keras.ops.stack(outs, axis=1), name=f"separate_{num_modules}x{hidden}")


def copy_batched_weights(batched, separate, num_modules, hidden):
    """Gives each separate branch its module's slice of the batched ensemble's weights."""
    ens = batched.get_layer("ensemble")
    k1, b1 = ens.dense1.kernel.numpy(), ens.dense1.bias.numpy()
    k2, b2 = ens.logits.kernel.numpy(), ens.logits.bias.numpy()
    for j in range(num_modules):
        cols = slice(j * hidden, (j + 1) * hidden)
        separate.get_layer(f"branch{j}_hidden").set_weights([k1[:, cols], b1[cols]])
        separate.get_layer(f"branch{j}_logits").set_weights([k2[j], b2[j]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modules", type=positive_int, default=256, help="M of the ensemble")
    p.add_argument("--hidden", type=positive_int, default=4, help="hidden units per module")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--rounds", type=positive_int, default=10)
    p.add_argument("--block", type=positive_int, default=5, help="timed steps per model and round")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed steps per model before timing")
    args = p.parse_args(argv)

    import tensorflow as tf

    from branchzoo.losses import ModularLoss
    from branchzoo.models.modular import modular_mlp

    M, H, B = args.modules, args.hidden, args.batch_size
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, B)

    wide = modular_mlp(1, M * H)
    batched = modular_mlp(M, H)
    t0 = time.perf_counter()
    separate = separate_branches(M, H)
    build_separate = time.perf_counter() - t0
    copy_batched_weights(batched, separate, M, H)
    diff = float(np.abs(separate.predict_on_batch(x) - batched.predict_on_batch(x)).max())
    if diff > 1e-4:
        raise RuntimeError(f"The separate branches do not reproduce the batched ensemble (max diff {diff:.3g}).")

    models = {
        f"1-M-{M * H}-H": (wide, "modular_mlp(1, %d)" % (M * H)),
        f"{M}-M-{H}-H": (batched, f"modular_mlp({M}, {H}): ModularLossEnsemble"),
        f"{M} separate branches": (separate, f"{M} x (Dense({H}) -> Dense(10)), stacked"),
    }
    trace = {}
    for name, (model, _) in models.items():
        model.compile(keras.optimizers.SGD(0.02 * M, momentum=0.9), loss=ModularLoss(0.95))
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        trace[name] = time.perf_counter() - t0

    times = {name: [] for name in models}
    loads = []
    for _ in range(args.rounds):
        meter = LoadMeter()
        for name, (model, _) in models.items():
            model.train_on_batch(x, y)
            for _ in range(args.block):
                t0 = time.perf_counter()
                model.train_on_batch(x, y)
                times[name].append(time.perf_counter() - t0)
        load = meter.other_load()
        if load is not None:
            loads.append(load)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__} ({keras.config.backend()}); batch {B}, {args.rounds} rounds x "
          f"{args.block} timed steps per model (train_on_batch, SGD, ModularLoss(0.95))")
    if loads:
        print(f"# other processes used {100 * statistics.mean(loads):.0f}% of the CPUs on average "
              f"(max {100 * max(loads):.0f}% in a round)")
    print(f"# separate branches reproduce the batched outputs to {diff:.1e}; building them took "
          f"{build_separate:.1f} s")
    reference = statistics.median(times[f"1-M-{M * H}-H"])
    batched_ms = statistics.median(times[f"{M}-M-{H}-H"])
    print("| model | implementation | parameters | median ms / step | fastest ms / step | "
          f"x 1-M-{M * H}-H step | warm-up ({args.warmup} steps, incl. tracing) s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (model, impl) in models.items():
        median = statistics.median(times[name])
        print(f"| {name} | {impl} | {model.count_params():,} | {1000 * median:.2f} | "
              f"{1000 * min(times[name]):.2f} | {median / reference:.2f} | {trace[name]:.1f} |")
    separate_ms = statistics.median(times[f"{M} separate branches"])
    fastest = {name: min(t) for name, t in times.items()}
    print()
    print(f"{M}-M-{H}-H / 1-M-{M * H}-H step: {batched_ms / reference:.2f} of the medians, "
          f"{fastest[f'{M}-M-{H}-H'] / fastest[f'1-M-{M * H}-H']:.2f} of the fastest steps (target <= 2)")
    print(f"separate branches / {M}-M-{H}-H step: {separate_ms / batched_ms:.1f} of the medians, "
          f"{fastest[f'{M} separate branches'] / fastest[f'{M}-M-{H}-H']:.1f} of the fastest steps (target >= 20)")


if __name__ == "__main__":
    main()
