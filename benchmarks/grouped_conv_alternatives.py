"""Routes for grouped 3x3 convolutions on TensorFlow/CPU that GroupedConv2D does not take, timed side by side.

The question this answers: can a grouped convolution built from the ops
``keras.ops`` reaches on TensorFlow (groups=1 oneDNN convolutions, batched
matmuls, slices, transposes) beat PyTorch's grouped convolution on the small
ResNeXt-29 8x8d shapes, where ``GroupedConv2D``'s ``"split"`` route does not
(benchmarks/README.md)? Each route is written with plain TensorFlow ops that
have a one-to-one ``keras.ops`` counterpart (``tf.nn.conv2d`` with a grouped
kernel excepted: it is the reference of what TensorFlow's own grouped kernel
does), checked against a dense ``tf.nn.conv2d`` with the block-diagonal kernel
(outputs and both gradients, 1e-5 relative; it trains on every CPU) and timed
as one training step (forward, gradients w.r.t. input and
kernel, ``tf.function`` without XLA, loss ``mean(y * y)``), round-robin, with
the median of ``--repeats`` rounds of ``--block`` steps:

- ``split``: ``GroupedConv2D(implementation="auto")`` (what the layer does),
- ``tf_grouped``: ``tf.nn.conv2d`` with the grouped kernel (oneDNN's grouped
  primitive in graph mode; not reachable through ``keras.ops``). Its CPU
  gradients exist only with oneDNN (not on CPUs without AVX-512, nor with
  ``TF_ENABLE_ONEDNN_OPTS=0``): probed once, and where it does not train its
  cells read ``n/a (no CPU gradient for grouped conv here)``
  (``$BRANCHZOO_TF_GROUPED_GRAD=0|1`` forces the answer),
- ``winograd``: Winograd F(2x2, 3x3) (stride 1, "same", even sizes): tiles
  gathered with 16 slices of a phase-transposed input, the input, kernel and
  output transforms and the per-(group, tile element) products as batched
  matmuls, a custom gradient (input gradient = the same Winograd convolution
  of the output gradient with the rotated kernel; kernel gradient = one
  batched matmul of the saved transformed input and the transformed output
  gradient): 2.25x fewer multiply-adds in the products,
- ``space_to_depth``: for stride 2 ("same", 3x3, even sizes): the input
  rearranged 2x2-block-to-channels inside each group, then a stride-1 2x2
  convolution per group (``"split"`` on 4x the input channels, 16/9 the
  multiply-adds, no strided access).

    python benchmarks/grouped_conv_alternatives.py          # under a minute on 2 cores

Prints a table of milliseconds and each route's time over ``split``.
"""

import argparse
import fnmatch
import os
import statistics
import sys
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)
from _probes import NOT_AVAILABLE, WHY_NOT, tf_grouped_conv_trains

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

# name, batch, H(=W), channels, groups, stride (3x3, "same")
SHAPES = [
    ("r8x8d_s1", 32, 32, 64, 8, 1),
    ("r8x8d_s2_down", 32, 32, 128, 8, 2),
    ("r8x8d_s2", 32, 16, 128, 8, 1),
    ("r8x8d_s3_down", 32, 16, 256, 8, 2),
    ("r8x8d_s3", 32, 8, 256, 8, 1),
    ("r8x64d_s3", 16, 8, 2048, 8, 1),
]
ROUTES = ("split", "tf_grouped", "winograd", "space_to_depth")
RTOL = 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="*", help="fnmatch pattern(s), comma-separated, on shape names")
    p.add_argument("--batch-size", type=positive_int, default=None, help="override every shape's batch")
    p.add_argument("--repeats", type=positive_int, default=8, help="rounds; each route is timed --block steps per round")
    p.add_argument("--block", type=positive_int, default=3, help="consecutive timed steps per route and round")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="TF intra-op threads")
    return p.parse_args(argv)


def _winograd_constants(tf):
    import numpy as np

    bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], "float32")
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], "float32")
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], "float32")
    # 2-D transforms of a flattened 4x4 (or 3x3, 2x2) tile are Kronecker products of the 1-D ones
    return tf.constant(np.kron(bt, bt)), tf.constant(np.kron(g, g)), tf.constant(np.kron(at, at))


def winograd_conv(tf, x, kernel, groups):
    """Grouped 3x3 stride-1 "same" convolution by Winograd F(2x2, 3x3), with a custom gradient."""
    b16, g16, a16 = _winograd_constants(tf)

    def transformed_kernel(k):  # (3, 3, ci, G*co) -> (G, 16, ci, co)
        ci, cout = k.shape[2], k.shape[3]
        u = tf.matmul(g16, tf.reshape(k, (9, ci * cout)))
        return tf.transpose(tf.reshape(u, (16, ci, groups, cout // groups)), (2, 0, 1, 3))

    def forward(inp, u):  # inp (N, H, W, G*ci), u (G, 16, ci, co) -> y, transformed input
        n, h2, w2, c = inp.shape
        h, w, ci, co = h2 // 2, w2 // 2, c // groups, u.shape[-1]
        padded = tf.pad(inp, [[0, 0], [1, 1], [1, 1], [0, 0]])
        phases = tf.transpose(tf.reshape(padded, (n, h + 1, 2, w + 1, 2, groups, ci)), (5, 2, 4, 0, 1, 3, 6))
        tiles = [tf.slice(phases, [0, a % 2, b % 2, 0, a // 2, b // 2, 0], [groups, 1, 1, n, h, w, ci])
                 for a in range(4) for b in range(4)]
        d = tf.reshape(tf.concat(tiles, axis=1), (groups, 16, n * h * w * ci))
        v = tf.reshape(tf.matmul(b16, d), (groups, 16, n * h * w, ci))
        m = tf.matmul(v, u)  # (G, 16, tiles, co)
        y = tf.matmul(a16, tf.reshape(m, (groups, 16, n * h * w * co)))
        y = tf.transpose(tf.reshape(y, (groups, 2, 2, n, h, w, co)), (3, 4, 1, 5, 2, 0, 6))
        return tf.reshape(y, (n, h2, w2, groups * co)), v

    @tf.custom_gradient
    def conv(inp, k):
        u = transformed_kernel(k)
        y, v = forward(inp, u)

        def grad(dy):
            n, h2, w2, cout = dy.shape
            h, w, ci, co = h2 // 2, w2 // 2, k.shape[2], cout // groups
            rotated = tf.reshape(
                tf.transpose(tf.reshape(tf.reverse(k, [0, 1]), (3, 3, ci, groups, co)), (0, 1, 4, 3, 2)),
                (3, 3, co, groups * ci))
            dx, _ = forward(dy, transformed_kernel(rotated))
            dyt = tf.transpose(tf.reshape(dy, (n, h, 2, w, 2, groups, co)), (5, 2, 4, 0, 1, 3, 6))
            dm = tf.matmul(a16, tf.reshape(dyt, (groups, 4, n * h * w * co)), transpose_a=True)
            du = tf.matmul(v, tf.reshape(dm, (groups, 16, n * h * w, co)), transpose_a=True)
            du = tf.reshape(tf.transpose(du, (1, 2, 0, 3)), (16, ci * cout))
            return dx, tf.reshape(tf.matmul(g16, du, transpose_a=True), (3, 3, ci, cout))

        return y, grad

    return conv(x, kernel)


def split_conv(tf, x, kernel, groups, strides):
    xs, ks = tf.split(x, groups, axis=-1), tf.split(kernel, groups, axis=-1)
    return tf.concat([tf.nn.conv2d(a, b, strides, "SAME") for a, b in zip(xs, ks)], axis=-1)


def block_diagonal_conv(tf, x, kernel, groups, strides):
    """The reference: one dense convolution whose kernel is zero off the groups' diagonal blocks."""
    import numpy as np

    ci, cout = kernel.shape[2], kernel.shape[3]
    mask = np.kron(np.eye(groups, dtype="float32"), np.ones((ci, cout // groups), "float32"))  # (G*ci, cout)
    dense = tf.tile(kernel, (1, 1, groups, 1)) * mask  # the kernel gradient flows back to the grouped kernel
    return tf.nn.conv2d(x, dense, strides, "SAME")


def space_to_depth_conv(tf, x, kernel, groups):
    """Grouped 3x3 stride-2 "same" convolution as a stride-1 2x2 one on 2x2 blocks moved to channels."""
    n, h, w, c = x.shape
    ci, cout = c // groups, kernel.shape[-1]
    blocks = tf.transpose(tf.reshape(x, (n, h // 2, 2, w // 2, 2, groups, ci)), (0, 1, 3, 5, 2, 4, 6))
    blocks = tf.reshape(blocks, (n, h // 2, w // 2, groups * 4 * ci))
    # "same" with stride 2 on even sizes pads 0 before, 1 after: taps 0..2 -> blocks i (0, 1) and i+1 (0)
    k4 = tf.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]])
    k2 = tf.reshape(tf.transpose(tf.reshape(k4, (2, 2, 2, 2, ci, cout)), (0, 2, 1, 3, 4, 5)), (2, 2, 4 * ci, cout))
    return split_conv(tf, blocks, k2, groups, 1)


def _train_step(tf, forward, sources):
    """A compiled step returning [output, *gradients w.r.t. sources] (closure: Keras variables stay variables)."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            y = forward()
            loss = tf.reduce_mean(y * y)
        return [y] + tape.gradient(loss, sources)

    return step


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from branchzoo.layers import GroupedConv2D

    patterns = args.shapes.split(",")
    shapes = [s for s in SHAPES if any(fnmatch.fnmatch(s[0], p) for p in patterns)]
    if not shapes:
        raise SystemExit(f"No shape matches --shapes={args.shapes!r}; names: {[s[0] for s in SHAPES]}")
    print(f"# {time.strftime('%Y-%m-%d')}, tensorflow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"{args.threads} intra-op threads; training step (forward + input and kernel gradients), median ms")
    tf_grouped_trains = tf_grouped_conv_trains()
    if not tf_grouped_trains:
        print(f"# tf_grouped: {NOT_AVAILABLE} ({WHY_NOT})")
    head = ["shape", "C g k stride HxW", "batch"] + [f"{r} ms" for r in ROUTES] + [f"{r} / split" for r in ROUTES[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    print("\n".join(lines), flush=True)
    for name, batch, hw, channels, groups, stride in shapes:
        batch = args.batch_size or batch
        rng = np.random.default_rng(0)
        x = tf.Variable(rng.standard_normal((batch, hw, hw, channels)).astype("float32"))
        layer = GroupedConv2D(channels, 3, strides=stride, padding="same", groups=groups, use_bias=False)
        layer.build(x.shape)
        kernel = tf.Variable(layer.kernel.numpy())

        forwards = {"split": lambda: layer(x)}
        if tf_grouped_trains:
            forwards["tf_grouped"] = lambda: tf.nn.conv2d(x, kernel, stride, "SAME")
        if stride == 1 and hw % 2 == 0:
            forwards["winograd"] = lambda: winograd_conv(tf, x, kernel, groups)
        if stride == 2 and hw % 2 == 0:
            forwards["space_to_depth"] = lambda: space_to_depth_conv(tf, x, kernel, groups)

        steps = {route: _train_step(tf, forward, [x] + (layer.trainable_variables if route == "split" else [kernel]))
                 for route, forward in forwards.items()}
        reference = [t.numpy() for t in _train_step(
            tf, lambda: block_diagonal_conv(tf, x, kernel, groups, stride), [x, kernel])()]
        for route, step in steps.items():
            for what, ref, got in zip(("output", "input grad", "kernel grad"), reference, step()):
                if got is None:
                    raise SystemExit(f"{name}: route {route} gave no {what}")
                err = float(np.max(np.abs(ref - got.numpy())) / np.max(np.abs(ref)))
                if err > RTOL or not np.isfinite(err):
                    raise SystemExit(f"{name}: route {route} {what} differs from the block-diagonal "
                                     f"dense convolution: {err:.2e}")

        times = {r: [] for r in steps}
        for _ in range(args.repeats):
            for route, step in steps.items():
                step()  # untimed: wakes the thread pool
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    step()
                    times[route].append(time.perf_counter() - t0)
        med = {r: 1000 * statistics.median(v) for r, v in times.items()}
        cells = [name, f"{channels} g{groups} k3 s{stride} {hw}x{hw}", batch]
        missing = {r: NOT_AVAILABLE if r == "tf_grouped" else "-" for r in ROUTES}
        cells += [f"{med[r]:.1f}" if r in med else missing[r] for r in ROUTES]
        cells += [f"{med[r] / med['split']:.2f}" if r in med else "-" for r in ROUTES[1:]]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
