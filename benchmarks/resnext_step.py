"""Training-step time of GatedConnect ResNeXt: branchzoo against the same network in PyTorch.

ResNeXt {D, w, C} (default {29,8,8}, stage widths 64, 128, 256, CIFAR-100 head, 32x32) with Fixed-Full
connectivity, learned connectivity (fan-in K) and learned K = C (the Fixed-Full function through the gated
layout). A step: forward in training mode, cross-entropy, gradients, SGD with momentum, the gates' clip; a
``tf.function`` (no XLA) against `torch_resnext` in its own process (the same trainable parameter count).
``--breakdown`` times instead each module and gate alone (forward and the gradient of its output's sum) next
to a copy (``x * 1``) of the gated module's input: the learned model's extra time, in passes over its input.

    python benchmarks/resnext_step.py                       # {29,8,8}, batch 32
    python benchmarks/resnext_step.py --depth 20 --width 4  # {20,4,8}
    python benchmarks/resnext_step.py --breakdown
"""

import argparse
import os

import numpy as np

from _common import (TorchSteps, head, header, medians_ms, percent, positive_int, round_robin, row, torch_resnext,
                     torch_worker)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--depth", type=positive_int, default=29)
    add("--width", type=positive_int, default=8, help="bottleneck width w")
    add("--cardinality", type=positive_int, default=8, help="C")
    add("--fan-in", type=positive_int, default=4, help="K of the learned model")
    add("--stage-widths", default="64,128,256", help="block output widths of the 3 stages")
    add("--stem-width", type=positive_int, default=64)
    add("--num-classes", type=positive_int, default=100)
    add("--image-size", type=positive_int, default=32)
    add("--batch-size", type=positive_int, default=32)
    add("--rounds", type=positive_int, default=5, help="rounds of the round-robin timing")
    add("--block", type=positive_int, default=2, help="consecutive timed steps per method and round")
    add("--threads", type=positive_int, default=os.cpu_count(), help="TF intra-op threads and torch.set_num_threads")
    add("--no-torch", action="store_true", help="skip PyTorch")
    add("--jit-compile", action="store_true", help="compile branchzoo's step with XLA (Keras leaves XLA off on CPU)")
    add("--breakdown", action="store_true", help="time every module and gate of the two networks alone (no PyTorch)")
    args = p.parse_args(argv)
    try:
        widths = [int(v) for v in args.stage_widths.split(",")]
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError
    except ValueError:
        p.error(f"argument --stage-widths: expected three positive integers, got {args.stage_widths!r}")
    args.stage_widths = widths
    if args.fan_in > args.cardinality:
        p.error(f"argument --fan-in: expected at most --cardinality ({args.cardinality}), got {args.fan_in}")
    if (args.depth - 2) % 9 or args.depth < 11:
        p.error(f"argument --depth: expected 2 + 9 * (modules per stage), e.g. 11, 20, 29; got {args.depth}")
    return args


def keras_step(config, batch, image_size, seed=0, jit_compile=False):
    """A compiled training step of `resnext_cifar(**config)`; returns (run, trainable parameters)."""
    import keras
    import tensorflow as tf

    from branchzoo.models import resnext_cifar
    model = resnext_cifar(input_shape=(image_size, image_size, 3), seed=seed, **config)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((batch, image_size, image_size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, config["num_classes"], batch))
    weights = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, weights), weights)  # applies the gates' [0, 1] clip
        return loss

    def run():
        step().numpy()

    return run, int(sum(np.prod(w.shape) for w in weights))


def layer_steps(model, batch, seed=0):
    """``{layer name: (run, input shape)}`` for every module and gate of `model` alone, on a random input of its
    shape in the model (`tensor_step`)."""
    from branchzoo.layers import GatedConnect, ResNeXtModule
    rng = np.random.default_rng(seed)
    steps = {}
    for layer in model.layers:
        if isinstance(layer, (GatedConnect, ResNeXtModule)):
            shape = (batch,) + tuple(layer.input.shape[1:])
            steps[layer.name] = (tensor_step(layer, rng, shape), shape)
    return steps


def tensor_step(fn, rng, shape):
    """A step (no XLA) of ``fn(x, training=True)`` (None: ``x * 1``) on a random ``x``, then the gradient of its
    sum w.r.t. ``x`` and `fn`'s trainable weights."""
    import tensorflow as tf
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    weights = [] if fn is None else fn.trainable_variables

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(x * 1.0 if fn is None else fn(x, training=True))
        return tape.gradient(total, [x] + list(weights))  # all returned, so none is pruned

    def run():
        step()[0].numpy()

    return run


def breakdown(args, base):
    """Prints the per-layer table of --breakdown: Fixed-Full against learned K, module by module."""
    from branchzoo.models import resnext_cifar
    shape = (args.image_size,) * 2 + (3,)
    full = resnext_cifar(input_shape=shape, seed=0, **dict(base, connectivity="full", fan_in=args.cardinality))
    gated = resnext_cifar(input_shape=shape, seed=0, **dict(base, connectivity="learned", fan_in=args.fan_in))
    ours = {"full": layer_steps(full, args.batch_size), "gated": layer_steps(gated, args.batch_size)}
    rng = np.random.default_rng(1)
    copies = dict.fromkeys(shape for name, (_, shape) in ours["gated"].items() if not name.endswith("_gate"))
    copies = {shape: tensor_step(None, rng, shape) for shape in copies}
    methods = {(kind, n): r for kind in ours for n, (r, _) in ours[kind].items()}
    methods.update({("copy", s): r for s, r in copies.items()})
    times, load = round_robin(methods, args.rounds, args.block)
    t = medians_ms(times)
    print(f"# forward (training) + gradient of each layer alone, median ms; K = {args.fan_in}; "
          f"copy = x * 1 on the gated module's input; other load {percent(load)} %")
    print(head("module", "Fixed-Full input", "Fixed-Full module ms", "gated input", "gate ms", "gated module ms",
               "gate + module / Fixed-Full", "copy of gated input ms", "extra over Fixed-Full, in copies",
               align="llrlrrrrr"))
    totals = [0.0, 0.0, 0.0]
    for name, (_, shape) in ours["gated"].items():
        if name.endswith("_gate"):
            continue
        gate = name + "_gate" in ours["gated"]
        f_ms, g_ms, m_ms = t[("full", name)], t.get(("gated", name + "_gate"), 0.0), t[("gated", name)]
        totals = [totals[0] + f_ms, totals[1] + g_ms, totals[2] + m_ms]
        print(row(name, list(ours["full"][name][1][1:]), f"{f_ms:.1f}", list(shape[1:]),
                  f"{g_ms:.1f}" if gate else "-", f"{m_ms:.1f}", f"{(g_ms + m_ms) / f_ms:.2f}",
                  f"{t[('copy', shape)]:.1f}", f"{(g_ms + m_ms - f_ms) / t[('copy', shape)]:.1f}"))
    print(row("all", "", f"{totals[0]:.1f}", "", f"{totals[1]:.1f}", f"{totals[2]:.1f}",
              f"{(totals[1] + totals[2]) / totals[0]:.2f}", "", ""))


def main(argv=None):
    args = parse_args(argv)
    import branchzoo  # noqa: F401  (before TensorFlow: its settings, oneDNN on x86-64, as train.py runs)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    base = dict(depth=args.depth, width=args.width, cardinality=args.cardinality,
                stage_widths=args.stage_widths, num_classes=args.num_classes, stem_width=args.stem_width)
    setting = (f"ResNeXt {{{args.depth},{args.width},{args.cardinality}}}, stage widths {args.stage_widths}, "
               f"{args.num_classes} classes, {args.image_size}x{args.image_size}, batch {args.batch_size}, "
               f"{args.threads} threads")
    if args.breakdown:
        print(header(setting))
        return breakdown(args, base)
    torch = None if args.no_torch else torch_worker(TorchSteps, args.threads)
    models = {"Fixed-Full": ("full", args.cardinality), f"Learned K={args.fan_in}": ("learned", args.fan_in),
              f"Learned K={args.cardinality} (gated layout)": ("learned", args.cardinality)}
    models = {name: dict(base, connectivity=c, fan_in=k) for name, (c, k) in models.items()}
    print(header(setting, "branchzoo step compiled with XLA" if args.jit_compile else "", torch and torch.version))
    methods, params = {}, {}
    for name, config in models.items():
        methods[(name, "ours")], params[name] = keras_step(config, args.batch_size, args.image_size,
                                                           jit_compile=args.jit_compile)
        if torch is not None:
            theirs = torch.call("setup", name, torch_resnext, config, args.batch_size, (args.image_size,) * 2 + (3,),
                                args.num_classes, dict(lr=0.1, momentum=0.9))
            if theirs != params[name]:
                raise SystemExit(f"{name}: PyTorch has {theirs} trainable parameters, branchzoo {params[name]}")
            methods[(name, "torch")] = lambda name=name: torch.call("steps", name, 1)
    times, load = round_robin(methods, args.rounds, args.block, wake=True, pids=[torch.pid] if torch else [])
    t = medians_ms(times)
    print(head("model", "trainable params (both)", "branchzoo ms", "torch ms", "branchzoo / torch",
               "branchzoo / branchzoo Fixed-Full", "other load %", align="lrrrrrr"))
    for name in models:
        ours, theirs = t[(name, "ours")], t.get((name, "torch"))
        print(row(name, f"{params[name]:,}", f"{ours:.1f}", "-" if theirs is None else f"{theirs:.1f}",
                  "-" if theirs is None else f"{ours / theirs:.2f}", f"{ours / t[('Fixed-Full', 'ours')]:.2f}",
                  percent(load)))


if __name__ == "__main__":
    main()
