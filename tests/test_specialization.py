"""Branch specialization analysis (000, Figs. 5-7): arrays by hand, the registered analysis, evaluate.py."""

import json
import os

import numpy as np
import pytest
from matplotlib.figure import Figure

from branchzoo import training, zoo
from branchzoo.analysis.registry import AnalysisData, get_analysis
from branchzoo.analysis.specialization import (branch_confidence, branch_correlation, branch_covariance,
                                               branch_output_model, class_contributions,
                                               collect_branch_outputs, response_matrix, silent_branches,
                                               specialization_report, specialization_summary)
from branchzoo.models import branched_resnet, mpnet

RNG = np.random.default_rng(0)


def _specialists(num_examples=60, num_branches=4, num_classes=4, silent=()):
    """Branch j puts +3 on class j's logit for the examples of class j, small noise elsewhere."""
    labels = np.arange(num_examples) % num_classes
    outputs = RNG.normal(0, 0.05, (num_examples, num_branches, num_classes))
    for i, y in enumerate(labels):
        if y < num_branches:
            outputs[i, y, y] += 3.0
    for j in silent:
        outputs[:, j] *= 1e-3
    return outputs, labels


def test_response_matrix_covariance_correlation_by_hand():
    outputs = np.array([[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.5], [2.0, 4.0]], [[0.0, 1.0], [1.0, 1.0]]])
    labels = np.array([1, 0, 1])
    r = response_matrix(outputs, labels)
    np.testing.assert_array_equal(r, [[2.0, -1.0], [3.0, 2.0], [1.0, 1.0]])
    assert response_matrix(outputs).shape == (6, 2)  # every logit a row without labels
    cov = branch_covariance(r)
    expected = np.zeros((2, 2))
    for row in r:  # R^T R / n, one outer product per example
        expected += np.outer(row, row) / 3
    np.testing.assert_allclose(cov, expected)
    corr = branch_correlation(cov)
    assert corr[0, 1] == pytest.approx(expected[0, 1] / np.sqrt(expected[0, 0] * expected[1, 1]))
    np.testing.assert_allclose(np.diag(corr), 1.0)
    centred = branch_covariance(r, centered=True)
    np.testing.assert_allclose(centred, np.cov(r.T, bias=True))
    assert branch_correlation(np.array([[1.0, 0.0], [0.0, 0.0]]))[1, 1] == 0.0  # a silent branch


def test_class_contributions_and_confidence_by_hand():
    outputs = np.array([[[2.0, 0.0], [0.0, 1.0]], [[4.0, 0.0], [0.0, 3.0]], [[1.0, 5.0], [0.0, -1.0]]])
    labels = np.array([0, 0, 1])
    m = class_contributions(outputs, labels)
    np.testing.assert_allclose(m, [[3.0, 5.0], [0.0, -1.0]])  # [branch, class]
    conf = branch_confidence(outputs, labels)
    # branch 0 on example 2: softmax([1, 5])[1]
    assert conf[2, 0] == pytest.approx(np.exp(5) / (np.exp(1) + np.exp(5)))
    assert conf[0, 1] == pytest.approx(np.exp(0) / (np.exp(0) + np.exp(1)))
    assert branch_confidence(outputs)[2, 0] == pytest.approx(conf[2, 0])  # top class = true class there
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 2\)"):
        class_contributions(outputs, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="`labels` must be 3 integer class indices"):
        branch_confidence(outputs, np.array([0.5, 1.0, 0.0]))


def test_silent_branches():
    outputs, _ = _specialists(silent=(2,))
    result = silent_branches(outputs)
    assert result["silent_branches"] == [2]
    rms = np.sqrt((outputs**2).mean(axis=(0, 2)))
    np.testing.assert_allclose(result["activity"], rms)
    assert result["share"].sum() == pytest.approx(1.0) and result["share"][2] < 1e-5
    with pytest.raises(ValueError, match="`threshold` must be in"):
        silent_branches(outputs, threshold=1.5)


def test_summary_tells_specialists_from_a_shared_solution():
    special, labels = _specialists()
    s = specialization_summary(special, labels)
    assert s["dominant_branch"] == [0, 1, 2, 3]
    assert s["mean_top_branch_share"] > 0.95  # one branch carries each class
    assert s["sum_accuracy"] == 1.0 and s["num_silent"] == 0
    assert s["mean_abs_correlation"] < 0.2  # specialists respond to different examples
    shared = np.repeat(special.sum(axis=1, keepdims=True) / 4, 4, axis=1)  # every branch the same quarter
    t = specialization_summary(shared, labels)
    assert t["mean_top_branch_share"] == pytest.approx(0.25)
    assert t["mean_abs_correlation"] == pytest.approx(1.0)


def test_report_numbers_and_figures():
    outputs, labels = _specialists(silent=(3,), num_branches=5)
    result = specialization_report(outputs, labels, class_names=["a", "b", "c", "d"])
    assert set(result.figures) == {"covariance", "correlation", "class_contribution", "confidence", "activity"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    # branch 4 only carries noise (RMS 0.05, 7% of a specialist's 0.75): quiet but above the 5% threshold
    assert result.numbers["silent_branches"] == [3]
    json.dumps(result.numbers)  # JSON-able (NaN -> None)
    assert np.array(result.numbers["covariance"]).shape == (5, 5)


def test_model_branch_outputs_sum_to_the_output():
    model = branched_resnet(3, blocks_per_stage=(1,), base_width=2, num_classes=4, input_shape=(8, 8, 3))
    x = RNG.standard_normal((5, 8, 8, 3)).astype("float32")
    out, branches = branch_output_model(model)(x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(branches).sum(axis=1), rtol=1e-5, atol=1e-6)
    collected = collect_branch_outputs(model, [(x[:2], np.array([0, 1])), (x[2:], np.array([2, 3, 0]))])
    assert collected["branches"].shape == (5, 3, 4) and collected["labels"].tolist() == [0, 1, 2, 3, 0]
    result = get_analysis("specialization")(model, AnalysisData(test=[(x, np.array([0, 1, 2, 3, 0]))],
                                                                num_classes=4))
    assert result.numbers["num_branches"] == 3 and "correlation" in result.figures


def test_analysis_refuses_a_model_without_branch_sum():
    model = mpnet([[1, 3]], blocks_per_stage=1, widths=(2, 2, 2, 2))
    with pytest.raises(ValueError, match="needs a model with exactly one BranchSum layer.*has 0"):
        get_analysis("specialization")(model, AnalysisData(test=[]))


@pytest.fixture
def mlp_zoo(tmp_path, monkeypatch):
    """A zoo holding one tiny BranchSum classifier on digits (a branched MLP: quick to trace)."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    entry = {"name": "tiny_branchsum_digits", "builder": "branched_mlp", "dataset": "digits",
             "config": {"num_branches": 4, "hidden_units": [8], "num_classes": 10, "input_shape": [32, 32, 3],
                        "activation": "relu", "logit_clamp": 5.0},
             "recipe": {"epochs": 1, "batch_size": 32, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
                        "dataset": "digits"}}
    (folder / "tiny_branchsum_digits.json").write_text(json.dumps(entry))
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(folder))
    zoo.clear_cache()
    yield "tiny_branchsum_digits"
    zoo.clear_cache()


def _train_and_report(name, tmp_path, **kwargs):
    """train.py then evaluate.py --checkpoint run/model.keras --analysis specialization --report DIR."""
    out = tmp_path / "run"
    run = training.resolve_run_config(name, epochs=1, batch_size=32, steps_per_epoch=3, output=str(out),
                                      validate=False, jit_compile="off", **kwargs)
    training.train(run, verbose=0)
    report = tmp_path / "report"
    metrics = training.evaluate(checkpoint=str(out / "model.keras"), analysis="specialization",
                                report=str(report), output=str(tmp_path / "eval.json"), batch_size=32,
                                analysis_batches=2, verbose=0)
    assert 0 <= metrics["top1"] <= 1 and metrics["report"] == str(report)
    names = sorted(os.listdir(report))
    assert names == ["report.json", "specialization-activity.png", "specialization-class_contribution.png",
                     "specialization-confidence.png", "specialization-correlation.png",
                     "specialization-covariance.png"]
    return json.loads((report / "report.json").read_text())["specialization"]


def test_evaluate_writes_the_specialization_report(mlp_zoo, tmp_path):
    numbers = _train_and_report(mlp_zoo, tmp_path)
    assert numbers["num_branches"] == 4 and numbers["num_examples"] == 64  # 2 batches of 32
    assert len(numbers["class_contribution"]) == 4 and len(numbers["class_contribution"][0]) == 10


@pytest.mark.slow
def test_evaluate_report_of_the_zoo_digits_entry(tmp_path):
    numbers = _train_and_report("branched_resnet18_8x4_digits", tmp_path,
                                model_kwargs={"num_branches": 3, "base_width": 2})
    assert numbers["num_branches"] == 3 and numbers["num_examples"] == 64


def test_confidence_figure_spreads_examples_over_classes():
    from branchzoo.analysis.specialization import _spread

    labels = np.repeat(np.arange(4), 50)  # sorted by class, as an image-folder test split is
    picked = _spread(200, labels, 20)
    assert np.bincount(labels[picked]).tolist() == [5, 5, 5, 5]
    assert _spread(200, None, 5).tolist() == [0, 49, 99, 149, 199]
    assert _spread(3, labels[:3], 20).tolist() == [0, 1, 2]
