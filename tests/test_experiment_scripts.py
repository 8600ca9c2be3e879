"""The measurements of experiments/branch_svd.py and the reports of gated_k_sweep.py and tail_patterns_cifar10.py.

Expected values are by hand (worked in the comments), not from the scripts.
The scripts' training runs need CIFAR-10 and are run by their commands
(experiments/README.md); these tests check what they compute from weights
and rows.
"""

import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import branch_svd  # noqa: E402
import gated_k_sweep  # noqa: E402
import tail_patterns_cifar10  # noqa: E402


def test_colourfulness_is_zero_for_grey_and_two_thirds_for_one_channel():
    kernel = np.zeros((2, 2, 3, 3))
    kernel[..., 0] = 0.7  # filter 0: the same weight on R, G and B (black-and-white)
    kernel[:, :, 0, 1] = 1.0  # filter 1: red only: deviations (2/3, -1/3, -1/3): 6/9 of 1
    kernel[:, :, 0, 2], kernel[:, :, 1, 2] = 1.0, -1.0  # filter 2: R - G: mean 0, all energy is colour
    np.testing.assert_allclose(branch_svd.colourfulness(kernel), [0.0, 2 / 3, 1.0], atol=1e-12)


def test_permutation_pvalue_approaches_the_exact_count():
    # values (1, 1, 0, 0), branches of 2: gap 1. Of the 6 equally likely splits, 2 ({1,1} | {0,0}
    # and its mirror) have a gap of 1: p = 2/6.
    p = branch_svd.permutation_pvalue([1.0, 1.0, 0.0, 0.0], 2, permutations=20000, seed=0)
    assert p == pytest.approx(1 / 3, abs=0.01)


def test_spearman_by_hand():
    # ranks of b: 0, 1, 3, 2; d = (0, 0, 1, 1): 1 - 6 * 2 / (4 * 15) = 0.8
    assert branch_svd.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)


def test_measure_counts_colour_filters_per_branch():
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.normal(size=(3, 3, 1, 2)), 3, axis=2)  # exactly black-and-white
    colour = np.zeros((3, 3, 3, 2))
    colour[:, :, 0], colour[:, :, 2] = 1.0, -1.0  # R - B: colourfulness 1
    kernel_a = np.concatenate([colour, grey], axis=3)  # branch 1: filters 0-1, branch 2: filters 2-3
    kernel_b = rng.normal(size=(3, 3, 2, 4))  # grouped, 2 groups: 2 input channels per output
    out, _ = branch_svd.measure(kernel_a, kernel_b, num_branches=2, threshold=1 / 3, permutations=500, seed=0)
    assert out["colour_filters_per_branch"] == [2, 0]
    np.testing.assert_allclose(out["branch_mean_colourfulness"], [1.0, 0.0], atol=1e-12)
    assert out["filters"] == 4 and out["branch_size"] == 2
    # the split colour | grey is 2 of the 6 splits with the largest gap: p near 1/3 (4 filters only)
    assert out["permutation_pvalue"] == pytest.approx(1 / 3, abs=0.06)


def test_k_sweep_summary_names_the_budget_and_the_best_k():
    rows = [
        {"fan_in": k, "test_top1": top1, "epochs": 2, "steps_per_epoch": 391, "train_params": 1000,
         "test_params": test, "test_param_share": test / 1000, "superfluous_blocks": 0, "gate_mean": 0.6,
         "gates_at_1": 0.0, "top_k_ties": 0, "top_k_choices": 40, "cpu_seconds": 60}
        for k, top1, test in ((1, 0.40, 700), (4, 0.45, 900))
    ]
    text = gated_k_sweep.summary_markdown({"command": "c", "model": "m", "rows": rows})
    assert "2 epochs in all of 391 batches each" in text
    assert "| 1 | 40.00% | 1,000 | 700 | 0.700 |" in text
    assert "Best K here: 4" in text


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1"], "--epochs: expected at least 2"),
    (["--fan-ins", "2,9"], "--fan-ins: expected values between 1 and 8"),
    (["--fan-ins", "two"], "--fan-ins: expected comma-separated integers"),
])
def test_k_sweep_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gated_k_sweep.parse_args(["--data-dir", "x", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _tail_report(tail_layers, gain):
    acc = {"c4": 0.61, "c1": 0.4, "c3": 0.62, "c2": 0.6}  # sorted as report.json is; forward order in "layers"
    return {
        "experiment": {"command": "python experiments/tail_patterns_cifar10.py --epochs 3", "width_multiplier": 0.25,
                       "parameters": 12345, "test_accuracy": 0.8123,
                       "training": {"epochs": 3, "steps_per_epoch": 391, "cpu_seconds": 600}},
        "probes": {"accuracy": acc, "layers": ["c1", "c2", "c3", "c4"], "not_converged": 0,
                   "tail": {"main": {"layers": ["c4"], "length": 1, "start": "c4"}}},
        "saturation": {"tail": {"main": {"layers": [], "length": 0, "start": None}}},
        "tail": {"result": {"layers": tail_layers, "length": len(tail_layers),
                            "start": tail_layers[0] if tail_layers else None, "mean_saturation_tail": 0.1,
                            "mean_saturation_rest": 0.5, "probe_gain_in_tail": gain},
                 "rule": {"relative": 0.5, "tolerance": 0.01, "min_length": 2}},
    }


def test_tail_summary_rows_by_hand():
    text = tail_patterns_cifar10.summary_markdown({
        "vgg16_cifar10": _tail_report(["c3", "c4"], 0.02),
        "densenet18_cifar10": _tail_report([], None),
    })
    # 600 CPU s = 10 CPU min; best probe c3 at 0.620; last layer c4 at 0.610
    assert ("| vgg16_cifar10 | x0.25 | 12,345 | 3 x 391 | 10 | 81.23% | 0 of 4 | c3 (0.620) | 0.610 | "
            "1 from c4 | none | 2 of 4 layers from c3 (saturation 0.10 in the tail vs 0.50 before; probe gain in the tail +0.020) |"
            ) in text
    (densenet_row,) = [line for line in text.splitlines() if line.startswith("| densenet18_cifar10 |")]
    assert densenet_row.endswith("| 1 from c4 | none | none |")  # probes alone, saturation alone, together
    assert "Command: `python experiments/tail_patterns_cifar10.py --epochs 3`" in text


@pytest.mark.parametrize("argv, message", [
    (["--models", "vgg19_cifar10"], "--models: expected names from vgg16_cifar10"),
    (["--width-multiplier", "2"], "--width-multiplier: expected a number in (0, 1]"),
    (["--epochs", "0"], "--epochs: expected a positive integer"),
])
def test_tail_patterns_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tail_patterns_cifar10.parse_args(["--data-dir", "x", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
