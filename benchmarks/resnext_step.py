"""Training-step time of GatedConnect ResNeXt: branchzoo against the same network in PyTorch.

After 002_6ffcaba31e771062.txt: ResNeXt {D, w, C} (default {29, 8, 8},
stage widths 64, 128, 256, CIFAR-100 head, 32x32 inputs) with Fixed-Full
connectivity (a ResNeXt) and with learned connectivity (GatedConnect, fan-in
K, default 4). One training step = forward in training mode, softmax
cross-entropy, gradients, SGD with momentum (and, for learned gates, the clip
into [0, 1]), as the trainers run it on CPU: a ``tf.function`` (no XLA) for
branchzoo, eager autograd for PyTorch.

The PyTorch networks are written here with the same layout (stem, modules of
C blocks as grouped convs with a BN per block after the last 1x1 conv, one
shared projection, the mean over the K gated inputs, Gumbel-top-k sampling
with the straight-through gradient) and checked to have the same number of
trainable parameters. They use PyTorch's BatchNorm2d layers as written;
branchzoo folds the BN after each 1x1 conv into the conv (see
`branchzoo.layers.ResNeXtModule`), which computes the same function.

Rows: Fixed-Full, learned K, and learned K = C (every block reads every
input, as Fixed-Full, but through GatedConnect's per-block inputs: the cost
of the gated layout itself). PyTorch runs in its own process (the two
libraries' thread pools slow each other down in one), driven step by step so
the methods are timed round-robin (per round and method: one untimed step,
then --block timed steps); medians in ms. "other load" is the CPU share other
processes took while timing.

    python benchmarks/resnext_step.py                       # {29,8,8}, batch 32
    python benchmarks/resnext_step.py --depth 20 --width 4  # {20,4,8}

``--breakdown`` times, instead, each module and gate of the two branchzoo
networks on its own (forward in training mode and the gradient of the sum
of its output, inputs random, as a ``tf.function``), next to a copy of the
gated module's input tensor (the same forward-backward of ``x * 1``): where
the learned model's extra time goes, and how far those layers are from the
bytes they must move.

    python benchmarks/resnext_step.py --breakdown
"""

import argparse
import os
import platform
import statistics
import sys
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=positive_int, default=29)
    p.add_argument("--width", type=positive_int, default=8, help="bottleneck width w")
    p.add_argument("--cardinality", type=positive_int, default=8, help="C")
    p.add_argument("--fan-in", type=positive_int, default=4, help="K of the learned model")
    p.add_argument("--stage-widths", default="64,128,256", help="block output widths of the 3 stages")
    p.add_argument("--stem-width", type=positive_int, default=64)
    p.add_argument("--num-classes", type=positive_int, default=100)
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds of the round-robin timing")
    p.add_argument("--block", type=positive_int, default=2, help="consecutive timed steps per method and round")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                   help="TF intra-op threads and torch.set_num_threads")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--jit-compile", action="store_true",
                   help="compile branchzoo's step with XLA (Keras leaves XLA off on CPU)")
    p.add_argument("--breakdown", action="store_true",
                   help="time every module and gate of the two branchzoo networks on its own (no PyTorch)")
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


def cpu_flags():
    """The vector extensions that decide per-shape ratios (AVX-512, AMX), and the CPU model number."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return "?"
    flags = info.get("flags", "").split()
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    if "amx_tile" in flags:
        simd += ", AMX"
    return f"{simd}; family {info.get('cpu family', '?')} model {info.get('model', '?')}"


# ---- PyTorch: the same networks -----------------------------------------------------------------

def torch_resnext(depth, width, cardinality, fan_in, connectivity, stage_widths, num_classes, stem_width):
    """The network of `branchzoo.models.resnext_cifar` in PyTorch (NCHW), for timing."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Module(nn.Module):
        def __init__(self, C, w, c_in, f, stride, shared, aggregate):
            super().__init__()
            self.C, self.f, self.c_in, self.shared, self.aggregate = C, f, c_in, shared, aggregate
            self.conv1 = nn.Conv2d(c_in if shared else C * c_in, C * w, 1, groups=1 if shared else C, bias=False)
            self.bn1 = nn.BatchNorm2d(C * w)
            self.conv2 = nn.Conv2d(C * w, C * w, 3, stride, 1, groups=C, bias=False)
            self.bn2 = nn.BatchNorm2d(C * w)
            self.conv3 = nn.Conv2d(C * w, C * f, 1, groups=C, bias=False)
            self.bn3 = nn.BatchNorm2d(C * f)  # one BN per block: channels j*f .. of block j
            self.projects = stride != 1 or c_in != f
            if self.projects:  # one projection shared by the blocks
                self.proj = nn.Conv2d(c_in, f, 1, stride, bias=False)
                self.proj_bn = nn.BatchNorm2d(f)

        def shortcut(self, x):
            return self.proj_bn(self.proj(x)) if self.projects else x

        def forward(self, x):
            x = F.relu(x)
            h = F.relu(self.bn1(self.conv1(x)))
            h = F.relu(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
            b, _, height, width_ = h.shape
            r = h.view(b, self.C, self.f, height, width_)
            if self.shared:
                s = self.shortcut(x)
                if self.aggregate:
                    return r.mean(1) + s
                return (r + s.unsqueeze(1)).reshape(b, self.C * self.f, height, width_)
            xb = x.reshape(b * self.C, self.c_in, x.shape[2], x.shape[3])  # blocks as samples
            out = r + self.shortcut(xb).view(b, self.C, self.f, height, width_)
            return out.mean(1) if self.aggregate else out.reshape(b, self.C * self.f, height, width_)

    class Gate(nn.Module):
        def __init__(self, C, K):
            super().__init__()
            self.C, self.K = C, K
            self.gates = nn.Parameter(torch.full((C, C), 0.5))

        def forward(self, y):
            g = self.gates
            if self.training:
                u = torch.rand_like(g).clamp(1e-7, 1 - 1e-7)
                scores = torch.log(g.detach().clamp_min(1e-12)) - torch.log(-torch.log(u))
            else:
                scores = g.detach()
            binary = torch.zeros_like(g).scatter_(-1, scores.topk(self.K, -1).indices, 1.0)
            if self.training:
                binary = binary + g - g.detach()  # straight-through
            b, _, height, width_ = y.shape
            blocks = y.view(b, self.C, -1, height, width_)
            return torch.einsum("bkfhw,jk->bjfhw", blocks, binary / self.K).reshape(b, -1, height, width_)

    per_stage = (depth - 2) // 9
    num_modules = 3 * per_stage
    full = connectivity == "full"
    layers = [nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU()]
    c_in, i = stem_width, 0
    for s, f in enumerate(stage_widths):
        for b in range(per_stage):
            i += 1
            if i > 1 and not full:
                layers.append(Gate(cardinality, fan_in))
            layers.append(Module(cardinality, width * 2**s, c_in, f, 2 if (s > 0 and b == 0) else 1,
                                 full or i == 1, full or i == num_modules))
            c_in = f
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


class TorchWorker:
    """PyTorch in a spawned child process, driven step by step (see the module docstring)."""

    def __init__(self, conn, version, pid):
        self.conn, self.version, self.pid = conn, version, pid

    @classmethod
    def start(cls, threads):
        import importlib.util
        import multiprocessing as mp

        if importlib.util.find_spec("torch") is None:
            print("torch not installed: no PyTorch column", file=sys.stderr)
            return None
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=_torch_worker, args=(child, threads), daemon=True)
        proc.start()
        return cls(parent, parent.recv(), proc.pid)

    def setup(self, key, config, batch, image_size):
        self.conn.send(("setup", (key, config, batch, image_size)))
        return self.conn.recv()  # trainable parameters

    def step(self, key):
        self.conn.send(("step", key))
        return self.conn.recv()


def _torch_worker(conn, threads):
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    conn.send(torch.__version__)
    runs = {}
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:  # the parent has finished
            return
        if cmd == "setup":
            key, config, batch, image_size = arg
            torch.manual_seed(0)
            model = torch_resnext(**config).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            gates = [p for n, p in model.named_parameters() if n.endswith("gates")]
            x = torch.randn(batch, 3, image_size, image_size)
            y = torch.randint(0, config["num_classes"], (batch,))
            runs[key] = (model, opt, gates, x, y)
            conn.send(sum(p.numel() for p in model.parameters()))
        elif cmd == "step":
            model, opt, gates, x, y = runs[arg]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            with torch.no_grad():
                for g in gates:
                    g.clamp_(0.0, 1.0)
            conn.send(time.perf_counter() - t0)


# ---- branchzoo ----------------------------------------------------------------------------------

def keras_step(config, batch, image_size, seed=0, jit_compile=False):
    """A compiled training step of `resnext_cifar(**config)`; returns (run, trainable parameters)."""
    import keras
    import numpy as np
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
        t0 = time.perf_counter()
        step().numpy()
        return time.perf_counter() - t0

    return run, int(sum(np.prod(w.shape) for w in weights))


def layer_steps(model, batch, seed=0):
    """``{layer name: (run, input shape)}`` for every module and gate of `model`, timed alone.

    One run = the layer's forward in training mode on a random input of its
    shape in the model, then the gradient of the sum of its output with
    respect to the input and the layer's trainable weights.
    """
    import numpy as np

    from branchzoo.layers import GatedConnect, ResNeXtModule

    rng = np.random.default_rng(seed)
    steps = {}
    for layer in model.layers:
        if not isinstance(layer, (GatedConnect, ResNeXtModule)):
            continue
        shape = (batch,) + tuple(layer.input.shape[1:])
        steps[layer.name] = (tensor_step(layer, rng, shape), shape)
    return steps


def tensor_step(fn, rng, shape):
    """A timed forward-backward of ``fn(x, training=True)`` (None: ``x * 1``) on a random ``x``."""
    import tensorflow as tf

    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    if fn is None:
        return timed_gradient(lambda x: x * 1.0, x, [])
    return timed_gradient(lambda x: fn(x, training=True), x, fn.trainable_variables)


def timed_gradient(fn, x, weights):
    """A timed ``tf.function`` (no XLA): ``fn(x)``, then the gradient of its sum w.r.t. ``x`` and `weights`."""
    import tensorflow as tf

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x))
        return tape.gradient(total, [x] + list(weights))  # all returned, so none is pruned

    def run():
        t0 = time.perf_counter()
        step()[0].numpy()
        return time.perf_counter() - t0

    return run


def round_robin(methods, rounds, block, wake=False, pids=()):
    """Times ``{key: run}`` round-robin; returns ``({key: median ms}, other load)``.

    Two untimed runs of each method first (tracing, warm-up); then per round
    and method: with `wake` one untimed run (wakes that method's thread
    pool), then `block` timed runs. The other load is the CPU share of
    processes other than this one and `pids` while timing (`LoadMeter`).
    """
    from grouped_conv import LoadMeter  # benchmarks/grouped_conv.py: CPU share of other processes

    for run in methods.values():
        run(), run()
    times = {key: [] for key in methods}
    meter = LoadMeter(list(pids))
    for _ in range(rounds):
        for key, run in methods.items():
            if wake:
                run()
            times[key] += [run() for _ in range(block)]
    load = meter.other_load()
    return {key: 1000 * statistics.median(v) for key, v in times.items()}, load


def breakdown(args, base):
    """Prints the per-layer table of --breakdown: Fixed-Full against learned K, module by module."""
    import numpy as np

    from branchzoo.models import resnext_cifar

    full = resnext_cifar(input_shape=(args.image_size,) * 2 + (3,), seed=0,
                         **dict(base, connectivity="full", fan_in=args.cardinality))
    gated = resnext_cifar(input_shape=(args.image_size,) * 2 + (3,), seed=0,
                          **dict(base, connectivity="learned", fan_in=args.fan_in))
    ours = {"full": layer_steps(full, args.batch_size), "gated": layer_steps(gated, args.batch_size)}
    rng = np.random.default_rng(1)
    copies = {}
    for name, (_, shape) in ours["gated"].items():
        if not name.endswith("_gate") and shape not in copies:
            copies[shape] = tensor_step(None, rng, shape)
    methods = {("full", n): r for n, (r, _) in ours["full"].items()}
    methods.update({("gated", n): r for n, (r, _) in ours["gated"].items()})
    methods.update({("copy", s): r for s, r in copies.items()})
    ms, load = round_robin(methods, args.rounds, args.block)
    print(f"# forward (training) + gradient of each layer alone, median ms; K = {args.fan_in}; "
          f"copy = x * 1 on the gated module's input; other load "
          f"{'-' if load is None else round(100 * load)} %")
    print("| module | Fixed-Full input | Fixed-Full module ms | gated input | gate ms | gated module ms | "
          "gate + module / Fixed-Full | copy of gated input ms | extra over Fixed-Full, in copies |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0]
    for name, (_, shape) in ours["gated"].items():
        if name.endswith("_gate"):
            continue
        full_shape = ours["full"][name][1]
        f_ms, m_ms = ms[("full", name)], ms[("gated", name)]
        g_ms = ms.get(("gated", name + "_gate"), 0.0)
        c_ms = ms[("copy", shape)]
        totals = [totals[0] + f_ms, totals[1] + g_ms, totals[2] + m_ms]
        print(f"| {name} | {list(full_shape[1:])} | {f_ms:.1f} | {list(shape[1:])} | "
              f"{'-' if name + '_gate' not in ours['gated'] else f'{g_ms:.1f}'} | {m_ms:.1f} | "
              f"{(g_ms + m_ms) / f_ms:.2f} | {c_ms:.1f} | {(g_ms + m_ms - f_ms) / c_ms:.1f} |")
    print(f"| all | | {totals[0]:.1f} | | {totals[1]:.1f} | {totals[2]:.1f} | "
          f"{(totals[1] + totals[2]) / totals[0]:.2f} | | |")


def main(argv=None):
    args = parse_args(argv)
    from branchzoo import training

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    base = dict(depth=args.depth, width=args.width, cardinality=args.cardinality,
                stage_widths=args.stage_widths, num_classes=args.num_classes, stem_width=args.stem_width)
    header = (f"# ResNeXt {{{args.depth},{args.width},{args.cardinality}}}, stage widths {args.stage_widths}, "
              f"{args.num_classes} classes, {args.image_size}x{args.image_size}, batch {args.batch_size}; "
              f"CPU: {training.cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, {args.threads} threads; "
              f"Python {platform.python_version()}, TF {tf.__version__}, Keras {keras.__version__}")
    if args.breakdown:
        print(header)
        return breakdown(args, base)
    torch = None if args.no_torch else TorchWorker.start(args.threads)
    models = [
        ("Fixed-Full", dict(base, connectivity="full", fan_in=args.cardinality)),
        (f"Learned K={args.fan_in}", dict(base, connectivity="learned", fan_in=args.fan_in)),
        (f"Learned K={args.cardinality} (gated layout)", dict(base, connectivity="learned", fan_in=args.cardinality)),
    ]
    print(header + (", branchzoo step compiled with XLA" if args.jit_compile else "")
          + (f", torch {torch.version}" if torch else ""))
    methods, params = {}, {}
    for name, config in models:
        run, ours = keras_step(config, args.batch_size, args.image_size, jit_compile=args.jit_compile)
        methods[(name, "ours")] = run
        params[name] = ours
        if torch is not None:
            theirs = torch.setup(name, config, args.batch_size, args.image_size)
            if theirs != ours:
                raise SystemExit(f"{name}: PyTorch has {theirs} trainable parameters, branchzoo {ours}")
            methods[(name, "torch")] = lambda name=name: torch.step(name)
    ms, load = round_robin(methods, args.rounds, args.block, wake=True, pids=[torch.pid] if torch else [])
    full = ms[(models[0][0], "ours")]
    print("| model | trainable params (both) | branchzoo ms | torch ms | branchzoo / torch | "
          "branchzoo / branchzoo Fixed-Full | other load % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _ in models:
        ours, theirs = ms[(name, "ours")], ms.get((name, "torch"))
        print(f"| {name} | {params[name]:,} | {ours:.1f} | {'-' if theirs is None else f'{theirs:.1f}'} | "
              f"{'-' if theirs is None else f'{ours / theirs:.2f}'} | {ours / full:.2f} | "
              f"{'-' if load is None else round(100 * load)} |")


if __name__ == "__main__":
    main()
