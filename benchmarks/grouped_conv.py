"""Training-step time of grouped 3x3 convolutions: Keras, GroupedConv2D, dense, PyTorch.

One training step (forward, gradients w.r.t. the input and the kernel; compiled as Keras' trainers do on CPU:
``tf.function`` without XLA on TensorFlow, ``jax.jit`` on JAX, eager on PyTorch, by KERAS_BACKEND) for the
grouped convolutions of ResNeXt-29 8x8d and 8x64d, the modular CIFAR-10 CNN (10 modules) and a depthwise case:
Keras ``Conv2D(groups)`` (XLA's grouped convolution on CPU: slow, so few steps and a cap), ``GroupedConv2D``
(``"auto"``: the route it chose is printed), a dense ``Conv2D``, PyTorch ``nn.Conv2d(groups)`` in its own
process, and on TensorFlow ``tf.nn.conv2d`` with the grouped kernel (oneDNN's grouped primitive, which
``keras.ops`` cannot reach) as a reference. Round-robin; a shape timed while other processes used more than
``--max-other-load`` of the CPUs is timed again. Medians in ms; GroupedConv2D's GFLOP/s count 3x the forward
FLOPs, against a float32 matmul ceiling measured at startup.

    python benchmarks/grouped_conv.py                    # everything, ~10 min on 2 cores
    python benchmarks/grouped_conv.py --shapes 'r8x8d*'  # one family
    KERAS_BACKEND=jax python benchmarks/grouped_conv.py --extra-routes split:1,split:2
    KERAS_BACKEND=torch python benchmarks/grouped_conv.py --extra-routes split:1
"""

import argparse
import fnmatch
import os
import statistics
import sys
import time

import numpy as np

from _common import (head, header, medians_ms, ms, non_negative_int, percent, positive_int, round_robin, row,
                     timed, torch_worker, wait_for_idle)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# "0" / "1" forces the probe's answer (tests use it to take both paths on any machine).
FORCE_ENV = "BRANCHZOO_TF_GROUPED_GRAD"
NOT_AVAILABLE = "n/a (no CPU gradient for grouped conv here)"
WHY_NOT = ("TensorFlow's CPU gradients of grouped convolutions need oneDNN, off by default on CPUs "
           "without AVX-512 VNNI/BF16 or AMX and under TF_ENABLE_ONEDNN_OPTS=0")


def tf_grouped_conv_trains():
    """Whether ``tf.nn.conv2d`` with a grouped kernel trains here (one step in a ``tf.function``).

    Its CPU gradients exist only in TensorFlow's oneDNN kernels (`WHY_NOT`); elsewhere the backward pass
    fails. ``$BRANCHZOO_TF_GROUPED_GRAD`` set to 0 or 1 answers instead.
    """
    forced = os.environ.get(FORCE_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise SystemExit(f"${FORCE_ENV} must be 0 or 1 (or unset to probe). Received: {forced!r}")
    import tensorflow as tf
    x, kernel = tf.ones((1, 4, 4, 4)), tf.ones((3, 3, 2, 4))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
        return tape.gradient(y, [x, kernel])

    try:
        step()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False
    return True


# name, batch, H(=W), Cin, Cout, groups, kernel, stride, padding
SHAPES = [
    # ResNeXt-29 8x8d: C=8, w_s = 8 * 2^s per branch; stride 2 in the first block of stages 2, 3
    ("r8x8d_s1", 32, 32, 64, 64, 8, 3, 1, "same"),
    ("r8x8d_s2_down", 32, 32, 128, 128, 8, 3, 2, "same"),
    ("r8x8d_s2", 32, 16, 128, 128, 8, 3, 1, "same"),
    ("r8x8d_s3_down", 32, 16, 256, 256, 8, 3, 2, "same"),
    ("r8x8d_s3", 32, 8, 256, 256, 8, 3, 1, "same"),
    # ResNeXt-29 8x64d: w_s = 64 * 2^s per branch
    ("r8x64d_s1", 16, 32, 512, 512, 8, 3, 1, "same"),
    ("r8x64d_s2_down", 16, 32, 1024, 1024, 8, 3, 2, "same"),
    ("r8x64d_s2", 16, 16, 1024, 1024, 8, 3, 1, "same"),
    ("r8x64d_s3_down", 16, 16, 2048, 2048, 8, 3, 2, "same"),
    ("r8x64d_s3", 16, 8, 2048, 2048, 8, 3, 1, "same"),
    # Modular CIFAR-10 CNN, 10 modules (conv 32-64-64-128-128, VALID, strides 1,2,1,2,1)
    ("modular_c1", 32, 32, 30, 320, 10, 3, 1, "valid"),
    ("modular_c2", 32, 30, 320, 640, 10, 3, 2, "valid"),
    ("modular_c3", 32, 14, 640, 640, 10, 3, 1, "valid"),
    ("modular_c4", 32, 12, 640, 1280, 10, 3, 2, "valid"),
    ("modular_c5", 32, 5, 1280, 1280, 10, 3, 1, "valid"),
    # depthwise: groups == channels
    ("depthwise", 32, 16, 256, 256, 256, 3, 1, "same"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--batch-size", type=positive_int, help="override every shape's batch (default: 32; 16 for 8x64d)")
    add("--repeats", type=positive_int, default=8, help="rounds; each method is timed --block steps per round")
    add("--block", type=positive_int, default=3, help="consecutive timed steps per method and round")
    add("--shapes", default="*", help="fnmatch pattern(s), comma-separated, on shape names")
    add("--threads", type=positive_int, default=os.cpu_count(), help="TF intra-op threads and torch.set_num_threads")
    add("--tf-intra-op-threads", type=positive_int, help="TensorFlow's (default: --threads); torch keeps --threads")
    add("--tf-inter-op-threads", type=positive_int, help="TensorFlow's (default: TensorFlow's choice)")
    add("--keras-repeats", type=positive_int, default=2, help="timed steps of Keras Conv2D(groups) (seconds each)")
    add("--keras-cap", type=float, default=30.0, help="skip Keras Conv2D(groups) when its first step takes longer (s)")
    add("--max-other-load", type=float, default=0.1, help="fraction of the CPUs other processes may use while a "
        "shape is timed; above it the shape is timed again (Linux /proc only)")
    add("--retries", type=non_negative_int, default=2, help="re-timings of a shape disturbed by other load")
    add("--matmul-size", type=positive_int, default=2048, help="n of the n^3 float32 matmuls (best of 10) that "
        "measure the GFLOP/s ceiling")
    add("--no-keras-grouped", action="store_true", help="skip Keras Conv2D(groups)")
    add("--no-torch", action="store_true", help="skip PyTorch")
    add("--no-tf-grouped", action="store_true", help="skip the reference column of tf.nn.conv2d(groups) (TensorFlow)")
    add("--implementation", default="auto", help="GroupedConv2D implementation of the main column (default auto)")
    add("--extra-routes", default="", help="more GroupedConv2D routes as extra columns, e.g. 'split:1,split:2,"
        "depthwise,native' (implementation[:groups_per_conv]); left out when the first step exceeds --keras-cap")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    backend = Backend(args.threads, args.tf_intra_op_threads, args.tf_inter_op_threads)
    import keras

    from branchzoo.layers import GroupedConv2D
    torch = None if args.no_torch else torch_worker(TorchConv, args.threads)
    shapes = [s for s in SHAPES if any(fnmatch.fnmatch(s[0], p) for p in args.shapes.split(","))]
    if not shapes:
        raise SystemExit(f"No shape matches --shapes={args.shapes!r}; names: {[s[0] for s in SHAPES]}")
    extra_routes = [r for r in args.extra_routes.split(",") if r]

    wait_for_idle(args.max_other_load)
    ceiling = backend.matmul_ceiling(args.matmul_size)
    print(header(torch and f"torch {torch.version}", f"{args.threads} threads"
                 + (f" (TF intra-op {args.tf_intra_op_threads})" if args.tf_intra_op_threads else "")
                 + (f" (TF inter-op {args.tf_inter_op_threads})" if args.tf_inter_op_threads else ""),
                 f"matmul ceiling {ceiling:.0f} GFLOP/s ({backend.name} {args.matmul_size}^3 fp32 matmul)"), flush=True)
    tf_col = backend.name == "tensorflow" and not args.no_tf_grouped
    tf_grouped_trains = tf_col and tf_grouped_conv_trains()
    if tf_col and not tf_grouped_trains:
        print(f"# tf.nn.conv2d(groups): {NOT_AVAILABLE} ({WHY_NOT})", flush=True)
    table = head("shape", "Cin->Cout groups k stride HxW padding", "batch", "Keras Conv2D(groups) ms",
                 "GroupedConv2D ms", "route", "dense Conv2D ms", "torch ms", "GC / torch", "GC / dense", "GC GFLOP/s",
                 f"% of matmul ceiling ({ceiling:.0f} GFLOP/s)", "other load %",
                 *(["tf.nn.conv2d(groups) ms", "tf.nn.conv2d(groups) / torch"] if tf_col else []),
                 *(f"{r} ms" for r in extra_routes))
    print(table, flush=True)

    rows = []
    for name, batch, hw, cin, cout, groups, k, stride, padding in shapes:
        batch = args.batch_size or batch
        x_np = np.random.default_rng(0).standard_normal((batch, hw, hw, cin)).astype("float32")
        conv_args = dict(strides=stride, padding=padding, use_bias=False)
        gc = GroupedConv2D(cout, k, groups=groups, implementation=args.implementation, **conv_args)
        methods = {"grouped": backend.train_step(gc, x_np),
                   "dense": backend.train_step(keras.layers.Conv2D(cout, k, **conv_args), x_np)}
        for route in extra_routes:
            implementation, _, per_conv = route.partition(":")
            if implementation == "depthwise" and cin != groups:
                continue
            layer = GroupedConv2D(cout, k, groups=groups, implementation=implementation,
                                  groups_per_conv=int(per_conv) if per_conv else None, **conv_args)
            methods[route] = backend.train_step(layer, x_np, cap=args.keras_cap)
        if tf_grouped_trains:
            methods["tf_grouped"] = backend.tf_grouped_step(gc, x_np)
        if torch is not None:
            torch.call("setup", batch, hw, cin, cout, groups, k, stride, padding)
            methods["torch"] = lambda: torch.call("step")
        methods = {m: run for m, run in methods.items() if run is not None}
        for run in methods.values():  # compile / warm up
            run()
        for attempt in range(1 + args.retries):
            wait_for_idle(args.max_other_load)
            times, other_load = round_robin(methods, args.repeats, args.block, wake=True, warmup=0,
                                            pids=[torch.pid] if torch else [])
            if other_load is None or other_load <= args.max_other_load:
                break
            if attempt < args.retries:
                print(f"# {name}: other processes used {100 * other_load:.0f}% of the CPUs, timing again",
                      file=sys.stderr, flush=True)

        keras_ms, keras_note = (None, "") if args.no_keras_grouped else time_slow(
            backend.train_step(keras.layers.Conv2D(cout, k, groups=groups, **conv_args), x_np),
            args.keras_repeats, args.keras_cap)

        med = medians_ms(times)
        ho = (hw + stride - 1) // stride if padding == "same" else (hw - k) // stride + 1
        gflops = 3 * 2 * batch * ho * ho * cout * (cin // groups) * k * k / (med["grouped"] / 1000) / 1e9
        torch_ms, tf_ms = med.get("torch"), med.get("tf_grouped")
        cells = [name, f"{cin}->{cout} g{groups} k{k} s{stride} {hw}x{hw} {padding}", batch,
                 keras_note or ms(keras_ms), ms(med["grouped"]), gc.resolved_implementation, ms(med["dense"]),
                 ms(torch_ms), "-" if torch_ms is None else f"{med['grouped'] / torch_ms:.2f}",
                 f"{med['grouped'] / med['dense']:.2f}", f"{gflops:.0f}", f"{100 * gflops / ceiling:.0f}%",
                 percent(other_load)]
        if tf_col:
            cells += [NOT_AVAILABLE if tf_ms is None else ms(tf_ms),
                      "-" if torch_ms is None or tf_ms is None else f"{tf_ms / torch_ms:.2f}"]
        rows.append(row(*cells, *(ms(med.get(r)) for r in extra_routes)))
        print(rows[-1], flush=True)
    print(f"\n{table}\n" + "\n".join(rows))


def time_slow(run, repeats, cap):
    """Median ms of a slow step (Keras' XLA grouped conv), skipped when its first step exceeds `cap` s."""
    first, _ = timed(run)
    if first > cap:
        return None, f">{first:.0f} s (compiling step), skipped"
    return 1000 * statistics.median(timed(run)[0] for _ in range(max(1, repeats))), ""


class Backend:
    """A training step (forward, gradients w.r.t. input and weights) compiled as Keras' trainer of each backend
    compiles it on CPU: ``tf.function`` without XLA, ``jax.jit`` of ``jax.grad`` over ``stateless_call``, eager."""

    def __init__(self, threads, tf_intra=None, tf_inter=None):
        import keras
        self.name = keras.config.backend()
        if self.name == "tensorflow":
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(tf_intra or threads)
            if tf_inter:
                tf.config.threading.set_inter_op_parallelism_threads(tf_inter)
        elif self.name == "torch":
            import torch
            torch.set_num_threads(threads)
        elif self.name != "jax":
            raise SystemExit(f"KERAS_BACKEND must be tensorflow, jax or torch. Received: {self.name}")

    def train_step(self, layer, x_np, cap=None):
        """Returns a function running one step; None when its first (compiling) step exceeds `cap` s."""
        layer.build(x_np.shape)
        if self.name == "tensorflow":
            import tensorflow as tf
            x = tf.Variable(x_np)
            run = _tf_step(lambda: layer(x), [x] + layer.trainable_variables)
        elif self.name == "torch":
            import torch
            x = torch.tensor(x_np, requires_grad=True)
            params = [v.value for v in layer.trainable_variables]

            def run():
                x.grad = None
                for p in params:
                    p.grad = None
                y = layer(x)
                (y * y).mean().backward()

        else:
            import jax
            import jax.numpy as jnp
            x = jnp.asarray(x_np)
            weights = [v.value for v in layer.trainable_variables]

            def loss(x, weights):
                y = layer.stateless_call(weights, [], x)[0]
                return jnp.mean(y * y)

            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

            def run():
                jax.block_until_ready(grad(x, weights))

        if cap is not None and timed(run)[0] > cap:
            return None
        return run

    def tf_grouped_step(self, layer, x_np):
        """TensorFlow's own grouped convolution (oneDNN in graph mode) on `layer`'s weights, as one step."""
        import tensorflow as tf
        x, kernel = tf.Variable(x_np), tf.Variable(layer.kernel.numpy())
        strides, dilations, padding = list(layer.strides), list(layer.dilation_rate), layer.padding.upper()
        return _tf_step(lambda: tf.nn.conv2d(x, kernel, strides, padding, dilations=dilations), [x, kernel])

    def matmul_ceiling(self, n=2048, repeats=10):
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype("float32") for _ in range(2))
        if self.name == "tensorflow":
            import tensorflow as tf
            a, b = tf.constant(a), tf.constant(b)
            f = tf.function(lambda: tf.matmul(a, b))
            run = lambda: f().numpy()  # noqa: E731
        elif self.name == "torch":
            import torch
            a, b = torch.from_numpy(a), torch.from_numpy(b)
            run = lambda: torch.matmul(a, b)  # noqa: E731
        else:
            import jax
            f = jax.jit(lambda a, b: a @ b)
            run = lambda: jax.block_until_ready(f(a, b))  # noqa: E731
        run()
        best = min(timed(run)[0] for _ in range(repeats))
        return 2 * n**3 / best / 1e9


class TorchConv:
    """PyTorch ``nn.Conv2d(groups)`` (NCHW) in a `Worker` process (no TensorFlow in it); it times its steps."""

    def __init__(self, threads):
        import torch
        torch.set_num_threads(threads)
        self.torch = torch

    def version(self):
        return self.torch.__version__

    def setup(self, batch, hw, cin, cout, groups, k, stride, padding):
        self.conv = self.torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if padding == "same" else 0,
                                         groups=groups, bias=False)
        self.x = self.torch.randn(batch, cin, hw, hw, requires_grad=True)

    def step(self):
        t0 = time.perf_counter()
        self.conv.zero_grad()
        self.x.grad = None
        y = self.conv(self.x)
        (y * y).mean().backward()
        return time.perf_counter() - t0


def _tf_step(forward, sources):
    """A ``tf.function`` step: the loss ``mean(y * y)`` of ``y = forward()``, its gradients w.r.t. `sources`."""
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            y = forward()
            loss = tf.reduce_mean(y * y)
        return tape.gradient(loss, sources)

    def run():
        for g in step():
            g.numpy()

    return run


if __name__ == "__main__":
    main()
