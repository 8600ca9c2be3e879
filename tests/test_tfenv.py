"""TensorFlow's CPU-only start-up noise stays off the CLIs' stderr; real errors do not (branchzoo/_tfenv.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

# What importing TensorFlow 2.21 (CUDA build) and listing its devices printed on this project's
# CPU-only machine (Sapphire Rapids, oneDNN on), plus the W line and cuInit wording of other builds.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795681487.423549    6188 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795681487.425363    6188 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1795681487.520808    6188 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX512_FP16 AVX_VNNI AMX_TILE "
    "AMX_INT8 AMX_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    "W0000 00:00:1795681488.000001    6188 gpu_device.cc:2342] Cannot dlopen some GPU libraries.",
    # TensorFlow before its logging moved to absl (the setup.cfg range starts at 2.18)
    "2023-04-26 13:01:03.306951: I tensorflow/core/platform/cpu_feature_guard.cc:193] This TensorFlow binary is "
    "optimized with oneAPI Deep Neural Network Library (oneDNN) to use the following CPU instructions in "
    "performance-critical operations: AVX2 FMA",
    "To enable them in other operations, rebuild TensorFlow with the appropriate compiler flags.",
]
CUINIT = ("E0000 00:00:1795681491.121074    6188 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
          "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
REAL = [
    "E0000 00:00:1795681491.200000    6188 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc:288 : "
    "UNIMPLEMENTED: The Conv2D op currently only supports the NHWC tensor format on the CPU.",
    "Traceback (most recent call last):",
    "To enable something else entirely",
]
# Words that only the noise lines carry (what the end-to-end tests look for)
NOISE_MARKS = ("absl::InitializeLog", "port.cc:", "cudart_stub.cc", "cpu_feature_guard", "rebuild TensorFlow",
               "cuInit")


def _load_tfenv():
    """branchzoo/_tfenv.py by path: importing the package would import TensorFlow first."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tfenv_under_test", os.path.join(REPO, "branchzoo", "_tfenv.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tfenv = _load_tfenv()


def _text(*groups):
    return "".join(line + "\n" for group in groups for line in group)


def test_filter_drops_the_known_lines_and_keeps_the_rest():
    captured = _text(NOISE[:3], REAL[:1], NOISE[3:], [CUINIT], REAL[1:])
    assert tfenv.filter_startup_noise(captured, min_level=2, gpu_node=False) == _text(REAL)


def test_filter_follows_the_log_level():
    captured = _text(NOISE, [CUINIT], REAL)
    assert tfenv.filter_startup_noise(captured, min_level=0, gpu_node=False) == captured  # 0: everything
    # 1 drops INFO, keeps WARNING (as TF_CPP_MIN_LOG_LEVEL=1 does once absl is initialised)
    warning = [line for line in NOISE if line.startswith("W0000")]
    assert tfenv.filter_startup_noise(captured, min_level=1, gpu_node=False) == _text(warning, REAL)
    # 3 drops ERROR lines too, as TensorFlow would
    assert tfenv.filter_startup_noise(captured, min_level=3, gpu_node=False) == _text(REAL[1:])


def test_cuinit_failure_is_an_error_where_a_gpu_device_node_exists():
    captured = _text([CUINIT], REAL)
    assert tfenv.filter_startup_noise(captured, min_level=2, gpu_node=True) == captured


@pytest.mark.parametrize("value, level", [(None, 1), ("", 1), ("2", 2), ("0", 0), ("x", 1)])
def test_min_log_level(value, level):
    environ = {} if value is None else {"TF_CPP_MIN_LOG_LEVEL": value}
    assert tfenv.min_log_level(environ) == level


_FAKE_TENSORFLOW = textwrap.dedent(
    """
    import os, sys, types
    for line in {lines!r}:
        os.write(2, (line + "\\n").encode())
    print("python-level warning", file=sys.stderr)
    def _list():
        os.write(2, ({cuinit!r} + "\\n").encode())
        return []
    config = types.SimpleNamespace(list_physical_devices=_list)
    {fail}
    """
)


@pytest.mark.parametrize("fail", [False, True])
def test_import_hook_filters_only_during_the_first_tensorflow_import(tmp_path, fail):
    # A stand-in `tensorflow` package that prints noise and real lines to fd 2 while it is imported
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(_FAKE_TENSORFLOW.format(
        lines=NOISE[:2] + REAL[:1] + NOISE[2:], cuinit=CUINIT,
        fail="raise ImportError('broken install')" if fail else ""))
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import test_tfenv
        tfenv = test_tfenv.tfenv
        tfenv.gpu_device_node_present = lambda: False
        assert tfenv.quiet_tensorflow_startup()
        try:
            import tensorflow
        except ImportError as e:
            print("import failed:", e, file=sys.stderr)
        os.write(2, ({NOISE[1]!r} + "\\n").encode())  # after the import: not filtered
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    expected = _text(REAL[:1], ["python-level warning"])
    expected += _text(["import failed: broken install"]) if fail else ""
    assert proc.stderr == expected + _text(NOISE[1:2])


def _run_quietly(args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own default, as a user runs it
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cli_stderr_has_the_error_and_no_startup_noise(tmp_path):
    missing = tmp_path / "nope.keras"
    proc = _run_quietly(["evaluate.py", "--checkpoint", str(missing)])  # imports TensorFlow, then fails
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert not [line for line in lines if any(mark in line for mark in NOISE_MARKS)], proc.stderr
    assert any("checkpoint" in line and str(missing) in line for line in lines), proc.stderr  # the real error
    assert "Traceback" not in proc.stderr


def test_publish_module_has_no_startup_noise():
    # --table imports TensorFlow (through the model builders, for the architecture column)
    proc = _run_quietly(["-m", "branchzoo.publish", "--table"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("| model |")
    assert proc.stderr == ""


# --- oneDNN on by default --------------------------------------------------------------------------


@pytest.mark.parametrize("environ, machine, imported, expected", [
    ({}, "x86_64", False, "1"),                                # unset on x86-64: branchzoo turns it on
    ({}, "AMD64", False, "1"),
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "x86_64", False, None),   # the user's choice stays
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "x86_64", False, None),
    ({}, "x86_64", True, None),                                # TensorFlow already imported: too late
    ({}, "aarch64", False, None),                              # not x86: TensorFlow's own default
])
def test_onednn_default(environ, machine, imported, expected):
    assert tfenv.onednn_default(environ, machine, imported) == expected


@pytest.mark.parametrize("setting, enabled", [(None, True), ("0", False)])
def test_importing_branchzoo_turns_onednn_on_unless_the_user_chose(setting, enabled):
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"oneDNN is turned on by branchzoo only on x86-64; this is {platform.machine()}")
    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    script = ("import branchzoo\n"
              "from tensorflow.python.util import _pywrap_util_port\n"
              "print(_pywrap_util_port.IsMklEnabled())")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(enabled)
