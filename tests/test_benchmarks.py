"""The benchmark scripts run and print well-formed tables (smoke tests, not timings)."""

import os
import re
import sys

import numpy as np
import pytest

from conftest import REPO
from test_train import run_cli

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from grouped_conv import FORCE_ENV, NOT_AVAILABLE, tf_grouped_conv_trains  # noqa: E402

NUMBER = r"[0-9][0-9,.]*"
QUICK = ["--repeats", "1", "--block", "1"]  # one timed step per method: smoke tests, not timings
# grouped_conv.py waits up to 2 minutes for other processes to go quiet: not on shared CI machines; and
# its 2048^3 matmul ceiling takes seconds where TensorFlow runs without oneDNN
GROUPED_CONV_LIGHT = ["--max-other-load", "1", "--matmul-size", "256"]


def table_rows(stdout):
    """Data rows of the markdown table in `stdout` (header and rule left out)."""
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 2, stdout
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:] if "---" not in row]


def table_columns(stdout):
    """Column names of the first markdown table header in `stdout`."""
    header = next(line for line in stdout.splitlines() if line.startswith("| shape"))
    return [cell.strip() for cell in header.strip("|").split("|")]


def assert_ratio_of_rounded(ratio_cell, numerator, denominator):
    """The ms cells are rounded to 0.1 and the ratio to 0.01: the ratio (of unrounded times) lies within their bounds."""
    low = (numerator - 0.05) / (denominator + 0.05)
    high = (numerator + 0.05) / max(denominator - 0.05, 1e-9)
    assert low - 0.005 <= float(ratio_cell) <= high + 0.005, (ratio_cell, numerator, denominator)


@pytest.mark.slow  # a model traced in a child process, 10-15 s
def test_train_step_throughput_prints_a_row_per_model():
    proc = run_cli("benchmarks/train_step.py", "--throughput", "--models", "mpnet_tiny*",
                   "--image-size", "16", "--batch-size", "4", "--steps", "2",
                   "--model-kwargs", "widths=[4,4,8,8]", "pathways=[[1,3],[1,5]]", "blocks_per_stage=1")
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["mpnet_tiny_digits"]
    median, fastest, per_step, per_epoch = (float(v) for v in rows[0][3:7])
    assert 0 < fastest <= median
    # the ms cells are rounded to 1 ms: a fast CPU's 6.4 ms step prints as 6, 7% off the rate it gives
    low, high = 4 / ((median + 0.5) / 1000), 4 / (max(median - 0.5, 1e-3) / 1000)
    assert low - 0.05 <= per_step <= high + 0.05, (per_step, median)
    assert per_epoch > 0
    assert re.fullmatch(NUMBER, rows[0][2])


@pytest.mark.slow  # a model traced in a child process
def test_train_step_throughput_names_any_family_as_the_readme_table_does():
    proc = run_cli("benchmarks/train_step.py", "--throughput", "--models", "resnext_full_tiny_cifar10",
                   "--image-size", "16", "--batch-size", "4", "--steps", "2",
                   "--model-kwargs", "stage_widths=[8,8,8]", "stem_width=8")
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["resnext_full_tiny_cifar10"]
    # the architecture column: ResNeXt's {depth, width, cardinality} as the paper writes it
    assert "{20,4,8}" in rows[0][1].replace(" ", ""), rows[0][1]


def test_train_step_throughput_unknown_pattern_is_named():
    proc = run_cli("benchmarks/train_step.py", "--throughput", "--models", "nope*", check=False)
    assert proc.returncode != 0
    assert "--models" in proc.stderr and "nope*" in proc.stderr


@pytest.fixture(params=["probed", "forced_no"])
def tf_grouped_trains(request, monkeypatch):
    """Whether TF's grouped kernel trains here: probed, or forced to "no" (the answer on CPUs without AVX-512)."""
    if request.param == "forced_no":
        monkeypatch.setenv(FORCE_ENV, "0")
        return False
    monkeypatch.delenv(FORCE_ENV, raising=False)
    return tf_grouped_conv_trains()  # this process has the scripts' TensorFlow settings


def test_probe_answer_can_be_forced(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    assert tf_grouped_conv_trains() is True
    monkeypatch.setenv(FORCE_ENV, "0")
    assert tf_grouped_conv_trains() is False


def test_grouped_conv_prints_ratios(tf_grouped_trains):
    proc = run_cli("benchmarks/grouped_conv.py", "--shapes", "r8x8d_s3", "--batch-size", "2", *QUICK, *GROUPED_CONV_LIGHT,
                   "--no-keras-grouped", "--retries", "0")
    rows = table_rows(proc.stdout)
    assert rows[0][0] == "r8x8d_s3"
    columns = table_columns(proc.stdout)
    gc = float(rows[0][columns.index("GroupedConv2D ms")])
    dense = float(rows[0][columns.index("dense Conv2D ms")])
    assert gc > 0 and dense > 0
    # a ratio of times the table rounds to 0.1 ms: on a fast CPU's few-ms steps that rounding moves it by > 0.01
    assert_ratio_of_rounded(rows[0][columns.index("GC / dense")], gc, dense)
    # TensorFlow backend: the reference column of TF's own grouped convolution, where it trains
    tf_cell = rows[0][columns.index("tf.nn.conv2d(groups) ms")]
    torch_cell = rows[0][columns.index("torch ms")]
    ratio_cell = rows[0][columns.index("tf.nn.conv2d(groups) / torch")]
    if not tf_grouped_trains:
        assert tf_cell == NOT_AVAILABLE and ratio_cell == "-"
        return
    tf_grouped = float(tf_cell)
    assert tf_grouped > 0
    if torch_cell == "-":
        assert ratio_cell == "-"
    else:
        assert_ratio_of_rounded(ratio_cell, tf_grouped, float(torch_cell))


@pytest.mark.slow  # 10-12 s; needs torch, which CI lacks
def test_grouped_conv_runs_on_the_torch_backend(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    proc = run_cli("benchmarks/grouped_conv.py", "--shapes", "r8x8d_s3_down", "--batch-size", "2",
                   *QUICK, *GROUPED_CONV_LIGHT, "--no-keras-grouped", "--retries", "0",
                   "--extra-routes", "split:1")
    assert "(torch " in proc.stdout.splitlines()[0]
    rows = table_rows(proc.stdout)
    columns = table_columns(proc.stdout)
    assert rows[0][0] == "r8x8d_s3_down"
    assert rows[0][columns.index("route")] == "native"
    assert "tf.nn.conv2d(groups) ms" not in columns  # TensorFlow-only reference column
    assert float(rows[0][columns.index("split:1 ms")]) > 0
    assert float(rows[0][columns.index("GroupedConv2D ms")]) > 0


@pytest.mark.parametrize("script, flag", [("benchmarks/grouped_conv.py", "--repeats"),
                                          ("benchmarks/resnext_step.py", "--block"),
                                          ("benchmarks/train_step.py", "--steps")])
def test_benchmark_arguments_are_checked(script, flag):
    proc = run_cli(script, flag, "0", check=False)
    assert proc.returncode == 2
    assert flag in proc.stderr and "positive integer" in proc.stderr and "'0'" in proc.stderr


@pytest.mark.slow  # 256 separate branches traced, 8 s
def test_modular_ensemble_prints_the_three_implementations():
    proc = run_cli("benchmarks/modular_ensemble.py", "--modules", "4", "--hidden", "2", "--batch-size", "8",
                   "--rounds", "1", "--block", "2", "--warmup", "1")
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["1-M-8-H", "4-M-2-H", "4 separate branches"]
    assert [int(row[2].replace(",", "")) for row in rows] == [6370, 6400, 6400]  # 784*8+8+8*10+10; 4*(784*2+2+2*10+10)
    medians = [float(row[3]) for row in rows]
    assert all(m > 0 for m in medians)
    assert_ratio_of_rounded(rows[1][5], medians[1], medians[0])
    assert "separate branches reproduce the batched outputs" in proc.stdout
@pytest.mark.slow  # ~30 s of CPU: a TF process and a PyTorch child, three networks traced
def test_resnext_step_compares_with_pytorch():
    pytest.importorskip("torch")
    proc = run_cli("benchmarks/resnext_step.py", "--depth", "11", "--width", "2", "--cardinality", "4",
                   "--fan-in", "2", "--stage-widths", "8,8,8", "--stem-width", "8", "--num-classes", "3",
                   "--batch-size", "2", "--image-size", "8", "--rounds", "1", "--block", "1")
    assert "CPU: " in proc.stdout.splitlines()[0]
    rows = {row[0]: row for row in table_rows(proc.stdout)}
    assert set(rows) == {"Fixed-Full", "Learned K=2", "Learned K=4 (gated layout)"}
    # the script exits non-zero when the PyTorch network's parameter count differs; here by hand:
    # a block of width w: 1x1 8->w, BN, 3x3 w->w, BN, 1x1 w->8, BN; stride-2 modules add one 8->8
    # projection + BN shared by the 4 blocks
    def block(w):
        return 8 * w + 2 * w + 9 * w * w + 2 * w + w * 8 + 2 * 8

    projection = 8 * 8 + 2 * 8
    weights = (3 * 3 * 3 * 8 + 2 * 8) + 4 * block(2) + (4 * block(4) + projection) \
        + (4 * block(8) + projection) + (8 * 3 + 3)
    assert rows["Fixed-Full"][1] == f"{weights:,}"
    assert rows["Learned K=2"][1] == f"{weights + 2 * 16:,}"  # plus two 4x4 gate matrices
    for row in rows.values():
        ours, theirs = float(row[2]), float(row[3])
        assert ours > 0 and theirs > 0
        assert_ratio_of_rounded(row[4], ours, theirs)
    assert rows["Fixed-Full"][5] == "1.00"


def test_resnext_step_breakdown_times_every_module_and_gate():
    proc = run_cli("benchmarks/resnext_step.py", "--breakdown", "--depth", "11", "--width", "2",
                   "--cardinality", "4", "--fan-in", "2", "--stage-widths", "8,8,8", "--stem-width", "8",
                   "--num-classes", "3", "--batch-size", "2", "--image-size", "8", "--rounds", "1",
                   "--block", "1")
    rows = {row[0]: row for row in table_rows(proc.stdout)}
    assert list(rows) == ["module1", "module2", "module3", "all"]
    # by hand: the stem gives 8 channels at 8x8; Fixed-Full modules pass 8 channels on, gated ones
    # 4 blocks x 8; stages 2 and 3 halve the resolution in their first module
    assert [rows[m][1] for m in ("module1", "module2", "module3")] == ["[8, 8, 8]", "[8, 8, 8]", "[4, 4, 8]"]
    assert [rows[m][3] for m in ("module1", "module2", "module3")] == ["[8, 8, 8]", "[8, 8, 32]", "[4, 4, 32]"]
    assert rows["module1"][4] == "-"  # the first module reads the stem: no gate before it
    full = [float(rows[m][2]) for m in ("module1", "module2", "module3")]
    gates = [float(rows[m][4]) for m in ("module2", "module3")]
    modules = [float(rows[m][5]) for m in ("module1", "module2", "module3")]
    assert min(full + gates + modules) > 0
    for name, f, g, m in zip(("module1", "module2", "module3"), full, [0.0] + gates, modules):
        # (gate + module) / Fixed-Full of the unrounded times: within the bounds of the rounded cells
        low, high = (g + m - 0.1) / (f + 0.05), (g + m + 0.1) / (f - 0.05)
        assert low - 0.005 <= float(rows[name][6]) <= high + 0.005, rows[name]
    assert abs(float(rows["all"][2]) - sum(full)) <= 0.2
    assert abs(float(rows["all"][4]) - sum(gates)) <= 0.2
    assert abs(float(rows["all"][5]) - sum(modules)) <= 0.2


def test_resnext_step_arguments_are_checked():
    proc = run_cli("benchmarks/resnext_step.py", "--fan-in", "9", check=False)
    assert proc.returncode == 2 and "--fan-in" in proc.stderr and "9" in proc.stderr
    proc = run_cli("benchmarks/resnext_step.py", "--stage-widths", "8,8", check=False)
    assert proc.returncode == 2 and "--stage-widths" in proc.stderr and "'8,8'" in proc.stderr
@pytest.mark.slow
def test_train_step_throughput_of_a_gan_prints_its_two_networks():
    proc = run_cli("benchmarks/train_step.py", "--throughput", "--models", "branched_gan_tiny*", "--batch-size", "4",
                   "--steps", "2", "--model-kwargs", "dim_in=4", "max_dim=8", "discriminator_dim_in=4")
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["branched_gan_tiny_digits"]
    generator, discriminator = (int(v.replace(",", "")) for v in rows[0][2:4])
    assert generator > 0 and discriminator > 0
    median, fastest, per_step, per_epoch = (float(v) for v in rows[0][4:8])
    assert 0 < fastest <= median
    assert per_step == pytest.approx(4 / (median / 1000), rel=0.05)
    assert per_epoch > 0


@pytest.mark.slow  # needs torch (not on CI); beside TensorFlow in the suite's process it took 35-58 s
@pytest.mark.parametrize("name, expected", [
    ("mpnet_tiny_digits", 1_108_978),          # benchmarks/README.md's count, the same in both frameworks
    ("resnext_gated_tiny_cifar10", None),
    ("modular_mlp_256x4", None),
])
def test_train_step_twins_have_the_zoo_models_parameter_counts(name, expected):
    torch = pytest.importorskip("torch")
    import branchzoo
    import train_step

    card = branchzoo.model_card(name)
    model, _ = train_step.TWINS[card["builder"]](card)
    theirs = sum(p.numel() for p in model.parameters())
    ours = sum(int(np.prod(w.shape)) for w in branchzoo.build(name).trainable_weights)
    assert theirs == ours == (expected or ours)
    shape = card["config"]["input_shape"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside TensorFlow's pools in this process, torch's OpenMP pool crawled (58 s)
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, shape[-1], *shape[:-1]))
    finally:
        torch.set_num_threads(threads)
    assert out.shape[-1] == card["config"]["num_classes"]


@pytest.mark.parametrize("name, kind", [
    ("StatefulPartitionedCall/gradient_tape/m/stage1_block1_1/path2_conv1_1/convolution/"
     "Conv2DBackpropInput:_MklNativeConv2DBackpropInput", "conv backward"),
    ("StatefulPartitionedCall/m/stage1_block1_1/path2_conv1_1/convolution:_MklNativeConv2D", "conv forward"),
    ("StatefulPartitionedCall/m/stage1_block1_1/path1_bn1_1/moments/mean:Mean", "batch norm (fwd + bwd)"),
    ("StatefulPartitionedCall/gradient_tape/m/stem_bn_1/batchnorm/mul_1/Mul:Mul", "batch norm (fwd + bwd)"),
    ("StatefulPartitionedCall/SGD/AssignAddVariableOp:AssignAddVariableOp", "optimizer update"),
    ("StatefulPartitionedCall/m/stem_relu_1/Relu:Relu", "activation (fwd + bwd)"),
    ("StatefulPartitionedCall/gradient_tape/AddN_3:AddN", "other (AddN)"),
])
def test_train_step_profile_kinds(name, kind):
    import train_step

    assert train_step.op_kind(name, ["path1_bn1", "stem_bn"]) == kind


@pytest.mark.slow  # two processes, mpnet_tiny_digits traced and profiled
def test_train_step_prints_routes_epoch_and_profile():
    routes = "train.py,pytorch" if _has("torch") else "train.py,tf"
    proc = run_cli("benchmarks/train_step.py", "--routes", routes, "--rounds", "1", "--block", "1",
                   "--batch-size", "8", "--epoch", "--profile")
    assert "cores" in proc.stdout.splitlines()[0]
    rows = table_rows(proc.stdout)
    steps = {row[2]: row for row in rows if len(row) == 6 and row[2] in routes.split(",")}
    assert set(steps) == set(routes.split(","))
    for row in steps.values():
        assert row[0] == "mpnet_tiny_digits" and row[1] == "1,108,978" and float(row[3]) > 0
    if "pytorch" in steps:
        assert steps["pytorch"][4] == "1.00"
        assert_ratio_of_rounded(steps["train.py"][4], float(steps["train.py"][3]), float(steps["pytorch"][3]))
    from branchzoo import data

    batches = -(-data.dataset_info("digits").num_examples["train"] // 8)
    epoch = next(row for row in rows if row[:2] == ["mpnet_tiny_digits", str(batches)])
    assert float(epoch[2]) > 0
    kinds = [row[0] for row in rows if len(row) == 3]
    assert {"conv forward", "conv backward", "batch norm (fwd + bwd)", "optimizer update"} <= set(kinds)


def test_train_step_arguments_are_checked():
    proc = run_cli("benchmarks/train_step.py", "--routes", "tf,nope", check=False)
    assert proc.returncode == 2 and "--routes" in proc.stderr and "nope" in proc.stderr
    proc = run_cli("benchmarks/train_step.py", "--models", "densenet18_cifar10", check=False)
    assert proc.returncode == 2 and "--models" in proc.stderr and "densenet18_cifar10" in proc.stderr


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None
