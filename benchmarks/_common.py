"""What the benchmark scripts share: argument types, header line, markdown cells, timing, the load meter, one
process per route (`Worker`), PyTorch training steps and ResNeXt in PyTorch. It imports no TensorFlow, Keras or
PyTorch on import: a `Worker` process imports its script, then sets its environment before a library loads.
"""

import argparse
import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # branchzoo, uninstalled


def _integer(text, minimum, what):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _integer(text, 1, "a positive integer")


def non_negative_int(text):
    return _integer(text, 0, "an integer >= 0")


def has(module):
    return importlib.util.find_spec(module) is not None


def timed(fn, repeats=1):
    """Best wall time of `repeats` calls of `fn`, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# ---- the header line and table cells ------------------------------------------------------------

def cpu():
    """The CPU's model name, vector extensions (they decide per-shape ratios) and model number."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    simd = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2") + \
        (", AMX" if "amx_tile" in flags else "")
    name, family, model = (info.get(k, "?") for k in ("model name", "cpu family", "model"))
    return f"{name} ({simd}; family {family} model {model})"


def header(*details, frameworks=True):
    """A table's first line: date, CPU, cores, Python, Keras and its backend (`frameworks`), then `details`."""
    parts = [time.strftime("%Y-%m-%d"), f"CPU: {cpu()}, {os.cpu_count()} cores", f"Python {platform.python_version()}"]
    if frameworks:
        import keras
        backend = keras.config.backend()
        parts.append(f"Keras {keras.__version__} ({backend} {importlib.import_module(backend).__version__})")
        if backend == "tensorflow":
            import tensorflow as tf
            parts.append(f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    return "# " + "; ".join(parts + [d for d in details if d])


def row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def head(*columns, align=""):
    """A markdown table's header and rule; `align` has an 'r' for each right-aligned (number) column."""
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(columns), "l")]
    return row(*columns) + "\n|" + "|".join(rule) + "|"


def ms(value):
    return "-" if value is None else f"{value:.1f}"


def percent(load):
    return "-" if load is None else round(100 * load)


# ---- timing -------------------------------------------------------------------------------------

def _proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busy_ticks():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


class LoadMeter:
    """CPU share used by OTHER processes (not this one nor `pids`) between creation and `other_load()` (None off
    Linux): PyTorch's OpenMP pool slows down several-fold when another process takes a core, TensorFlow's less."""

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


def round_robin(methods, rounds, block, wake=False, warmup=2, pids=()):
    """Times ``{key: run}`` round-robin; returns ``({key: [seconds]}, other load over the rounds)``.

    `warmup` untimed runs of each first; then per round and method: with `wake` one untimed run (it wakes that
    method's thread pool while the previous one's spins down), then `block` timed runs. A run returns None
    (timed here), or its own seconds or list of seconds (a worker process timing itself, `pids`).
    """
    for run in methods.values():
        for _ in range(warmup):
            run()
    times = {key: [] for key in methods}
    meter = LoadMeter(pids)
    for _ in range(rounds):
        for key, run in methods.items():
            if wake:
                run()
            for _ in range(block):
                t0 = time.perf_counter()
                seconds = run()
                seconds = time.perf_counter() - t0 if seconds is None else seconds
                times[key] += seconds if isinstance(seconds, list) else [seconds]
    return times, meter.other_load()


def medians_ms(times):
    return {key: 1000 * statistics.median(v) for key, v in times.items()}


# ---- one process per route ----------------------------------------------------------------------

class Worker:
    """``cls(*args)`` (with a ``version()``) in a spawned process, `env` set there first; the parent calls its
    methods. Thread pools of two libraries in one process slow each other down (PyTorch's steps up to 2x)."""

    def __init__(self, cls, *args, env=None):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, cls, args, dict(env or {})), daemon=True)
        self.proc.start()
        self.pid, self.name = self.proc.pid, cls.__name__
        self.version = self._answer()

    def call(self, method, *args):
        self.conn.send((method, args))
        return self._answer()

    def _answer(self):
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"{self.name} worker process: {value}")
        return value

    def close(self):
        self.conn.close()
        self.proc.join()


def _serve(conn, cls, args, env):
    os.environ.update(env)  # before the route loads its libraries
    handler, method, call_args = None, "version", ()
    while True:
        try:
            handler = handler or cls(*args)
            conn.send((True, getattr(handler, method)(*call_args)))
        except Exception as e:  # raised in the parent
            conn.send((False, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"))
            if handler is None:
                return
        try:
            method, call_args = conn.recv()
        except EOFError:  # the parent has finished
            return


def torch_worker(cls, *args):
    """A `Worker` of `cls` (a PyTorch route), or None with a note when PyTorch is not installed."""
    if not has("torch"):
        print("torch not installed: no PyTorch column", file=sys.stderr)
        return None
    return Worker(cls, *args)


class TorchSteps:
    """PyTorch training steps in a `Worker`: eager autograd, ``torch.optim.SGD``, the gates' clip into [0, 1]."""

    def __init__(self, threads):
        import torch
        torch.set_num_threads(threads)
        self.torch, self.runs = torch, {}

    def version(self):
        return f"torch {self.torch.__version__}"

    def setup(self, key, twin, twin_kwargs, batch, input_shape, num_classes, sgd):
        """``twin(**twin_kwargs)``: (network, loss or None: cross-entropy), on a random batch; its parameters."""
        torch = self.torch
        torch.manual_seed(0)
        model, loss = twin(**twin_kwargs)
        model.train()
        opt = torch.optim.SGD(model.parameters(), **sgd)
        x = torch.randn(batch, input_shape[-1], *input_shape[:-1])
        y = torch.randint(0, num_classes, (batch,))
        gates = [p for n, p in model.named_parameters() if n.endswith("gates")]
        self.runs[key] = (model, opt, loss or torch.nn.functional.cross_entropy, gates, x, y)
        return sum(p.numel() for p in model.parameters())

    def steps(self, key, n):
        """Seconds of each of `n` training steps."""
        model, opt, loss_fn, gates, x, y = self.runs[key]
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


# ---- PyTorch twin of branchzoo.models.resnext_cifar ---------------------------------------------

def torch_resnext(depth, width, cardinality, fan_in, connectivity, stage_widths, num_classes, stem_width):
    """`branchzoo.models.resnext_cifar` in PyTorch (NCHW; BN per block, which branchzoo folds into the 1x1 convs:
    the same function and trainable parameter count), and None: cross-entropy, for `TorchSteps`."""
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
    return nn.Sequential(*layers), None
