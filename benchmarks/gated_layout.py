"""Would another tensor layout make the gated ResNeXt module cheaper? One module, two layouts.

After 002_6ffcaba31e771062.txt, Sec. 2.2. In branchzoo a gated module's C
blocks pass their inputs and outputs side by side along the channels,
``[N, H, W, C * F]`` (`ResNeXtModule`, `GatedConnect`). There the gate's mix
over blocks is a batched matmul with one tiny ``[C, C] @ [C, F]`` product per
pixel, and the per-block 1x1 convs split the wide tensor into C slices. This
script times, side by side, one stride-1 gated module followed by its learned
gate (sampled, straight-through, as in training):

- "as built": `ResNeXtModule` + `GatedConnect` in the channel layout;
- "blocks-first": the same function in a ``[N, C, H, W, F]`` layout, written
  here: the 1x1 convs as batched matmuls over blocks, the mix as one
  ``[C, C] @ [C, H * W * F]`` product per image, the 3x3 grouped conv and
  the BN folding of the built module unchanged (its weights, shared);

and a Fixed-Full module (ResNeXt's form C, one shared input) of the same
widths as the reference. Before timing, the blocks-first module must
reproduce the built one's outputs (same weights and the same fixed gates).
One run = forward in training mode, then the gradient of the sum of the
output with respect to the input and the weights (a ``tf.function``, no XLA,
as Keras' trainer on CPU); medians in ms.

    python benchmarks/gated_layout.py    # a stage-1 module of ResNeXt {29,8,8}, batch 32
"""

import argparse
import os

import numpy as np

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cardinality", type=positive_int, default=8, help="C")
    p.add_argument("--width", type=positive_int, default=8, help="bottleneck width w of a block")
    p.add_argument("--filters", type=positive_int, default=64, help="output width F of a block")
    p.add_argument("--fan-in", type=positive_int, default=4, help="K")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds of the round-robin timing")
    p.add_argument("--block", type=positive_int, default=2, help="consecutive timed runs per method and round")
    args = p.parse_args(argv)
    if args.fan_in > args.cardinality:
        p.error(f"argument --fan-in: expected at most --cardinality ({args.cardinality}), got {args.fan_in}")
    return args


def to_blocks_first(wide, cardinality):
    """NumPy ``[N, H, W, C * F]`` (blocks side by side along the channels) -> ``[N, C, H, W, F]``."""
    n, height, width, channels = wide.shape
    blocks = wide.reshape(n, height, width, cardinality, channels // cardinality)
    return np.ascontiguousarray(np.transpose(blocks, (0, 3, 1, 2, 4)))


def to_channels(blocks):
    """NumPy ``[N, C, H, W, F]`` -> ``[N, H, W, C * F]``: the inverse of `to_blocks_first`."""
    n, cardinality, height, width, f = blocks.shape
    return np.transpose(blocks, (0, 2, 3, 1, 4)).reshape(n, height, width, cardinality * f)


def blocks_first(module, x, gates):
    """`module` (a built stride-1 `ResNeXtModule` without projection) then the mix by `gates`.

    ``x``: ``[N, C, H, W, F]`` (block ``j``'s input at ``x[:, j]``); ``gates``:
    the binary ``[C, C]`` gate matrix. Returns ``[N, C, H, W, F]``: the mean
    of the ``K`` selected block outputs per block, as `GatedConnect` computes
    in the channel layout.
    """
    from keras import ops

    from branchzoo.layers.resnext import linear_batchnorm

    C, w, f = module.cardinality, module.width, module.filters
    n, _, height, width, _ = ops.shape(x)
    pixels = height * width
    x = ops.relu(x)
    kernel1 = ops.transpose(ops.reshape(module.conv1.kernel, (f, C, w)), (1, 0, 2))  # [C, f, w]
    h = ops.matmul(ops.reshape(x, (n, C, pixels, f)), kernel1)  # [N, C, HW, w]
    h = ops.reshape(ops.transpose(ops.reshape(h, (n, C, height, width, w)), (0, 2, 3, 1, 4)),
                    (n, height, width, C * w))
    h = ops.relu(module.bn1(h, training=True))
    h = ops.relu(module.bn2(module.conv2(h), training=True))
    kernel3 = ops.transpose(ops.reshape(module.conv3.kernel, (w, C, f)), (1, 0, 2))  # [C, w, f]
    scale, shift = linear_batchnorm(ops.reshape(h, (-1, C * w)), kernel3, module.bn3, True)
    h = ops.reshape(ops.transpose(ops.reshape(h, (n, height, width, C, w)), (0, 3, 1, 2, 4)),
                    (n, C, pixels, w))
    y = ops.matmul(h, kernel3 * ops.expand_dims(scale, 1)) + ops.expand_dims(shift, 1)  # [N, C, HW, f]
    y = ops.reshape(y, (n, C, height, width, f)) + x
    fan_in = ops.sum(gates[0])
    mixed = ops.matmul(gates / fan_in, ops.reshape(y, (n, C, -1)))
    return ops.reshape(mixed, (n, C, height, width, f))


def main(argv=None):
    args = parse_args(argv)
    from resnext_step import cpu_flags, round_robin, timed_gradient

    import keras
    import tensorflow as tf
    from keras import ops

    from branchzoo import training
    from branchzoo.layers import GatedConnect, ResNeXtModule
    from branchzoo.layers.gated import sample_gates

    C, w, f, k = args.cardinality, args.width, args.filters, args.fan_in
    n, s = args.batch_size, args.image_size
    rng = np.random.default_rng(0)
    wide = tf.constant(rng.standard_normal((n, s, s, C * f)).astype("float32"))  # channel layout
    blocks = tf.constant(to_blocks_first(wide.numpy(), C))  # the same values, blocks first
    narrow = tf.constant(rng.standard_normal((n, s, s, f)).astype("float32"))
    full = ResNeXtModule(C, w, f, shared_input=True, aggregate=True, name="full")
    full.build(narrow.shape)
    module = ResNeXtModule(C, w, f, name="gated")
    module.build(wide.shape)

    # the same function: fixed gates, same weights, BN in training mode (batch statistics, as timed)
    fixed = GatedConnect(C, k, connectivity="random", seed=0)
    fixed.build(wide.shape)
    built = fixed(module(wide, training=True)).numpy()
    ours = to_channels(blocks_first(module, blocks, ops.convert_to_tensor(fixed.binary_gates())).numpy())
    err = float(np.max(np.abs(ours - built)) / max(1.0, float(np.max(np.abs(built)))))
    if not err <= 1e-4:
        raise SystemExit(f"the blocks-first module differs from the built one: max relative error {err:.2e}")
    print(f"# blocks-first reproduces the built module + gate (max relative error {err:.1e})")

    learned = GatedConnect(C, k, seed=0)  # sampled in training, straight-through: as in the joint phase
    learned.build(wide.shape)
    seed = keras.random.SeedGenerator(1)

    def sampled(x):
        real = ops.convert_to_tensor(learned.gates)
        binary = sample_gates(ops.stop_gradient(real), k, seed=seed) + (real - ops.stop_gradient(real))
        return blocks_first(module, x, binary)

    weights = list(module.trainable_variables) + [learned.gates]
    methods = {
        "Fixed-Full module (form C)": (
            timed_gradient(lambda x: full(x, training=True), narrow, full.trainable_variables), narrow.shape),
        "gated module + gate, as built": (
            timed_gradient(lambda x: learned(module(x, training=True), training=True), wide, weights), wide.shape),
        "gated module + gate, blocks-first": (timed_gradient(sampled, blocks, weights), blocks.shape),
    }
    ms, load = round_robin({name: run for name, (run, _) in methods.items()}, args.rounds, args.block)
    reference, as_built = ms["Fixed-Full module (form C)"], ms["gated module + gate, as built"]
    print(f"# one stride-1 module: C={C}, w={w}, F={f}, K={k}, {s}x{s}, batch {n}; CPU: {training.cpu_name()} "
          f"({cpu_flags()}), {os.cpu_count()} cores; TF {tf.__version__}, Keras {keras.__version__}; "
          f"other load {'-' if load is None else round(100 * load)} %")
    print("| variant | input | median ms | x Fixed-Full | x as built |")
    print("|---|---|---:|---:|---:|")
    for name, (_, shape) in methods.items():
        print(f"| {name} | {list(shape)} | {ms[name]:.1f} | {ms[name] / reference:.2f} | "
              f"{ms[name] / as_built:.2f} |")


if __name__ == "__main__":
    main()
