"""The benchmark scripts run and print well-formed tables (smoke tests, not timings)."""

import re

import pytest

from test_train import run_cli

NUMBER = r"[0-9][0-9,.]*"


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


def test_train_throughput_prints_a_row_per_model():
    proc = run_cli("benchmarks/train_throughput.py", "--models", "mpnet_tiny*",
                   "--image-size", "16", "--batch-size", "4", "--steps", "2",
                   "--model-kwargs", "widths=[4,4,8,8]")
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["mpnet_tiny_digits"]
    median, fastest, per_step, per_epoch = (float(v) for v in rows[0][3:7])
    assert 0 < fastest <= median
    assert per_step == pytest.approx(4 / (median / 1000), rel=0.05)
    assert per_epoch > 0
    assert re.fullmatch(NUMBER, rows[0][2])


def test_train_throughput_unknown_pattern_is_named():
    proc = run_cli("benchmarks/train_throughput.py", "--models", "nope*", check=False)
    assert proc.returncode != 0
    assert "--models" in proc.stderr and "nope*" in proc.stderr


def test_grouped_conv_prints_ratios():
    proc = run_cli("benchmarks/grouped_conv.py", "--shapes", "r8x8d_s3", "--batch-size", "2",
                   "--repeats", "1", "--block", "1", "--no-keras-grouped", "--retries", "0")
    rows = table_rows(proc.stdout)
    assert rows[0][0] == "r8x8d_s3"
    columns = table_columns(proc.stdout)
    gc = float(rows[0][columns.index("GroupedConv2D ms")])
    dense = float(rows[0][columns.index("dense Conv2D ms")])
    assert gc > 0 and dense > 0
    assert float(rows[0][columns.index("GC / dense")]) == pytest.approx(gc / dense, abs=0.01)
    # TensorFlow backend: the reference column of TF's own grouped convolution
    tf_grouped = float(rows[0][columns.index("tf.nn.conv2d(groups) ms")])
    assert tf_grouped > 0
    torch_cell = rows[0][columns.index("torch ms")]
    ratio_cell = rows[0][columns.index("tf.nn.conv2d(groups) / torch")]
    if torch_cell == "-":
        assert ratio_cell == "-"
    else:
        assert_ratio_of_rounded(ratio_cell, tf_grouped, float(torch_cell))


def test_grouped_conv_runs_on_the_torch_backend(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    proc = run_cli("benchmarks/grouped_conv.py", "--shapes", "r8x8d_s3_down", "--batch-size", "2",
                   "--repeats", "1", "--block", "1", "--no-keras-grouped", "--retries", "0",
                   "--extra-routes", "split:1")
    assert "(torch " in proc.stdout.splitlines()[0]
    rows = table_rows(proc.stdout)
    columns = table_columns(proc.stdout)
    assert rows[0][0] == "r8x8d_s3_down"
    assert rows[0][columns.index("route")] == "native"
    assert "tf.nn.conv2d(groups) ms" not in columns  # TensorFlow-only reference column
    assert float(rows[0][columns.index("split:1 ms")]) > 0
    assert float(rows[0][columns.index("GroupedConv2D ms")]) > 0


def test_grouped_conv_alternatives_check_and_time_every_route():
    # run_cli fails the test on a non-zero exit: the script exits non-zero when any route's output,
    # input gradient or kernel gradient differs from tf.nn.conv2d's by more than 1e-5 relative
    proc = run_cli("benchmarks/grouped_conv_alternatives.py", "--shapes", "r8x8d_s3,r8x8d_s3_down",
                   "--batch-size", "2", "--repeats", "1", "--block", "1")
    rows = {row[0]: row for row in table_rows(proc.stdout)}
    assert set(rows) == {"r8x8d_s3", "r8x8d_s3_down"}
    columns = table_columns(proc.stdout)
    stride1, stride2 = rows["r8x8d_s3"], rows["r8x8d_s3_down"]
    # Winograd is built for stride 1, space-to-depth for stride 2: each row times the routes that apply
    for row, timed, absent in ((stride1, "winograd", "space_to_depth"), (stride2, "space_to_depth", "winograd")):
        split = float(row[columns.index("split ms")])
        for route in ("tf_grouped", timed):
            ms = float(row[columns.index(f"{route} ms")])
            assert ms > 0 and split > 0
            assert_ratio_of_rounded(row[columns.index(f"{route} / split")], ms, split)
        assert row[columns.index(f"{absent} ms")] == "-"


@pytest.mark.parametrize("script, flag", [("benchmarks/grouped_conv.py", "--repeats"),
                                          ("benchmarks/grouped_conv_alternatives.py", "--block"),
                                          ("benchmarks/train_throughput.py", "--steps")])
def test_benchmark_arguments_are_checked(script, flag):
    proc = run_cli(script, flag, "0", check=False)
    assert proc.returncode == 2
    assert flag in proc.stderr and "positive integer" in proc.stderr and "'0'" in proc.stderr


@pytest.mark.slow
def test_gan_throughput_prints_a_row_per_model():
    proc = run_cli("benchmarks/gan_throughput.py", "--models", "branched_gan_tiny*", "--batch-size", "4",
                   "--steps", "2", "--model-kwargs", "dim_in=4", "max_dim=8", "discriminator_dim_in=4")
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["branched_gan_tiny_digits"]
    generator, discriminator = (int(v.replace(",", "")) for v in rows[0][2:4])
    assert generator > 0 and discriminator > 0
    median, fastest, per_step, per_epoch = (float(v) for v in rows[0][4:8])
    assert 0 < fastest <= median
    assert per_step == pytest.approx(4 / (median / 1000), rel=0.05)
    assert per_epoch > 0
