"""Analyses of modular ensembles: module dropping, specialists, entropy, confusion, dominance.

Expected values come from brute-force NumPy loops, scikit-learn or hand-made
cases written here. After Webb et al. (2019), Sec. 4.
"""

import json
import math
import os

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, f1_score

from branchzoo.analysis import modular as am
from branchzoo.analysis.registry import AnalysisData, analysis_names, run_analyses, write_report
from branchzoo.models.modular import modular_mlp

RNG = np.random.default_rng(4)


def random_case(N=300, M=12, K=5):
    labels = RNG.integers(0, K, N)
    logits = RNG.standard_normal((N, M, K)).astype(np.float32)
    logits[np.arange(N), :, labels] += RNG.uniform(0, 2.5, (N, M)).astype(np.float32)  # better than chance
    return logits, labels


def brute_accuracy(logits, labels, kept):
    return float((logits[:, list(kept)].mean(axis=1).argmax(-1) == labels).mean())


def test_subset_accuracy_is_the_mean_of_the_kept_logits():
    logits, labels = random_case()
    masks = RNG.random((40, logits.shape[1])) < 0.4
    masks[:, 0] = True
    expected = [brute_accuracy(logits, labels, np.flatnonzero(m)) for m in masks]
    np.testing.assert_allclose(am.subset_accuracy(logits, labels, masks, chunk=7), expected)
    with pytest.raises(ValueError, match="at least one module"):
        am.subset_accuracy(logits, labels, np.zeros((1, logits.shape[1]), bool))


def test_module_dropping_curve():
    logits, labels = random_case(M=12)
    curve = am.module_dropping_curve(logits, labels, draws=6, seed=3)
    assert curve["kept"] == list(range(1, 13))  # step max(12 // 20, 1) = 1
    assert curve["dropped"] == [12 - n for n in curve["kept"]]
    singles = {brute_accuracy(logits, labels, [j]) for j in range(12)}
    assert all(a in singles for a in curve["accuracy"][0])  # one module kept: one of the modules
    assert curve["accuracy"][-1] == [brute_accuracy(logits, labels, range(12))] * 6  # all kept: the ensemble
    assert curve["accuracy_mean"][3] == pytest.approx(np.mean(curve["accuracy"][3]))
    assert curve["accuracy_std"][-1] == pytest.approx(0.0, abs=1e-12)
    assert am.default_kept_counts(256)[:3] == [1, 13, 25] and am.default_kept_counts(256)[-1] == 256
    with pytest.raises(ValueError, match=r"`kept` must hold numbers of modules between 1 and 12"):
        am.module_dropping_curve(logits, labels, kept=[13])


def test_keep_probability_curve():
    logits, labels = random_case(M=20)
    curve = am.keep_probability_curve(logits, labels, probabilities=[0.05, 0.5, 1.0], draws=30, seed=1)
    assert curve["accuracy"][-1] == [brute_accuracy(logits, labels, range(20))] * 30
    assert curve["mean_kept"][1] == pytest.approx(10, abs=2)
    assert curve["mean_kept"][0] >= 1  # empty draws are redrawn
    default = am.keep_probability_curve(logits, labels, draws=2)
    assert len(default["probability"]) == 20 and default["probability"][-1] == 1.0
    assert (1 - default["probability"][0]) ** 20 == pytest.approx(0.001)  # P(no module kept) = 0.001


def test_one_vs_all_f1_matches_scikit_learn():
    labels = RNG.integers(0, 4, 200)
    preds = np.where(RNG.random(200) < 0.7, labels, RNG.integers(0, 4, 200))
    for c in range(4):
        assert float(am.one_vs_all_f1(preds, labels, c)) == pytest.approx(
            f1_score(labels == c, preds == c), rel=1e-12)
    assert float(am.one_vs_all_f1(np.zeros(5, int), np.zeros(5, int), 3)) == 0.0


def test_specialists_find_the_module_that_knows_a_class():
    # module j is right on class j and says class (j + 1) % K otherwise: a perfect specialist for class j
    N, K = 400, 4
    labels = RNG.integers(0, K, N)
    M = K
    logits = np.zeros((N, M, K), np.float32)
    for j in range(M):
        answer = np.where(labels == j, j, (j + 1) % K)
        logits[np.arange(N), j, answer] = 5.0
    result = am.specialist_subensembles(logits, labels, sizes=(1, 2, 9), candidates=50, seed=0)
    one = result["1"]
    assert one["candidates"] == M and one["specialist_f1"] == pytest.approx(1.0)
    assert one["specialists"] == [[c] for c in range(K)]
    assert one["random_f1"] < 0.8
    assert result["2"]["candidates"] == math.comb(4, 2)  # fewer distinct subsets than candidates: all of them
    assert result["4"]["size"] == 4 and result["4"]["candidates"] == 1  # clipped to M
    assert result["4"]["random_f1"] == result["4"]["specialist_f1"]


def test_entropies_and_table6_statistics():
    logits, _ = random_case(M=6, K=7)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    expected = (-(p * np.log(p)).sum(-1)).mean(0)
    entropies = am.module_entropies(logits)
    np.testing.assert_allclose(entropies, expected, rtol=1e-10)
    stats = am.entropy_statistics(entropies)
    assert stats == pytest.approx({"min": expected.min(), "max": expected.max(), "mean": expected.mean(),
                                   "std": expected.std()})
    uniform = am.module_entropies(np.zeros((3, 2, 7)))
    np.testing.assert_allclose(uniform, np.log(7))


def test_confusion_matrices_match_scikit_learn():
    logits, labels = random_case(M=5, K=6)
    matrices = am.module_confusion_matrices(logits, labels)
    assert matrices.shape == (5, 6, 6)
    for j in range(5):
        np.testing.assert_array_equal(matrices[j], confusion_matrix(labels, logits[:, j].argmax(-1), labels=range(6)))


def test_module_errors():
    logits = np.array([[[1, 0], [0, 1]], [[1, 0], [0, 3]]], np.float32)  # labels 0, 1
    per_module, ensemble = am.module_errors(logits, [0, 1])
    np.testing.assert_array_equal(per_module, [0.5, 0.5])
    assert ensemble == 0.0


def test_figures_are_figures():
    logits, labels = random_case(M=8)
    curves = {"a": am.module_dropping_curve(logits, labels, draws=2)}
    figures = [
        am.robustness_figure(curves, "dropped"),
        am.robustness_figure({"a": am.keep_probability_curve(logits, labels, draws=2)}, "probability"),
        am.specialists_figure({"a": am.specialist_subensembles(logits, labels, candidates=5)}),
        am.entropy_figure(am.module_entropies(logits), 5),
        am.confusion_figure(am.module_confusion_matrices(logits, labels), [0, 3, 5]),
        am.dominance_figure(RNG.random((4, 8)), RNG.random(4)),
    ]
    assert all(isinstance(f, Figure) for f in figures)
    with pytest.raises(ValueError, match=r"`protocol` must be 'dropped' or 'probability'"):
        am.robustness_figure(curves, "sideways")
    with pytest.raises(ValueError, match=r"\[examples, num_modules, K\].*Received: shape \(3, 4\)"):
        am.module_dropping_curve(np.zeros((3, 4)), np.zeros(3))


# --- registered analyses on a model -------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    model = modular_mlp(24, 2, num_classes=4, input_shape=(6,))
    x = RNG.standard_normal((120, 6)).astype("float32")
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), loss="mse")  # any weights will do
    batches = [(x[i:i + 40], y[i:i + 40]) for i in range(0, 120, 40)]
    return model, x, y, AnalysisData(test=batches, num_classes=4, class_names=["a", "b", "c", "d"])


def test_registered_analyses_and_report(tiny, tmp_path):
    model, x, y, data = tiny
    names = ["robustness", "specialists", "entropy", "confusion", "dominance"]
    assert set(names) <= set(analysis_names())
    results = run_analyses(",".join(names), model, data)
    logits = model.predict(x, verbose=0)
    assert results["robustness"].numbers["accuracy_all_modules"] == pytest.approx(
        brute_accuracy(logits, y, range(24)), abs=1e-6)
    assert results["robustness"].numbers["num_modules"] == 24
    assert results["entropy"].numbers["entropy_mean"] == pytest.approx(am.module_entropies(logits).mean(), rel=1e-5)
    assert results["dominance"].numbers["best_module_error"] == pytest.approx(
        min((logits[:, j].argmax(-1) != y).mean() for j in range(24)))
    assert len(results["confusion"].numbers["shown_modules"]) <= 4
    assert "random_f1_size1" in results["specialists"].numbers
    written = write_report(str(tmp_path / "report"), results)
    pngs = [p for p in written if p.endswith(".png")]
    assert len(pngs) == 6 and all(os.path.getsize(p) < 400_000 for p in pngs)
    with open(tmp_path / "report" / "report.json") as f:
        report = json.load(f)
    assert report["robustness"]["by_modules_kept"]["kept"][-1] == 24


def test_analyses_refuse_models_without_module_outputs():
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    data = AnalysisData(test=[(np.zeros((2, 6), "float32"), np.zeros(2, int))], num_classes=4)
    for name in ("robustness", "specialists", "entropy", "confusion", "dominance"):
        with pytest.raises(ValueError, match=r"\[batch, num_modules, K\].*Received: model"):
            run_analyses(name, plain, data)


def test_module_logits_cache_follows_the_weights(tiny):
    model, x, y, data = tiny
    first, _ = am.module_logits(model, data.test)
    weights = model.get_weights()
    model.set_weights([w * 0.5 for w in weights])
    second, _ = am.module_logits(model, data.test)
    halved = model.predict(x, verbose=0)
    model.set_weights(weights)
    assert not np.allclose(first, second)
    np.testing.assert_allclose(second, halved, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(am.module_logits(model, data.test)[0], first)


def test_module_error_history_callback(tiny):
    model, x, y, _ = tiny
    history = am.ModuleErrorHistory(x, y)
    model.fit(x, y.astype("float32")[:, None, None] * np.ones((1, 24, 4), "float32"), epochs=2, verbose=0,
              callbacks=[history])
    assert np.asarray(history.errors).shape == (2, 24)
    logits = model.predict(x, verbose=0)
    np.testing.assert_allclose(history.errors[-1], (logits.argmax(-1) != y[:, None]).mean(0))
    assert len(history.ensemble_errors) == 2
