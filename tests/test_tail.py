"""Tail patterns (Richter et al. 2022, Secs. 2-3, Fig. 3) on hand-made layer sequences."""

import numpy as np
import pytest

from branchzoo.analysis.extraction import LayerInfo, layer_positions
from branchzoo.analysis.tail import tail_pattern, tail_patterns, tail_spans

NAMES = [f"l{i}" for i in range(8)]


def test_vgg_like_tail_stagnating_probes_and_low_saturation():
    # Fig. 3a: the probes stop improving after l4, and l5-l7 are saturated far below the rest
    sat = dict(zip(NAMES, [0.5, 0.6, 0.55, 0.6, 0.5, 0.1, 0.08, 0.05]))
    acc = dict(zip(NAMES, [0.35, 0.5, 0.62, 0.7, 0.8, 0.805, 0.8, 0.802]))
    out = tail_pattern(NAMES, saturation=sat, accuracy=acc)
    # median saturation 0.5 -> threshold 0.25: l5, l6, l7 are low; probes within 0.01 of
    # the best (0.805) from l4 on, so the probe tail is l5..l7 too
    assert out["layers"] == ["l5", "l6", "l7"] and out["start"] == "l5"
    assert out["saturation_threshold"] == pytest.approx(0.25)
    assert out["fraction"] == pytest.approx(3 / 8)
    assert out["mean_saturation_tail"] == pytest.approx((0.1 + 0.08 + 0.05) / 3)
    assert out["mean_saturation_rest"] == pytest.approx((0.5 + 0.6 + 0.55 + 0.6 + 0.5) / 5)
    assert out["probe_gain_in_tail"] == pytest.approx(0.805 - 0.8)
    assert out["criteria"] == ["saturation", "probes"]


def test_densenet_like_tail_decaying_probes():
    # Fig. 3b: the last block is skipped; the probe accuracy decays after its peak at l3
    acc = dict(zip(NAMES, [0.4, 0.6, 0.7, 0.82, 0.75, 0.7, 0.66, 0.6]))
    out = tail_pattern(NAMES, accuracy=acc)
    assert out["layers"] == ["l4", "l5", "l6", "l7"]
    assert out["probe_gain_in_tail"] == pytest.approx(0.75 - 0.82)  # negative: decaying
    assert out["low_saturated"] is None


def test_both_criteria_keep_the_layers_both_put_in_the_tail():
    sat = dict(zip(NAMES, [0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1]))  # l4..l7 low
    acc = dict(zip(NAMES, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9]))  # improves up to l6
    assert tail_pattern(NAMES, saturation=sat)["layers"] == ["l4", "l5", "l6", "l7"]
    assert tail_pattern(NAMES, accuracy=acc)["layers"] == ["l7"][:0]  # one layer: no pattern
    assert tail_pattern(NAMES, saturation=sat, accuracy=acc)["layers"] == []


def test_the_saturation_tail_ends_at_the_last_layer_and_a_single_layer_is_no_pattern():
    sat = dict(zip(NAMES, [0.5, 0.05, 0.05, 0.5, 0.5, 0.5, 0.05, 0.6]))  # low run in the middle only
    assert tail_pattern(NAMES, saturation=sat)["layers"] == []
    sat["l7"] = 0.05  # l6, l7 low at the end
    assert tail_pattern(NAMES, saturation=sat)["layers"] == ["l6", "l7"]
    assert tail_pattern(NAMES, saturation=sat, min_length=3)["layers"] == []
    out = tail_pattern(NAMES, saturation=sat, relative=0.05)  # nothing below 0.05 * median
    assert out["layers"] == [] and out["length"] == 0 and out["start"] is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs `saturation`, `accuracy` or both"):
        tail_pattern(NAMES)
    with pytest.raises(ValueError, match=r"`accuracy` has no value for \['l7'\]"):
        tail_pattern(NAMES, accuracy={n: 0.5 for n in NAMES[:-1]})
    with pytest.raises(ValueError, match="at least one layer"):
        tail_pattern([], accuracy={})


def test_tail_per_pathway_and_its_span_on_the_figures_axis():
    infos = [LayerInfo("stem", "conv", "shared")]
    for b in (1, 2):
        infos += [LayerInfo(f"b{b}/path1_conv1", "conv", "path1", f"b{b}"),
                  LayerInfo(f"b{b}/path2_conv1", "conv", "path2", f"b{b}"),
                  LayerInfo(f"b{b}/path2_conv2", "conv", "path2", f"b{b}"),
                  LayerInfo(f"b{b}/sum", "sum", "main", f"b{b}")]
    acc = {i.name: 0.5 for i in infos}
    acc.update({"stem": 0.3, "b1/path1_conv1": 0.6, "b1/path2_conv1": 0.4, "b1/path2_conv2": 0.7,
                "b1/sum": 0.8, "b2/path1_conv1": 0.7, "b2/path2_conv1": 0.6, "b2/path2_conv2": 0.55,
                "b2/sum": 0.6})
    tails = tail_patterns(infos, accuracy=acc)
    # path1's sequence: stem, b1/path1_conv1, b1/sum (peak 0.8), b2/path1_conv1, b2/sum
    assert tails["path1"]["layers"] == ["b2/path1_conv1", "b2/sum"]
    assert tails["path2"]["layers"] == ["b2/path2_conv1", "b2/path2_conv2", "b2/sum"]
    positions = layer_positions(infos)
    spans = tail_spans(tails, infos)
    assert spans["tail (path2)"] == (positions["b2/path2_conv1"] - 0.5, positions["b2/sum"] + 0.5)
    assert np.isfinite(spans["tail (path1)"]).all()
