"""Training-step time of a batched modular ensemble against one wide MLP and M separate branches.

After Webb et al. (2019), Sec. 3.3 and 4.1: 256-M-4-H (one `ModularLossEnsemble`: a Dense(1024) and a
`BatchedDense` output layer) against 1-M-1024-H (the same parameter count) and the ensemble as 256 separate
Keras branches (Dense(4) -> Dense(10), stacked; given the ensemble's weights, checked to reproduce its outputs).
``train_on_batch`` with SGD (momentum 0.9) and `ModularLoss(0.95)` on random 28x28x1 images, batch 100, in one
process, round-robin; medians and fastest steps (under foreign load the fastest is closer to a step's cost).

    python benchmarks/modular_ensemble.py                      # 256-M-4-H, ~2 minutes on 2 cores
    python benchmarks/modular_ensemble.py --modules 64 --hidden 16
"""

import argparse
import statistics

from _common import head, header, positive_int, round_robin, row, timed

import keras  # noqa: E402  (after _common: its TensorFlow log level)
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


def train_step(model, x, y):
    def step():  # returns None: round_robin times it
        model.train_on_batch(x, y)

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modules", type=positive_int, default=256, help="M of the ensemble")
    p.add_argument("--hidden", type=positive_int, default=4, help="hidden units per module")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--rounds", type=positive_int, default=10)
    p.add_argument("--block", type=positive_int, default=5, help="timed steps per model and round")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed steps per model before timing")
    args = p.parse_args(argv)

    from branchzoo.losses import ModularLoss
    from branchzoo.models.modular import modular_mlp
    M, H, B = args.modules, args.hidden, args.batch_size
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, B)

    wide, batched = modular_mlp(1, M * H), modular_mlp(M, H)
    build_separate, separate = timed(lambda: separate_branches(M, H))
    copy_batched_weights(batched, separate, M, H)
    diff = float(np.abs(separate.predict_on_batch(x) - batched.predict_on_batch(x)).max())
    if diff > 1e-4:
        raise RuntimeError(f"The separate branches do not reproduce the batched ensemble (max diff {diff:.3g}).")

    wide_name, batched_name, separate_name = f"1-M-{M * H}-H", f"{M}-M-{H}-H", f"{M} separate branches"
    models = {wide_name: (wide, f"modular_mlp(1, {M * H})"),
              batched_name: (batched, f"modular_mlp({M}, {H}): ModularLossEnsemble"),
              separate_name: (separate, f"{M} x (Dense({H}) -> Dense(10)), stacked")}
    steps, trace = {}, {}
    for name, (model, _) in models.items():
        model.compile(keras.optimizers.SGD(0.02 * M, momentum=0.9), loss=ModularLoss(0.95))
        steps[name] = train_step(model, x, y)
        trace[name], _ = timed(lambda: [steps[name]() for _ in range(args.warmup)])

    times, loads = {name: [] for name in models}, []
    for _ in range(args.rounds):  # one round at a time: the other load of each round
        round_times, load = round_robin(steps, 1, args.block, wake=True, warmup=0)
        for name, seconds in round_times.items():
            times[name] += seconds
        if load is not None:
            loads.append(load)

    print(header(f"batch {B}, {args.rounds} rounds x {args.block} timed steps per model "
                 "(train_on_batch, SGD, ModularLoss(0.95))"))
    if loads:
        print(f"# other processes used {100 * statistics.mean(loads):.0f}% of the CPUs on average "
              f"(max {100 * max(loads):.0f}% in a round)")
    print(f"# separate branches reproduce the batched outputs to {diff:.1e}; building them took "
          f"{build_separate:.1f} s")
    median = {name: statistics.median(t) for name, t in times.items()}
    fastest = {name: min(t) for name, t in times.items()}
    print(head("model", "implementation", "parameters", "median ms / step", "fastest ms / step",
               f"x 1-M-{M * H}-H step", f"warm-up ({args.warmup} steps, incl. tracing) s", align="llrrrrr"))
    for name, (model, impl) in models.items():
        print(row(name, impl, f"{model.count_params():,}", f"{1000 * median[name]:.2f}", f"{1000 * fastest[name]:.2f}",
                  f"{median[name] / median[wide_name]:.2f}", f"{trace[name]:.1f}"))
    print(f"\n{batched_name} / {wide_name} step: {median[batched_name] / median[wide_name]:.2f} of the medians, "
          f"{fastest[batched_name] / fastest[wide_name]:.2f} of the fastest steps (target <= 2)")
    print(f"separate branches / {batched_name} step: {median[separate_name] / median[batched_name]:.1f} of the "
          f"medians, {fastest[separate_name] / fastest[batched_name]:.1f} of the fastest steps (target >= 20)")


if __name__ == "__main__":
    main()
