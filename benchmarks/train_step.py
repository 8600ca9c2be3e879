"""One whole training step of CPU-sized zoo models, route by route, against a PyTorch twin; or throughput.

A step (forward, loss, backward, optimizer update) as ``train.py`` runs it, on every route here: ``tf`` (Keras
on TensorFlow, the recipe compiled with ``--jit-compile off``), ``tf-xla`` (``on``), ``train.py`` (``auto``),
``keras-torch`` / ``keras-jax``, and ``pytorch``: the network written here (eager, ``torch.optim.SGD``, the
same trainable parameter count). Keras routes time ``fit`` steps on a repeated batch. One process per route,
round-robin; medians in ms. ``--epoch`` compares an epoch of the recipe's pipeline with steps x the median
step; ``--profile`` prints TensorFlow's profiler op time of the train.py route by kind of op. ``--throughput``
instead fits each model one epoch of --steps random batches after a one-step warm-up epoch, one process per
model (classifiers for --image-size inputs and 10 classes; BranchedGANs: one D and one G update per step).

    python benchmarks/train_step.py                            # mpnet_tiny_digits, every route
    python benchmarks/train_step.py --models mpnet_tiny_digits,resnext_gated_tiny_cifar10,modular_mlp_256x4
    python benchmarks/train_step.py --epoch --profile
    python benchmarks/train_step.py --isa avx2 --onednn off     # a CPU without AVX-512 as TensorFlow leaves it
    python benchmarks/train_step.py --isa avx2                  # ... and as branchzoo runs it (oneDNN on)
    python benchmarks/train_step.py --throughput                # every mpnet* entry at 32x32
    python benchmarks/train_step.py --throughput --models 'branched_gan*' --model-kwargs smoothing=learned
"""

import argparse
import collections
import math
import os
import statistics
import tempfile
import time

import numpy as np

from _common import (TorchSteps, Worker, has, head, header, medians_ms, percent, positive_int, round_robin, row,
                     timed, torch_resnext)

ROUTES = ("train.py", "tf", "tf-xla", "keras-torch", "keras-jax", "pytorch")
BACKEND = {"train.py": "tensorflow", "tf": "tensorflow", "tf-xla": "tensorflow",
           "keras-torch": "torch", "keras-jax": "jax", "pytorch": None}
JIT = {"train.py": "auto", "tf": "off", "tf-xla": "on", "keras-torch": "auto", "keras-jax": "auto"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--models", help="comma-separated zoo names or patterns (default mpnet_tiny_digits; --throughput: mpnet*)")
    add("--routes", default=",".join(ROUTES), help=f"comma-separated, of {', '.join(ROUTES)}")
    add("--batch-size", type=positive_int, default=32)
    add("--rounds", type=positive_int, default=5, help="rounds of the round-robin timing")
    add("--block", type=positive_int, default=3, help="timed steps per route and round")
    add("--threads", type=positive_int, default=os.cpu_count(), help="intra-op threads of every library (TF, torch)")
    add("--onednn", choices=("default", "on", "off"), default="default", help="TF_ENABLE_ONEDNN_OPTS of the "
        "TensorFlow routes (default: branchzoo's, on on x86-64 unless the variable is set; branchzoo/_tfenv.py)")
    add("--isa", choices=("native", "avx2"), default="native", help="avx2: oneDNN (TF's and torch's) and torch's "
        "kernels limited to AVX2, as on a CPU without AVX-512 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY)")
    add("--epoch", action="store_true", help="also fit one epoch of the recipe's data pipeline on the train.py route")
    add("--profile", action="store_true", help="print the TF profiler's op table of the train.py route")
    add("--throughput", action="store_true", help="images/s of one fit epoch per model (train.py route)")
    add("--image-size", type=positive_int, default=32, help="--throughput: classifiers' input size")
    add("--steps", type=positive_int, default=6, help="--throughput: timed steps (one epoch)")
    add("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
        help="--throughput: builder overrides for every model, e.g. widths=[16,32,64,128]")
    args = p.parse_args(argv)
    args.routes = [r for r in args.routes.split(",") if r]
    bad = [r for r in args.routes if r not in ROUTES]
    if bad:
        p.error(f"argument --routes: expected names from {', '.join(ROUTES)}, got {', '.join(bad)}")
    import branchzoo  # sets up TensorFlow for the worker processes as train.py runs it (oneDNN on x86-64)
    patterns = [m for m in (args.models or ("mpnet*" if args.throughput else "mpnet_tiny_digits")).split(",") if m]
    bad = [m for m in patterns if not branchzoo.list_models(m)]
    if bad or not patterns:
        p.error(f"argument --models: expected zoo names or patterns matching them, got "
                f"{', '.join(bad) or repr(args.models)} (registered: {', '.join(branchzoo.list_models())})")
    args.models = list(dict.fromkeys(n for m in patterns for n in branchzoo.list_models(m)))
    missing = [m for m in args.models if branchzoo.model_card(m)["builder"] not in TWINS]
    if missing and not args.throughput:
        p.error(f"argument --models: no PyTorch twin for {', '.join(missing)} (builders with one: {', '.join(TWINS)})")
    from branchzoo.training import parse_model_kwargs
    try:
        args.model_kwargs = parse_model_kwargs(args.model_kwargs)
    except ValueError as e:
        p.error(f"argument --model-kwargs: {e}")
    return args


def torch_mpnet(card):
    """`branchzoo.models.mpnet` in PyTorch (NCHW): stem, blocks of summed conv/BN/ReLU pathways, head."""
    from torch import nn
    config = dict(dict(blocks_per_stage=2, widths=(64, 128, 256, 512), num_classes=10), **card["config"])
    per_stage, widths = config["blocks_per_stage"], config["widths"]

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            paths = []
            for num_layers, k in config["pathways"]:
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

    layers = [nn.Conv2d(config["input_shape"][-1], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
              nn.ReLU()]
    c = widths[0]
    for width in widths:
        for b in range(per_stage):
            layers.append(Block(c, width, 2 if b == per_stage - 1 else 1))
            c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, config["num_classes"])]
    return nn.Sequential(*layers), None


def torch_modular_mlp(card):
    """`branchzoo.models.modular_mlp` in PyTorch (one Linear to M * H, then M batched Linear(H, K)) and its
    ModularLoss (categorical): lambda * CE(mean logits) + (1 - lambda) * mean member CE."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    config = dict(dict(num_classes=10, input_shape=(28, 28, 1)), **card["config"])
    m, h, k = config["num_modules"], config["hidden_units"], config["num_classes"]
    lambda_ = (card["recipe"].get("loss") or {}).get("config", {}).get("lambda_", 1.0)

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Linear(math.prod(config["input_shape"]), m * h)
            self.out = nn.Parameter(torch.randn(m, h, k) * 0.1)
            self.bias = nn.Parameter(torch.zeros(m, k))

        def forward(self, x):
            hidden = torch.relu(self.hidden(x.flatten(1))).view(-1, m, h)
            return torch.einsum("bmh,mhk->bmk", hidden, self.out) + self.bias

    def loss(logits, y):
        ensemble = F.cross_entropy(logits.mean(1), y)
        members = F.cross_entropy(logits.reshape(-1, k), y.repeat_interleave(m))
        return lambda_ * ensemble + (1 - lambda_) * members

    return Ensemble(), loss


def torch_resnext_card(card):
    keys = ("depth", "width", "cardinality", "fan_in", "connectivity", "stage_widths", "num_classes", "stem_width")
    return torch_resnext(**{key: card["config"][key] for key in keys})


TWINS = {"mpnet": torch_mpnet, "resnext_cifar": torch_resnext_card, "modular_mlp": torch_modular_mlp}


def start(route, args):
    """A `Worker` process running `route`, its environment set before any library loads."""
    env = {"KERAS_BACKEND": BACKEND[route]} if BACKEND[route] else {}
    if args.isa == "avx2":
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", DNNL_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    if args.onednn != "default":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "on" else "0"
    if route == "pytorch":
        return Worker(TorchSteps, args.threads, env=env)
    return Worker(KerasRoute, route, args.threads, env=env)


def setup(route, worker, name, batch):
    """Builds `name` on a route's worker; returns its trainable parameter count."""
    if route != "pytorch":
        return worker.call("setup", name, batch)
    import branchzoo
    card = branchzoo.model_card(name)
    recipe, config, momentum = card["recipe"], card["config"], card["recipe"].get("momentum")
    sgd = dict(lr=recipe.get("lr") or 0.01, momentum=0.9 if momentum is None else momentum,  # as the recipe says
               nesterov=bool(recipe.get("nesterov")) and bool(momentum), weight_decay=recipe.get("weight_decay") or 0.0)
    return worker.call("setup", name, TWINS[card["builder"]], {"card": card}, batch, config["input_shape"],
                       config["num_classes"], sgd)


def step_timer():
    """A Keras callback recording the wall time of every training step (``seconds``) and epoch (``epoch_seconds``)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.epoch_seconds = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)

    return StepTimer()


class KerasRoute:
    """A zoo model compiled as train.py compiles its recipe (optimizer, loss, metrics, jit_compile)."""

    def __init__(self, route, threads):
        import keras
        if keras.config.backend() != BACKEND[route]:
            raise RuntimeError(f"KERAS_BACKEND={BACKEND[route]} gave backend {keras.config.backend()}")
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        if BACKEND[route] == "torch":
            __import__("torch").set_num_threads(threads)
        self.route, self.keras, self.tf, self.runs = route, keras, tf, {}

    def version(self):
        extra = ""
        if BACKEND[self.route] == "tensorflow":
            from tensorflow.python.util import _pywrap_util_port
            extra = (f", oneDNN {'on' if _pywrap_util_port.IsMklEnabled() else 'off'}, "
                     f"GPUs: {len(self.tf.config.list_physical_devices('GPU'))}")
        elif BACKEND[self.route] == "torch":
            extra = f", torch {__import__('torch').__version__}"
        return f"Keras {self.keras.__version__} ({self.keras.config.backend()}), TF {self.tf.__version__}{extra}"

    def setup(self, name, batch):
        from branchzoo import tasks, training, zoo
        run = training.resolve_run_config(name, batch_size=batch, jit_compile=JIT[self.route])
        task = tasks.task_for(zoo.get_entry(name))
        model = zoo.build(name)
        tasks.apply_phase(model, run["phases"], 0)
        task.compile(model, run, run["phases"][0], 100)
        config = zoo.model_card(name)["config"]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *config["input_shape"])).astype("float32")
        y = rng.integers(0, config["num_classes"], batch).astype("int32")
        data = self.tf.data.Dataset.from_tensors((x, y)).repeat()
        self.runs[name] = (run, task, model, data)
        self._fit(name, data, 2)  # trace + warm-up
        return int(sum(math.prod(w.shape) for w in model.trainable_weights))

    def _fit(self, name, data, steps):
        timer = step_timer()
        self.runs[name][2].fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
        return timer.seconds

    def steps(self, name, n):
        return self._fit(name, self.runs[name][3], n)

    def epoch(self, name):
        """The recipe's pipeline: (steps, seconds, median step) of the second of two epochs (the first traces)."""
        from branchzoo import training
        run, task, model, _ = self.runs[name]
        prepared = training.prepare(run)  # the run setup() resolved: opens the data, counts the steps
        timer = step_timer()
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

    def throughput(self, name, size, batch, steps, overrides):
        """A --throughput row: `name` fit for one epoch of `steps` random batches after a one-step warm-up epoch."""
        import branchzoo
        from branchzoo import publish, tasks, zoo
        card, rng, count = branchzoo.model_card(name), np.random.default_rng(0), batch * steps
        if card["builder"] == "branched_gan":  # random [-1, 1] images, random class-transfer pairs
            config = dict(card["config"], **overrides)
            shape, classes = tuple(config.get("input_shape", (32, 32, 3))), int(config.get("num_classes", 2))
            images = rng.uniform(-1, 1, (count, *shape)).astype("float32")
            source = rng.integers(0, classes, count).astype("int32")
            target = ((source + 1 + rng.integers(0, classes - 1, count)) % classes).astype("int32")
            data = self.tf.data.Dataset.from_tensor_slices(((images, source), target)).batch(batch)
            model = branchzoo.build(name, **overrides)
            tasks.task_for(zoo.get_entry(name)).compile(model, {"recipe": card["recipe"], "jit_compile": "auto"},
                                                        tasks.resolve_phases(card["recipe"])[0], steps)
            fit, warm = dict(x=data), dict(x=data.take(1))
            params = [f"{zoo.count_parameters(m)['trainable']:,}" for m in (model.generator, model.discriminator)]
            arch = (f"{config.get('num_branches', 4)} branches, {config.get('dim_in', 8)}/{config.get('max_dim', 64)}, "
                    f"S={config.get('smoothing', 'gaussian')}, {shape[0]} px")
        else:  # as train.py compiles a classifier recipe: SGD momentum 0.9, cross-entropy, top-1/5
            x = rng.standard_normal((count, size, size, 3)).astype("float32")
            y = rng.integers(0, 10, count)
            model = branchzoo.build(name, input_shape=(size, size, 3), num_classes=10, **overrides)
            phase = {"optimizer": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}}
            tasks.get_task("classification").compile(model, {"recipe": {}, "jit_compile": "auto"}, phase, steps)
            fit = dict(x=x, y=y, batch_size=batch, shuffle=False)
            warm = dict(x=x[:batch], y=y[:batch], batch_size=batch)
            params, arch = [f"{model.count_params():,}"], publish.architecture(card)  # as the README names it
        model.fit(**warm, epochs=1, verbose=0)  # trace + warm-up
        timer = step_timer()
        seconds, _ = timed(lambda: model.fit(**fit, epochs=1, verbose=0, callbacks=[timer]))
        median = statistics.median(timer.seconds)
        return [name, arch + (f" {overrides}" if overrides else ""), *params, f"{1000 * median:.0f}",
                f"{1000 * min(timer.seconds):.0f}", f"{batch / median:.1f}", f"{count / seconds:.1f}"]


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
        for line in plane.lines if plane.name.startswith("/host:CPU") else ():
            for event in line.events if line.name.startswith("tf_Compute") else ():
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name:  # an op, not executor bookkeeping
                    totals[op_kind(name, bn_layers)] += event.duration_ps / 1e9 / steps
    table = {k: v for k, v in totals.items() if not k.startswith("other")}
    table["other ops"] = sum(v for k, v in totals.items() if k.startswith("other"))
    top_other = [(k[7:-1], round(v, 2)) for k, v in totals.most_common() if k.startswith("other")][:6]
    return table, top_other


def throughput(args):
    import branchzoo
    gans = [n for n in args.models if branchzoo.model_card(n)["builder"] == "branched_gan"]
    print(header(f"images {args.image_size}x{args.image_size}x3 (BranchedGANs: their entry's), batch "
                 f"{args.batch_size}, {args.steps} timed steps, one process per model; oneDNN setting: "
                 f"{args.onednn}; ISA: {args.isa}", frameworks=False))
    for names, columns in (([n for n in args.models if n not in gans], ["parameters"]),
                           (gans, ["G parameters", "D parameters"])):
        for i, name in enumerate(names):
            worker = start("train.py", args)
            if i == 0:
                print(f"\n# train.py route: {worker.version}\n" + head(
                    "model", "config", *columns, "median ms / step", "fastest ms / step", "images / s (median step)",
                    "images / s (epoch)", align="ll" + "r" * (len(columns) + 4)), flush=True)
            cells = worker.call("throughput", name, args.image_size, args.batch_size, args.steps, args.model_kwargs)
            print(row(*cells), flush=True)
            worker.close()


def main(argv=None):
    args = parse_args(argv)
    if args.throughput:
        return throughput(args)
    workers = {}
    for route in args.routes:
        needed = {"torch": "torch", "jax": "jax", None: "torch"}.get(BACKEND[route])
        if needed and not has(needed):
            print(f"# route {route}: {needed} not installed, skipped", flush=True)
            continue
        workers[route] = start(route, args)
    print(header(f"{args.threads} threads per route; batch {args.batch_size}; medians of {args.rounds} x "
                 f"{args.block} steps, round-robin; oneDNN setting: {args.onednn}; ISA: {args.isa}", frameworks=False))
    for route, w in workers.items():
        print(f"# {route}: {w.version}")
    params = {}
    for name in args.models:
        counts = {route: setup(route, w, name, args.batch_size) for route, w in workers.items()}
        if len(set(counts.values())) != 1:
            raise SystemExit(f"{name}: trainable parameter counts differ between routes: {counts}")
        params[name] = next(iter(counts.values()))
    methods = {(name, route): (lambda w=w, name=name: w.call("steps", name, args.block + 1)[1:])
               for name in args.models for route, w in workers.items()}
    times, load = round_robin(methods, args.rounds, 1, warmup=0, pids=[w.pid for w in workers.values()])
    t = medians_ms(times)
    print(head("model", "trainable params (every route)", "route", "ms / step", "/ pytorch", "other load %",
               align="lrlrrr"))
    for name in args.models:
        base = t.get((name, "pytorch"))
        for route in workers:
            print(row(name, f"{params[name]:,}", route, f"{t[(name, route)]:.1f}",
                      "-" if base is None else f"{t[(name, route)] / base:.2f}", percent(load)))
    default = workers.get("train.py")
    if args.epoch and default:
        print("\n" + head("model", "epoch steps", "epoch s", "steps x median step (same epoch) s",
                          "epoch / (steps x step)", "images / s", align="lrrrrr"))
        for name in args.models:
            steps, seconds, step = default.call("epoch", name)
            print(row(name, steps, f"{seconds:.1f}", f"{steps * step:.1f}", f"{seconds / (steps * step):.2f}",
                      f"{steps * args.batch_size / seconds:.0f}"))
    if args.profile and default:
        for name in args.models:
            (table, top_other), wall = default.call("profile", name)
            total = sum(table.values())
            print(f"\n# {name}, train.py route: TF profiler, op time per step (summed over executor threads); "
                  f"step wall time {wall:.1f} ms, op time / wall {total / wall:.2f}")
            print(head("kind of op", "ms / step", "share of op time", align="lrr"))
            for kind, value in sorted(table.items(), key=lambda kv: -kv[1]):
                print(row(kind, f"{value:.1f}", f"{100 * value / total:.0f}%"))
            print(f"# largest 'other' op types (ms / step): {top_other}")


if __name__ == "__main__":
    main()
