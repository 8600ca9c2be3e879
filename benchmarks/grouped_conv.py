"""Training-step time of grouped 3x3 convolutions: Keras, GroupedConv2D, dense, PyTorch.

For the grouped-convolution shapes of ResNeXt-29 8x8d and 8x64d, the modular
CIFAR-10 CNN ensemble (10 modules) and a depthwise case, times one training
step (forward, then gradients w.r.t. the input and the kernel; compiled as
Keras' trainers do on CPU: ``tf.function`` without XLA on TensorFlow,
``jax.jit`` on JAX, eager autograd on PyTorch, chosen by KERAS_BACKEND) of

- Keras ``Conv2D(groups=G)`` (on CPU an XLA grouped convolution; slow, so
  timed on ``--keras-repeats`` steps only and skipped past a time cap),
- ``branchzoo.layers.GroupedConv2D`` (``implementation="auto"``; the route it
  chose is printed),
- a dense ``Conv2D`` with the same input/output channels (groups=1),
- PyTorch ``nn.Conv2d(groups=G)`` on CPU (NCHW, ``torch.set_num_threads`` =
  ``--threads``), when torch is installed,
- on the TensorFlow backend, for reference, TensorFlow's own grouped
  convolution: ``tf.nn.conv2d`` with the grouped kernel in a ``tf.function``
  (oneDNN's grouped primitive in graph mode). ``keras.ops`` cannot reach it
  (Keras compiles every grouped convolution with XLA), so GroupedConv2D does
  not use it; the column shows what the best grouped kernel TensorFlow has
  achieves on these shapes. Its CPU gradients exist only in TensorFlow's
  oneDNN kernels (not on CPUs without AVX-512, nor with
  ``TF_ENABLE_ONEDNN_OPTS=0``): the script probes once whether it trains
  here and otherwise prints ``n/a (no CPU gradient for grouped conv here)``
  in that column (``$BRANCHZOO_TF_GROUPED_GRAD=0|1`` forces the answer).

The methods are timed round-robin (per round and method: one untimed step,
which wakes that method's thread pool while the previous one's spins down,
then ``--block`` timed steps back to back, as in training) so that load from
other processes hits them alike, and
a shape timed while other processes used more than ``--max-other-load`` of
the CPUs is timed again. The table reports medians in milliseconds, the
GroupedConv2D / torch and GroupedConv2D / dense ratios, and the GFLOP/s of
GroupedConv2D (3x the forward FLOPs per step) against a float32 matmul
ceiling measured at startup on the same backend.

    python benchmarks/grouped_conv.py                    # everything, ~10 min on 2 cores
    python benchmarks/grouped_conv.py --shapes 'r8x8d*'  # one family
    KERAS_BACKEND=jax python benchmarks/grouped_conv.py --extra-routes split:1,split:2
    KERAS_BACKEND=torch python benchmarks/grouped_conv.py --extra-routes split:1
"""

import argparse
import fnmatch
import os
import platform
import statistics
import sys
import time

from _args import non_negative_int, positive_int  # benchmarks/_args.py (the script's folder is on sys.path)
from _probes import NOT_AVAILABLE, WHY_NOT, tf_grouped_conv_trains

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="override every shape's batch (default: 32; 16 for 8x64d)")
    p.add_argument("--repeats", type=positive_int, default=8, help="rounds; each method is timed --block steps per round")
    p.add_argument("--block", type=positive_int, default=3, help="consecutive timed steps per method and round")
    p.add_argument("--shapes", default="*", help="fnmatch pattern(s), comma-separated, on shape names")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                   help="TF intra-op threads and torch.set_num_threads")
    p.add_argument("--tf-intra-op-threads", type=positive_int, default=None,
                   help="TensorFlow intra-op threads (default: --threads); torch keeps --threads")
    p.add_argument("--tf-inter-op-threads", type=positive_int, default=None,
                   help="TensorFlow inter-op threads (default: TensorFlow's choice)")
    p.add_argument("--keras-repeats", type=positive_int, default=2,
                   help="timed steps of Keras Conv2D(groups) (it takes seconds per step)")
    p.add_argument("--keras-cap", type=float, default=30.0,
                   help="skip Keras Conv2D(groups) when its first (compiling) step takes longer (s)")
    p.add_argument("--max-other-load", type=float, default=0.1,
                   help="fraction of the CPUs other processes may use while a shape is timed; "
                        "above it the shape is timed again (Linux /proc only)")
    p.add_argument("--retries", type=non_negative_int, default=2, help="re-timings of a shape disturbed by other load")
    p.add_argument("--matmul-size", type=positive_int, default=2048,
                   help="n of the n^3 float32 matmuls (best of 10) that measure the GFLOP/s ceiling")
    p.add_argument("--no-keras-grouped", action="store_true", help="skip Keras Conv2D(groups)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-tf-grouped", action="store_true",
                   help="skip the reference column of tf.nn.conv2d with a grouped kernel (TensorFlow backend)")
    p.add_argument("--implementation", default="auto",
                   help="GroupedConv2D implementation of the main column (default auto)")
    p.add_argument("--extra-routes", default="",
                   help="more GroupedConv2D routes as extra columns, e.g. 'split:1,split:2,depthwise,native' "
                        "(implementation[:groups_per_conv]); a route whose first step exceeds --keras-cap is left out")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    backend = Backend(args.threads, args.tf_intra_op_threads, args.tf_inter_op_threads)
    import keras

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from branchzoo.layers import GroupedConv2D

    torch = None if args.no_torch else TorchWorker.start(args.threads)

    patterns = args.shapes.split(",")
    shapes = [s for s in SHAPES if any(fnmatch.fnmatch(s[0], p) for p in patterns)]
    if not shapes:
        raise SystemExit(f"No shape matches --shapes={args.shapes!r}; names: {[s[0] for s in SHAPES]}")
    extra_routes = [r for r in args.extra_routes.split(",") if r]

    wait_for_idle(args.max_other_load)
    ceiling = backend.matmul_ceiling(args.matmul_size)
    print(f"# {time.strftime('%Y-%m-%d')}, keras {keras.__version__} ({backend.name} {backend.version})"
          + (f", torch {torch.version}" if torch else "")
          + f", python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads"
          + (f" (TF intra-op {args.tf_intra_op_threads})" if args.tf_intra_op_threads else "")
          + (f" (TF inter-op {args.tf_inter_op_threads})" if args.tf_inter_op_threads else "")
          + f", matmul ceiling {ceiling:.0f} GFLOP/s "
          f"({backend.name} {args.matmul_size}^3 fp32 matmul)", flush=True)
    tf_col = backend.name == "tensorflow" and not args.no_tf_grouped
    tf_grouped_trains = tf_col and tf_grouped_conv_trains()
    if tf_col and not tf_grouped_trains:
        print(f"# tf.nn.conv2d(groups): {NOT_AVAILABLE} ({WHY_NOT})", flush=True)
    print(table_head(ceiling, extra_routes, tf_col), flush=True)

    rows = []
    for name, batch, hw, cin, cout, groups, k, stride, padding in shapes:
        batch = args.batch_size or batch
        x_np = np.random.default_rng(0).standard_normal((batch, hw, hw, cin)).astype("float32")
        conv_args = dict(strides=stride, padding=padding, use_bias=False)
        gc = GroupedConv2D(cout, k, groups=groups, implementation=args.implementation, **conv_args)
        methods = {
            "grouped": backend.train_step(gc, x_np),
            "dense": backend.train_step(keras.layers.Conv2D(cout, k, **conv_args), x_np),
        }
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
            torch.setup(batch, hw, cin, cout, groups, k, stride, padding)
            methods["torch"] = torch.step
        methods = {m: run for m, run in methods.items() if run is not None}
        for run in methods.values():  # compile / warm up
            run()
        for attempt in range(1 + args.retries):
            wait_for_idle(args.max_other_load)
            meter = LoadMeter([torch.pid] if torch else [])
            times = {m: [] for m in methods}
            for _ in range(args.repeats):
                for m, run in methods.items():
                    run()  # untimed: wakes this method's thread pool, lets the other's spin down
                    for _ in range(args.block):
                        t0 = time.perf_counter()
                        elapsed = run()
                        times[m].append(elapsed if elapsed is not None else time.perf_counter() - t0)
            other_load = meter.other_load()
            if other_load is None or other_load <= args.max_other_load:
                break
            if attempt < args.retries:
                print(f"# {name}: other processes used {100 * other_load:.0f}% of the CPUs, timing again",
                      file=sys.stderr, flush=True)

        keras_ms, keras_note = None, ""
        if not args.no_keras_grouped:
            keras_ms, keras_note = time_slow(
                backend.train_step(keras.layers.Conv2D(cout, k, groups=groups, **conv_args), x_np),
                args.keras_repeats, args.keras_cap)

        med = {m: 1000 * statistics.median(v) for m, v in times.items()}
        ho = (hw + stride - 1) // stride if padding == "same" else (hw - k) // stride + 1
        flops = 3 * 2 * batch * ho * ho * cout * (cin // groups) * k * k
        gflops = flops / (med["grouped"] / 1000) / 1e9
        row = dict(name=name, batch=batch, hw=hw, cin=cin, cout=cout, groups=groups, k=k, stride=stride,
                   padding=padding, keras=keras_ms, keras_note=keras_note, route=gc.resolved_implementation,
                   other_load=other_load, gflops=gflops, pct=100 * gflops / ceiling,
                   tf_col=tf_col, extra={r: med.get(r) for r in extra_routes}, **med)
        rows.append(row)
        print(format_row(row), flush=True)

    print()
    print(table_head(ceiling, extra_routes, tf_col))
    print("\n".join(format_row(r) for r in rows))
    return rows


def time_slow(run, repeats, cap):
    """Median ms of a slow step (Keras' XLA grouped conv), skipped when its first step exceeds `cap` s."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    if first > cap:
        return None, f">{first:.0f} s (compiling step), skipped"
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), ""


class Backend:
    """A compiled training step (forward, gradients w.r.t. input and weights) per Keras backend.

    TensorFlow: ``tf.function`` without XLA, as Keras' TF trainer runs on CPU.
    JAX: ``jax.jit`` of ``jax.grad`` over ``stateless_call``, as Keras' JAX trainer.
    PyTorch: eager forward and ``backward()``, as Keras' torch trainer.
    """

    def __init__(self, threads, tf_intra=None, tf_inter=None):
        import keras

        self.name = keras.config.backend()
        if self.name == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(tf_intra or threads)
            if tf_inter:
                tf.config.threading.set_inter_op_parallelism_threads(tf_inter)
            self.version = tf.__version__
        elif self.name == "jax":
            import jax

            self.version = jax.__version__
        elif self.name == "torch":
            import torch

            torch.set_num_threads(threads)
            self.version = torch.__version__
        else:
            raise SystemExit(f"KERAS_BACKEND must be tensorflow, jax or torch. Received: {self.name}")

    def train_step(self, layer, x_np, cap=None):
        """Returns a function running one step; None when its first (compiling) step exceeds `cap` s."""
        layer.build(x_np.shape)
        if self.name == "tensorflow":
            import tensorflow as tf

            x = tf.Variable(x_np)

            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    y = layer(x)
                    loss = tf.reduce_mean(y * y)
                return tape.gradient(loss, [x] + layer.trainable_variables)

            def run():
                for g in step():
                    g.numpy()

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

        if cap is not None:
            t0 = time.perf_counter()
            run()
            if time.perf_counter() - t0 > cap:
                return None
        return run

    def tf_grouped_step(self, layer, x_np):
        """TensorFlow's own grouped convolution (oneDNN in graph mode) on `layer`'s weights, as one step."""
        import tensorflow as tf

        x = tf.Variable(x_np)
        kernel = tf.Variable(layer.kernel.numpy())
        strides, dilations = list(layer.strides), list(layer.dilation_rate)
        padding = layer.padding.upper()

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = tf.nn.conv2d(x, kernel, strides, padding, dilations=dilations)
                loss = tf.reduce_mean(y * y)
            return tape.gradient(loss, [x, kernel])

        def run():
            for g in step():
                g.numpy()

        return run

    def matmul_ceiling(self, n=2048, repeats=10):
        rng = __import__("numpy").random.default_rng(0)
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
        best = min(_timed(run) for _ in range(repeats))
        return 2 * n**3 / best / 1e9


class TorchWorker:
    """PyTorch in a child process (spawned, no TensorFlow in it).

    The two libraries' thread pools in one process slow each other down
    (measured: torch steps up to 2x slower next to TF's pools), so torch runs
    alone in its own process; the parent drives it step by step, which keeps
    the round-robin timing. The child times its own steps.
    """

    def __init__(self, conn, version, pid):
        self.conn, self.version, self.pid = conn, version, pid

    @classmethod
    def start(cls, threads):
        import multiprocessing as mp

        try:
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                raise ImportError
        except ImportError:
            print("torch not installed: no PyTorch column", file=sys.stderr)
            return None
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=_torch_worker, args=(child, threads), daemon=True)
        proc.start()
        return cls(parent, parent.recv(), proc.pid)

    def setup(self, *shape):
        self.conn.send(("setup", shape))
        self.conn.recv()

    def step(self):
        self.conn.send(("step", None))
        return self.conn.recv()


def _torch_worker(conn, threads):
    import torch

    torch.set_num_threads(threads)
    conn.send(torch.__version__)
    conv = x = None
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:  # the parent has finished
            return
        if cmd == "setup":
            batch, hw, cin, cout, groups, k, stride, padding = arg
            conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if padding == "same" else 0,
                                   groups=groups, bias=False)
            x = torch.randn(batch, cin, hw, hw, requires_grad=True)
            conn.send(None)
        elif cmd == "step":
            t0 = time.perf_counter()
            conv.zero_grad()
            x.grad = None
            y = conv(x)
            loss = (y * y).mean()
            loss.backward()
            conn.send(time.perf_counter() - t0)


def _proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busy_ticks():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


class LoadMeter:
    """CPU share used by OTHER processes between creation and `other_load()` (None off Linux).

    Torch's OpenMP pool slows down several-fold when another process takes a
    core (TF's pool much less), so timings under foreign load are not
    comparable; the table reports this share and busy shapes are re-timed.
    """

    def __init__(self, pids=()):
        self.pids = [os.getpid(), *pids]
        try:
            self.start = (time.perf_counter(), _busy_ticks(), sum(_proc_ticks(p) for p in self.pids))
        except OSError:
            self.start = None

    def other_load(self):
        if self.start is None:
            return None
        t0, busy0, own0 = self.start
        busy, own = _busy_ticks() - busy0, sum(_proc_ticks(p) for p in self.pids) - own0
        seconds = (time.perf_counter() - t0) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
        return max(0.0, (busy - own) / seconds)


def wait_for_idle(max_load, timeout=120.0, window=1.0):
    """Waits (up to `timeout` s) until other processes use at most `max_load` of the CPUs."""
    deadline = time.perf_counter() + timeout
    while True:
        meter = LoadMeter()
        time.sleep(window)
        load = meter.other_load()
        if load is None or load <= max_load or time.perf_counter() > deadline:
            return load


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ms(v):
    return "-" if v is None else f"{v:.1f}"


def format_row(r):
    keras_col = r["keras_note"] or _ms(r["keras"])
    torch_ms = r.get("torch")
    ratio_t = "-" if torch_ms is None else f"{r['grouped'] / torch_ms:.2f}"
    load = "-" if r["other_load"] is None else f"{100 * r['other_load']:.0f}"
    shape = f"{r['cin']}->{r['cout']} g{r['groups']} k{r['k']} s{r['stride']} {r['hw']}x{r['hw']} {r['padding']}"
    cells = [r["name"], shape, r["batch"], keras_col, _ms(r["grouped"]), r["route"], _ms(r["dense"]), _ms(torch_ms),
             ratio_t, f"{r['grouped'] / r['dense']:.2f}", f"{r['gflops']:.0f}", f"{r['pct']:.0f}%", load]
    if r["tf_col"]:
        tf_ms = r.get("tf_grouped")
        cells += [NOT_AVAILABLE if tf_ms is None else _ms(tf_ms),
                  "-" if torch_ms is None or tf_ms is None else f"{tf_ms / torch_ms:.2f}"]
    cells += [_ms(v) for v in r["extra"].values()]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(ceiling, extra_routes=(), tf_col=False):
    cols = ["shape", "Cin->Cout groups k stride HxW padding", "batch", "Keras Conv2D(groups) ms",
            "GroupedConv2D ms", "route", "dense Conv2D ms", "torch ms", "GC / torch", "GC / dense",
            "GC GFLOP/s", f"% of matmul ceiling ({ceiling:.0f} GFLOP/s)", "other load %"]
    if tf_col:
        cols += ["tf.nn.conv2d(groups) ms", "tf.nn.conv2d(groups) / torch"]
    cols += [f"{r} ms" for r in extra_routes]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


if __name__ == "__main__":
    main()
