"""TensorFlow's start-up lines that carry no information, kept off stderr.

Importing TensorFlow prints log lines before absl's logging is initialised,
so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them, and the CUDA build of
TensorFlow logs ``failed call to cuInit: ... UNKNOWN ERROR (303)`` at ERROR
level when it first lists devices on a machine without a GPU. On
every ``train.py`` / ``evaluate.py`` / ``publish`` run on a CPU-only machine
that is five to eight lines of noise, one of them looking like an error.

``quiet_tensorflow_startup()`` (called by ``branchzoo/__init__.py``, so it is
in place before anything of branchzoo imports TensorFlow) makes the first
``import tensorflow`` of the process run with file descriptor 2 sent to a
temporary file, lists TensorFlow's physical devices inside that window (the
cuInit call happens there), then writes back to stderr every captured line
except:

- log lines (absl's ``I0000 00:00:...  port.cc:153] ...`` or TensorFlow's
  older ``2024-01-01 12:00:00.000: I tensorflow/...cc:193] ...``) whose severity is
  below ``TF_CPP_MIN_LOG_LEVEL`` (the level TensorFlow applies to them once
  absl is initialised), with absl's "All log messages before
  absl::InitializeLog()" preamble and the second line of the
  cpu_feature_guard message, when the level is 1 or more;
- the ERROR-level ``failed call to cuInit`` line (and "Could not find cuda
  drivers"), only where no GPU device node exists (``/dev/nvidia*``,
  ``/dev/dxg``) and the level is 1 or more: there it only says that there is
  no GPU. With a GPU device node a cuInit failure is a real error and stays.

Everything else (warnings, errors, tracebacks, other libraries' output)
reaches stderr unchanged, once the import has returned or failed.
``TF_CPP_MIN_LOG_LEVEL`` unset counts as 1 here (a script or notebook that
imports branchzoo sets no level); ``TF_CPP_MIN_LOG_LEVEL=0`` shows
everything; the CLIs set 2. Nothing happens when TensorFlow is already imported.
"""

import glob
import importlib.abc
import importlib.util
import os
import platform
import re
import sys
import tempfile

# absl: "I0000 00:00:1795681487.423549    6188 port.cc:153] ..." (severity, date, time, thread, file:line);
# TensorFlow's own format before it moved to absl: "2023-04-26 13:01:03.306951: I tensorflow/.../x.cc:193] ..."
_LOG_LINE = re.compile(r"^(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+[\w.+-]+:\d+\] "
                       r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) [\w./+-]+:\d+\] )")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# the second line of cpu_feature_guard's message ("To enable the following instructions: AVX2 ... flags.")
_CONTINUATION = re.compile(r"^To enable .* rebuild TensorFlow with the appropriate compiler flags\.$")
# Lines that only mean "this machine has no GPU": noise where no GPU device node exists.
_NO_GPU_LINES = (re.compile(r"\] failed call to cuInit: "),
                 re.compile(r"\] Could not find cuda drivers on your machine"))


def gpu_device_node_present():
    """True when the machine has a GPU device node (NVIDIA, or WSL2's /dev/dxg)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")


def min_log_level(environ=None):
    """The level the filter applies: ``TF_CPP_MIN_LOG_LEVEL`` as an int; 1 when unset or not a number."""
    value = (os.environ if environ is None else environ).get("TF_CPP_MIN_LOG_LEVEL", "")
    try:
        return int(value)
    except ValueError:
        return 1


def filter_startup_noise(text, min_level, gpu_node):
    """Removes TensorFlow's uninformative start-up lines from captured stderr text.

    Args:
        text: what was written to stderr while TensorFlow was imported.
        min_level: ``TF_CPP_MIN_LOG_LEVEL`` (0 keeps everything).
        gpu_node: whether a GPU device node exists (then cuInit failures are kept).

    Returns:
        ``text`` without the dropped lines (the others unchanged, in order).

    Example:

    >>> filter_startup_noise("I0000 00:00:1.5    7 port.cc:153] oneDNN custom operations are on.\\nreal\\n", 2, False)
    'real\\n'
    """
    if min_level < 1:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        log = _LOG_LINE.match(body)
        if log and _SEVERITY[log.group("absl") or log.group("tf")] < min_level:
            continue
        if log and not gpu_node and any(p.search(body) for p in _NO_GPU_LINES):
            continue
        if body == _PREAMBLE or _CONTINUATION.match(body):
            continue
        kept.append(line)
    return "".join(kept)


class _StderrFilter:
    """Context manager: fd 2 goes to a temporary file; on exit the filtered text is written to the real stderr."""

    def __init__(self, min_level, gpu_node):
        self.min_level, self.gpu_node = min_level, gpu_node

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.captured = tempfile.TemporaryFile()
        os.dup2(self.captured.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        self.captured.seek(0)
        text = self.captured.read().decode("utf-8", errors="replace")
        self.captured.close()
        kept = filter_startup_noise(text, self.min_level, self.gpu_node)
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()
        return False


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` inside a `_StderrFilter`, then lists the devices there too."""

    def __init__(self, loader, gpu_node):
        self.loader, self.gpu_node = loader, gpu_node

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the real one, for anyone who asks later
        with _StderrFilter(min_log_level(), self.gpu_node):
            self.loader.exec_module(module)
            if not self.gpu_node:
                module.config.list_physical_devices()  # the cuInit call and its log line happen here


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        _uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or min_log_level() < 1:
            return spec
        spec.loader = _QuietLoader(spec.loader, gpu_device_node_present())
        return spec


def _uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]


def quiet_tensorflow_startup():
    """Filters TensorFlow's start-up noise out of stderr when this process first imports it.

    Installs a one-shot import hook (nothing is filtered when
    ``$TF_CPP_MIN_LOG_LEVEL`` is 0 at import time; nothing is installed when
    TensorFlow is already imported); see the module docstring for what is
    dropped.

    Returns:
        True when the hook is in place; False when TensorFlow is already
        imported (``import branchzoo`` calls it before anything imports
        TensorFlow).

    Example (too late here: TensorFlow is imported first):

    >>> import tensorflow
    >>> quiet_tensorflow_startup()
    False
    """
    if "tensorflow" in sys.modules:
        return False
    _uninstall()
    sys.meta_path.insert(0, _QuietFinder())
    return True


# --- oneDNN ----------------------------------------------------------------------------

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def onednn_default(environ=None, machine=None, tensorflow_imported=None):
    """The ``TF_ENABLE_ONEDNN_OPTS`` value branchzoo sets, or None to leave it alone.

    TensorFlow turns its oneDNN CPU kernels on by default only on x86 CPUs with
    AVX-512 VNNI/BF16 or AMX; elsewhere it falls back to Eigen kernels whose
    convolution gradients are slow. A whole training step of mpnet_tiny_digits
    on this project's 2-core CPU with oneDNN limited to AVX2 (as on a CPU
    without AVX-512), quiet, took 2.53x PyTorch's with oneDNN off and 1.05x
    with it on (``python benchmarks/train_step.py --isa avx2
    [--onednn off]``, benchmarks/README.md). So branchzoo turns it on on every x86-64 CPU,
    unless the variable is already set (``TF_ENABLE_ONEDNN_OPTS=0`` keeps it
    off) or TensorFlow is already imported (then it is too late to choose).

    Returns:
        ``"1"`` where branchzoo turns oneDNN on, else None.
    """
    environ = os.environ if environ is None else environ
    machine = (platform.machine() if machine is None else machine).lower()
    if tensorflow_imported is None:
        tensorflow_imported = "tensorflow" in sys.modules
    if ONEDNN_ENV in environ or tensorflow_imported or machine not in ("x86_64", "amd64"):
        return None
    return "1"


def enable_onednn():
    """Sets ``TF_ENABLE_ONEDNN_OPTS=1`` where `onednn_default` says so; returns whether it did."""
    value = onednn_default()
    if value is None:
        return False
    os.environ[ONEDNN_ENV] = value
    return True
