"""benchmarks/analysis.py runs and prints well-formed tables (a smoke test at tiny sizes, not timings)."""

import pytest

from test_benchmarks import table_rows
from test_train import run_cli


def _tables(stdout):
    """The markdown tables of `stdout`, split at the '# ...' comment lines."""
    blocks, current = [], []
    for line in stdout.splitlines():
        if line.startswith("# ") and current:
            blocks.append("\n".join(current))
            current = []
        current.append(line)
    blocks.append("\n".join(current))
    return [table_rows(b) for b in blocks if "| " in b]


@pytest.mark.slow  # 15-20 s of benchmark smoke test
def test_analysis_benchmark_prints_four_tables():
    proc = run_cli("benchmarks/analysis.py", "--cka-n", "200", "--cka-d", "16", "--epoch-examples", "32",
                   "--probe-train", "32", "--probe-test", "16", "--batch-size", "16", "--image-size", "16",
                   "--analyses", "saturation,cka", "--model-kwargs", "widths=[4,4,4,4]")
    cka, saturation, probes, callback = _tables(proc.stdout)
    assert [r[0] for r in cka][2:] == ["cka linear", "cka linear, debiased", "CKAAccumulator linear, batches of 1000"]
    gram_nn = float(cka[0][1])
    for row in cka:
        assert float(row[1]) >= 0 and row[2] and row[3]
    assert gram_nn >= 0
    assert [r[0] for r in saturation] == ["model inference only",
                                           "layer_saturation (extraction + covariance + eigen)"]
    assert [r[0] for r in probes] == ["extract", "fit", "total"]
    assert [r[0] for r in callback] == ["saturation", "cka"]
    assert [int(r[1]) for r in callback] == [1, 5]  # the analyses' default periods
    assert all(r[3].endswith("%") for r in callback)


def test_analysis_benchmark_rejects_unknown_names():
    proc = run_cli("benchmarks/analysis.py", "--skip", "cka,plots", check=False)
    assert proc.returncode != 0 and "--skip" in proc.stderr and "plots" in proc.stderr
