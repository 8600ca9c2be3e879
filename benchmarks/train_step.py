"""One whole training step of CPU-sized zoo models, route by route, against a PyTorch twin.

Issue 15: a training step (forward, loss, backward, optimizer update) of a
zoo model as ``train.py`` runs it, on every route we can take on this
machine, against the same network written here in plain PyTorch:

- ``tf``: Keras on the TensorFlow backend, compiled as train.py compiles the
  recipe with ``--jit-compile off`` (a ``tf.function`` graph, no XLA);
- ``tf-xla``: the same with ``--jit-compile on`` (XLA);
- ``train.py``: the same with train.py's default ``--jit-compile auto``
  (the route the recipe's ``"jit_compile"`` picks; Keras' choice when it has none);
- ``keras-torch`` / ``keras-jax``: Keras on the PyTorch / JAX backend (when installed);
- ``pytorch``: the twin (``torch.nn``, eager autograd, ``torch.optim.SGD``),
  with the same layers and the same trainable parameter count (checked).

The Keras routes time ``fit`` steps (a callback around each step, data from
a repeated in-memory batch): the step ``train.py`` runs. Every route runs in
its own process (two libraries' thread pools slow each other down in one),
driven round-robin (per round and route: one untimed step, then --block timed
steps); medians in ms. "other load" is the CPU share other processes took
meanwhile: timings under foreign load move.

``--epoch`` also fits one epoch of the recipe's real input pipeline
(augmentation included) on the default route and compares its time with
steps x the median step: above 1.0 by more than the noise, the pipeline (or
Keras' per-epoch work) starves the step. ``--profile`` prints TensorFlow's
profiler op table of the default route's step by kind of op (conv forward /
backward, batch norm, optimizer, ...).

    python benchmarks/train_step.py                            # mpnet_tiny_digits, every route
    python benchmarks/train_step.py --models mpnet_tiny_digits,resnext_gated_tiny_cifar10,modular_mlp_256x4
    python benchmarks/train_step.py --epoch --profile
    python benchmarks/train_step.py --isa avx2 --onednn off     # a CPU without AVX-512 as TensorFlow
                                                                # leaves it (oneDNN off) ...
    python benchmarks/train_step.py --isa avx2                  # ... and as branchzoo runs it (oneDNN on)
"""

import argparse
import collections
import math
import os
import platform
import statistics
import sys
import tempfile
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROUTES = ("train.py", "tf", "tf-xla", "keras-torch", "keras-jax", "pytorch")
BACKEND = {"train.py": "tensorflow", "tf": "tensorflow", "tf-xla": "tensorflow",
           "keras-torch": "torch", "keras-jax": "jax", "pytorch": None}
JIT = {"train.py": "auto", "tf": "off", "tf-xla": "on", "keras-torch": "auto", "keras-jax": "auto"}
DEFAULT_MODELS = "mpnet_tiny_digits"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated zoo names")
    p.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated, of {', '.join(ROUTES)}")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds of the round-robin timing")
    p.add_argument("--block", type=positive_int, default=3, help="timed steps per route and round")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                   help="intra-op threads of every library (TF, torch)")
    p.add_argument("--onednn", choices=("default", "on", "off"), default="default",
                   help="TF_ENABLE_ONEDNN_OPTS of the TensorFlow routes (default: branchzoo's, which turns "
                        "oneDNN on on x86-64 unless the variable is set; see branchzoo/_tfenv.py)")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: oneDNN (TF's and torch's) and torch's own kernels limited to AVX2, "
                        "as on a CPU without AVX-512 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY)")
    p.add_argument("--epoch", action="store_true",
                   help="also fit one epoch of the recipe's data pipeline on the train.py route")
    p.add_argument("--profile", action="store_true", help="print the TF profiler's op table of the train.py route")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.routes = [r for r in args.routes.split(",") if r]
    bad = [r for r in args.routes if r not in ROUTES]
    if bad:
        p.error(f"argument --routes: expected names from {', '.join(ROUTES)}, got {', '.join(bad)}")
    import branchzoo

    known = branchzoo.list_models()
    bad = [m for m in args.models if m not in known]
    if bad or not args.models:
        p.error(f"argument --models: expected zoo names with a PyTorch twin here "
                f"({', '.join(TWINS)}), got {', '.join(bad) or repr(args.models)}")
    missing = [m for m in args.models if branchzoo.model_card(m)["builder"] not in TWINS]
    if missing:
        p.error(f"argument --models: no PyTorch twin for {', '.join(missing)} "
                f"(builders with one: {', '.join(TWINS)})")
    return args


# ---- PyTorch twins -------------------------------------------------------------------------------

def torch_mpnet(pathways, blocks_per_stage=2, widths=(64, 128, 256, 512), num_classes=10, input_shape=None):
    """`branchzoo.models.mpnet` in PyTorch (NCHW): stem, blocks of summed conv/BN/ReLU pathways, head."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            paths = []
            for num_layers, k in pathways:
                layers, c = [], c_in
                for i in range(num_layers):
                    s = stride if i == num_layers - 1 else 1
                    layers += [nn.Conv2d(c, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                    c = c_out
                paths.append(nn.Sequential(*layers))
            self.paths = nn.ModuleList(paths)

        def forward(self, x):
            out = self.paths[0](x)
            for path in self.paths[1:]:
                out = out + path(x)
            return out

    layers = [nn.Conv2d(input_shape[-1], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    c = widths[0]
    for width in widths:
        for b in range(blocks_per_stage):
            layers.append(Block(c, width, 2 if b == blocks_per_stage - 1 else 1))
            c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def torch_resnext(config):
    """`branchzoo.models.resnext_cifar` in PyTorch: benchmarks/resnext_step.py's twin."""
    from resnext_step import torch_resnext as build

    keys = ("depth", "width", "cardinality", "fan_in", "connectivity", "stage_widths", "num_classes",
            "stem_width")
    return build(**{k: config[k] for k in keys})


def torch_modular_mlp(num_modules, hidden_units, num_classes=10, input_shape=(28, 28, 1), **_):
    """`branchzoo.models.modular_mlp` in PyTorch: one Linear to M * H, then M batched Linear(H, K)."""
    import math

    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(math.prod(input_shape), num_modules * hidden_units)
            self.out = nn.Parameter(torch.randn(num_modules, hidden_units, num_classes) * 0.1)
            self.bias = nn.Parameter(torch.zeros(num_modules, num_classes))

        def forward(self, x):
            h = torch.relu(self.hidden(x.flatten(1))).view(-1, num_modules, hidden_units)
            return torch.einsum("bmh,mhk->bmk", h, self.out) + self.bias

    return Ensemble()


def torch_modular_loss(lambda_):
    """ModularLoss (categorical) of 004: lambda * CE(mean logits) + (1 - lambda) * mean member CE."""
    from torch.nn import functional as F

    def loss(logits, y):
        b, m, k = logits.shape
        ensemble = F.cross_entropy(logits.mean(1), y)
        members = F.cross_entropy(logits.reshape(b * m, k), y.repeat_interleave(m))
        return lambda_ * ensemble + (1 - lambda_) * members

    return loss


def _twin_mpnet(card):
    return torch_mpnet(**card["config"]), None


def _twin_resnext(card):
    return torch_resnext(card["config"]), None


def _twin_modular(card):
    loss = card["recipe"].get("loss") or {}
    return torch_modular_mlp(**card["config"]), torch_modular_loss(loss.get("config", {}).get("lambda_", 1.0))


TWINS = {"mpnet": _twin_mpnet, "resnext_cifar": _twin_resnext, "modular_mlp": _twin_modular}


# ---- the worker processes -------------------------------------------------------------------------

class Worker:
    """One route in a spawned child process, driven step by step."""

    def __init__(self, route, threads, onednn, isa="native"):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.route = route
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, route, threads, onednn, isa), daemon=True)
        self.proc.start()
        self.version = self.call("hello")

    def call(self, *msg):
        self.conn.send(msg)
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"route {self.route}: {value}")
        return value


def _worker(conn, route, threads, onednn, isa):
    if isa == "avx2":  # before any library loads its kernels
        os.environ.update(ONEDNN_MAX_CPU_ISA="AVX2", DNNL_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    backend = BACKEND[route]
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    if onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if onednn == "on" else "0"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    handler = None
    while True:
        try:
            cmd, *args = conn.recv()
        except EOFError:  # the parent has finished
            return
        try:
            if cmd == "hello":
                handler = (TorchRoute if route == "pytorch" else KerasRoute)(route, threads)
                conn.send((True, handler.version()))
            else:
                conn.send((True, getattr(handler, cmd)(*args)))
        except Exception as e:  # reported in the parent, which stops
            import traceback

            conn.send((False, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"))


class TorchRoute:
    """Plain PyTorch: the twin, eager autograd, torch.optim.SGD as the recipe says."""

    def __init__(self, route, threads):
        import torch

        torch.set_num_threads(threads)
        self.torch, self.runs = torch, {}

    def version(self):
        return f"torch {self.torch.__version__}"

    def setup(self, name, batch):
        import branchzoo

        torch = self.torch
        from torch.nn import functional as F

        card = branchzoo.model_card(name)
        torch.manual_seed(0)
        model, loss = TWINS[card["builder"]](card)
        model.train()
        recipe = card["recipe"]
        momentum = recipe.get("momentum")
        opt = torch.optim.SGD(model.parameters(), lr=recipe.get("lr") or 0.01,
                              momentum=0.9 if momentum is None else momentum,
                              nesterov=bool(recipe.get("nesterov")) and bool(momentum),
                              weight_decay=recipe.get("weight_decay") or 0.0)
        shape = card["config"]["input_shape"]
        x = torch.randn(batch, shape[-1], *shape[:-1])
        y = torch.randint(0, card["config"]["num_classes"], (batch,))
        gates = [p for n, p in model.named_parameters() if n.endswith("gates")]
        self.runs[name] = (model, opt, loss or F.cross_entropy, gates, x, y)
        return sum(p.numel() for p in model.parameters())

    def steps(self, name, n):
        model, opt, loss_fn, gates, x, y = self.runs[name]
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            if gates:
                with self.torch.no_grad():
                    for g in gates:
                        g.clamp_(0.0, 1.0)
            times.append(time.perf_counter() - t0)
        return times


class KerasRoute:
    """A zoo model compiled as train.py compiles its recipe (optimizer, loss, metrics, jit_compile)."""

    def __init__(self, route, threads):
        import keras

        if keras.config.backend() != BACKEND[route]:
            raise RuntimeError(f"KERAS_BACKEND={BACKEND[route]} gave backend {keras.config.backend()}")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        if BACKEND[route] == "torch":
            import torch

            torch.set_num_threads(threads)
        self.route, self.keras, self.tf, self.runs = route, keras, tf, {}

    def version(self):
        import keras

        extra = ""
        if BACKEND[self.route] == "tensorflow":
            from tensorflow.python.util import _pywrap_util_port

            extra = f", oneDNN {'on' if _pywrap_util_port.IsMklEnabled() else 'off'}"
        elif BACKEND[self.route] == "torch":
            import torch

            extra = f", torch {torch.__version__}"
        return f"Keras {keras.__version__} ({keras.config.backend()}), TF {self.tf.__version__}{extra}"

    def _compiled(self, name, batch, **overrides):
        import numpy as np

        from branchzoo import tasks, training, zoo

        run = training.resolve_run_config(name, batch_size=batch, jit_compile=JIT[self.route], **overrides)
        task = tasks.task_for(zoo.get_entry(name))
        model = zoo.build(name)
        tasks.apply_phase(model, run["phases"], 0)
        task.compile(model, run, run["phases"][0], 100)
        card = zoo.model_card(name)
        rng = np.random.default_rng(0)
        shape = card["config"]["input_shape"]
        x = rng.standard_normal((batch, *shape)).astype("float32")
        y = rng.integers(0, card["config"]["num_classes"], batch).astype("int32")
        return run, task, model, x, y

    def setup(self, name, batch):
        run, task, model, x, y = self._compiled(name, batch)
        data = self.tf.data.Dataset.from_tensors((x, y)).repeat()
        self.runs[name] = (run, task, model, data)
        self._fit(name, data, 2)  # trace + warm-up
        return int(sum(math.prod(w.shape) for w in model.trainable_weights))

    def _fit(self, name, data, steps):
        from train_throughput import StepTimer  # after this process chose its Keras backend

        timer = StepTimer()
        model = self.runs[name][2]
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
        return timer.seconds

    def steps(self, name, n):
        return self._fit(name, self.runs[name][3], n)

    def epoch(self, name):
        """The recipe's pipeline: (steps, seconds, median step) of the second of two epochs.

        The first epoch traces the step for the pipeline's batches and warms the pipeline up.
        """
        from branchzoo import training

        run, task, model, _ = self.runs[name]
        prepared = training.prepare(run)  # the run setup() resolved: opens the data, counts the steps
        from train_throughput import StepTimer

        timer = StepTimer()
        model.fit(task.train_data(prepared.run, 0, 2), epochs=2, steps_per_epoch=prepared.steps_per_epoch,
                  verbose=0, callbacks=[timer])
        last = timer.seconds[prepared.steps_per_epoch:]
        return prepared.steps_per_epoch, timer.epoch_seconds[-1], statistics.median(last)

    def profile(self, name, n=5):
        """TensorFlow's profiler over `n` steps: ms per step by kind of op, and the step's wall ms."""
        logdir = tempfile.mkdtemp(prefix="branchzoo-profile-")
        model = self.runs[name][2]
        self.tf.profiler.experimental.start(logdir)
        seconds = self._fit(name, self.runs[name][3], n)
        self.tf.profiler.experimental.stop()
        bn_layers = [layer.name for layer in model._flatten_layers()
                     if isinstance(layer, self.keras.layers.BatchNormalization)]
        return op_table(logdir, n, bn_layers), 1000 * statistics.median(seconds)


# ---- the profiler's op table ----------------------------------------------------------------------

CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "FusedConv2D")


def op_kind(name, bn_layers):
    """The kind of a TF op from its profiler name ``scope/.../op_name:OpType``."""
    scope, _, op_type = name.rpartition(":")
    op_type = op_type.replace("_MklNative", "").replace("_Mkl", "")
    if "Conv2DBackprop" in op_type or "DepthwiseConv2dNativeBackprop" in op_type:
        return "conv backward"
    if op_type in CONV_OPS or op_type.startswith("_FusedConv"):
        return "conv forward"
    if "/SGD/" in scope or "/sgd/" in scope or "optimizer" in scope.lower() or op_type.startswith("ResourceApply"):
        return "optimizer update"
    parts = set(scope.replace("_1/", "/").split("/"))
    if any(layer in parts or f"{layer}_1" in scope.split("/") for layer in bn_layers) or "FusedBatchNorm" in op_type:
        return "batch norm (fwd + bwd)"
    if op_type in ("Relu", "ReluGrad", "LeakyRelu", "LeakyReluGrad"):
        return "activation (fwd + bwd)"
    if "loss" in scope.lower() or "cross_entropy" in scope.lower() or "Softmax" in op_type:
        return "loss"
    if "metric" in scope.lower() or "compile_metrics" in scope or "Accuracy" in scope or "top_k" in scope.lower():
        return "metrics"
    return f"other ({op_type})"


def op_table(logdir, steps, bn_layers):
    """ms per step by kind of op from the profiler's XSpace under `logdir` (TF's executor threads)."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # executor bookkeeping, not an op
                    continue
                totals[op_kind(name, bn_layers)] += event.duration_ps / 1e9 / steps
    other = sum(v for k, v in totals.items() if k.startswith("other"))
    table = {k: v for k, v in totals.items() if not k.startswith("other")}
    table["other ops"] = other
    top_other = [(k[7:-1], round(v, 2)) for k, v in totals.most_common() if k.startswith("other")][:6]
    return table, top_other


# ---- the table -----------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    from grouped_conv import LoadMeter  # benchmarks/grouped_conv.py: CPU share of other processes

    from branchzoo import training

    workers = {}
    for route in args.routes:
        backend = BACKEND[route]
        import importlib.util

        needed = {"torch": "torch", "jax": "jax", None: "torch"}.get(backend)
        if needed and importlib.util.find_spec(needed) is None:
            print(f"# route {route}: {needed} not installed, skipped", flush=True)
            continue
        workers[route] = Worker(route, args.threads, args.onednn, args.isa)
    print(f"# {training.cpu_name()}, {os.cpu_count()} cores, {args.threads} threads per route; "
          f"Python {platform.python_version()}; batch {args.batch_size}; medians of "
          f"{args.rounds} x {args.block} steps, round-robin; oneDNN setting: {args.onednn}; ISA: {args.isa}")
    for route, w in workers.items():
        print(f"# {route}: {w.version}")
    params = {}
    for name in args.models:
        for route, w in workers.items():
            params[(name, route)] = w.call("setup", name, args.batch_size)
        counts = set(params[(name, r)] for r in workers)
        if len(counts) != 1:
            raise SystemExit(f"{name}: trainable parameter counts differ between routes: "
                             f"{ {r: params[(name, r)] for r in workers} }")
    pids = [w.proc.pid for w in workers.values()]
    times = collections.defaultdict(list)
    meter = LoadMeter(pids)
    for _ in range(args.rounds):
        for name in args.models:
            for route, w in workers.items():
                times[(name, route)] += w.call("steps", name, args.block + 1)[1:]
    load = meter.other_load()
    ms = {key: 1000 * statistics.median(v) for key, v in times.items()}
    print("| model | trainable params (every route) | route | ms / step | / pytorch | other load % |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.models:
        base = ms.get((name, "pytorch"))
        for route in workers:
            value = ms[(name, route)]
            print(f"| {name} | {params[(name, route)]:,} | {route} | {value:.1f} | "
                  f"{'-' if base is None else f'{value / base:.2f}'} | "
                  f"{'-' if load is None else round(100 * load)} |")
    default = "train.py" if "train.py" in workers else None
    if args.epoch and default:
        print("\n| model | epoch steps | epoch s | steps x median step (same epoch) s | "
              "epoch / (steps x step) | images / s |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in args.models:
            steps, seconds, step = workers[default].call("epoch", name)
            print(f"| {name} | {steps} | {seconds:.1f} | {steps * step:.1f} | {seconds / (steps * step):.2f} | "
                  f"{steps * args.batch_size / seconds:.0f} |")
    if args.profile and default:
        for name in args.models:
            (table, top_other), wall = workers[default].call("profile", name)
            total = sum(table.values())
            print(f"\n# {name}, train.py route: TF profiler, op time per step (summed over executor threads); "
                  f"step wall time {wall:.1f} ms, op time / wall {total / wall:.2f}")
            print("| kind of op | ms / step | share of op time |")
            print("|---|---:|---:|")
            for kind, value in sorted(table.items(), key=lambda kv: -kv[1]):
                print(f"| {kind} | {value:.1f} | {100 * value / total:.0f}% |")
            print(f"# largest 'other' op types (ms / step): {top_other}")


if __name__ == "__main__":
    main()
