"""Connectivity figure (Fig. 2 of Ahmed & Torresani 2017), gate histograms and the "connectivity" analysis."""

import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from branchzoo.analysis import connectivity_figure, gate_histogram_figure
from branchzoo.analysis.gated import ACTIVE_COLOR, SUPERFLUOUS_COLOR
from branchzoo.analysis.registry import AnalysisData, get_analysis, run_analyses, write_report
from branchzoo.layers import GatedConnect
from branchzoo.models import mpnet, resnext_cifar

TINY = dict(depth=20, width=2, cardinality=4, stage_widths=(8, 8, 8), num_classes=3, input_shape=(8, 8, 3))


def _patches(fig, kind):
    return [p for p in fig.axes[0].patches if isinstance(p, kind)]


def _colour(patch):
    import matplotlib.colors as mcolors

    return mcolors.to_hex(patch.get_facecolor())


def test_connectivity_figure_draws_blocks_arrows_and_greys_superfluous_blocks():
    # 3 modules of 3 blocks. Module 3 reads blocks 0, 2 of module 2 (block 1: superfluous);
    # module 2's blocks 0, 2 read block 0 of module 1 and block 1 reads block 2, which thus only
    # feeds a superfluous block: module 1 keeps block 0 only.
    masks = [np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]]), np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1]])]
    fig = connectivity_figure(masks)
    assert isinstance(fig, Figure)
    blocks = _patches(fig, Rectangle)
    blocks = [b for b in blocks if b.get_width() < 1]  # the axes background is a Rectangle too
    assert len(blocks) == 9
    colours = [_colour(b) for b in blocks]
    assert colours.count(SUPERFLUOUS_COLOR) == 3 and colours.count(ACTIVE_COLOR) == 6
    # arrows only between active blocks: module1 -> module2: (0->0), (0->2); module2 -> module3: 4
    assert len(_patches(fig, FancyArrowPatch)) == 2 + 4
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["module 1 (1/3)", "module 2 (2/3)", "module 3 (3/3)"]


def test_connectivity_figure_rejects_inconsistent_masks():
    with pytest.raises(ValueError, match=r"`masks\[1\]` must have one column per block .*\(3\). Received: masks\[1\].shape=\(2, 2\)"):
        connectivity_figure([np.ones((3, 2)), np.ones((2, 2))])
    with pytest.raises(ValueError, match="at least one gate"):
        connectivity_figure([])


def test_gate_histogram_counts():
    values = [np.array([[0.0, 0.05, 1.0, 1.0]]), np.linspace(0, 1, 11)]
    fig = gate_histogram_figure(values, names=["a", "b"], bins=10)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert len(heights) == 10 and heights[0] == 2 and heights[-1] == 2 and sum(heights) == 4
    assert sum(p.get_height() for p in fig.axes[1].patches) == 11
    with pytest.raises(ValueError, match="one entry per gate layer"):
        gate_histogram_figure(values, names=["a"])


def test_connectivity_analysis_on_a_gated_model(tmp_path):
    model = resnext_cifar(fan_in=1, connectivity="learned", seed=0, **TINY)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, GatedConnect):
            layer.gates.assign(rng.uniform(size=(4, 4)).astype("float32"))
    result = get_analysis("connectivity")(model, AnalysisData())
    numbers = result.numbers
    masks = [np.array(m) for m in numbers["connections"]]
    assert len(masks) == 5 and all(m.sum(axis=1).tolist() == [1] * 4 for m in masks)
    assert numbers["superfluous_blocks"] == 6 * 4 - sum(numbers["blocks_test"])
    assert numbers["test_params"] < numbers["train_params"]
    gates = np.concatenate([l.gate_values().ravel() for l in model.layers if isinstance(l, GatedConnect)])
    assert numbers["gate_mean"] == pytest.approx(gates.mean())
    assert set(result.figures) == {"connectivity", "gate_histogram"}
    paths = write_report(str(tmp_path), run_analyses("connectivity", model, AnalysisData()))
    assert sorted(p.split("/")[-1] for p in paths) == [
        "connectivity-connectivity.png", "connectivity-gate_histogram.png", "report.json"]
    assert json.load(open(tmp_path / "report.json"))["connectivity"]["blocks_test"] == numbers["blocks_test"]


def test_ties_in_the_top_k_choice_are_counted():
    from branchzoo.analysis.gated import top_k_ties

    gates = np.array([
        [1.0, 1.0, 1.0, 0.2, 0.0],  # K=2: three gates at 1 compete for two places -> tie
        [1.0, 1.0, 0.5, 0.5, 0.0],  # the top 2 are the two 1s: no tie (0.5s are 3rd and 4th)
        [0.9, 0.7, 0.7, 0.1, 0.1],  # 2nd and 3rd equal -> tie
        [0.3, 0.2, 0.1, 0.0, 0.0],  # 0.2 > 0.1: no tie
    ])
    assert top_k_ties(gates, 2) == 2
    assert top_k_ties(gates, 3) == 1  # row 0: 1 > 0.2; row 1: 0.5 == 0.5; row 2: 0.7 > 0.1; row 3: 0.1 > 0.0
    assert top_k_ties(gates, 5) == 0  # every input is read: nothing to choose
    assert top_k_ties(np.array([[0.50, 0.49, 0.2]]), 1, tolerance=0.02) == 1
    model = resnext_cifar(fan_in=2, connectivity="learned", seed=0, **TINY)
    for layer in model.layers:
        if isinstance(layer, GatedConnect):
            layer.gates.assign(np.array([[1.0, 1.0, 1.0, 0.0]] * 2 + [[0.9, 0.5, 0.2, 0.1]] * 2, "float32"))
    numbers = get_analysis("connectivity")(model, AnalysisData()).numbers
    # 5 gate layers x 4 blocks; in each, the first two rows tie (three gates at 1 for two places)
    assert (numbers["top_k_choices"], numbers["top_k_ties"]) == (20, 10)
    assert numbers["gates_at_1"] == pytest.approx(6 / 16)


def test_random_connectivity_has_no_histogram():
    model = resnext_cifar(fan_in=2, connectivity="random", seed=0, **TINY)
    result = get_analysis("connectivity")(model, AnalysisData())
    assert set(result.figures) == {"connectivity"} and "gate_mean" not in result.numbers


@pytest.mark.parametrize("build", [
    lambda: resnext_cifar(**TINY),
    lambda: mpnet([[1, 3]], blocks_per_stage=1, widths=(4, 4, 4, 4)),
])
def test_connectivity_analysis_needs_gates(build):
    with pytest.raises(ValueError, match="has no GatedConnect layer"):
        get_analysis("connectivity")(build(), AnalysisData())
