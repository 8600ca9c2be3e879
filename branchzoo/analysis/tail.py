"""Tail patterns: the run of unproductive layers at the end of a network (or of a pathway).

Richter et al. (2022), Sec. 2-3: "layers that are low saturated relative
to the rest of the network tend to be unproductive. A sequence of
unproductive layers is referred to as a tail pattern", and in Fig. 3 the
probe accuracy stops improving (VGG16) or decays (DenseNet18, ResNet34)
over the tail.

The paper gives no numeric rule; this module's (our choice, stated in each
report) reads both signals over a sequence of layers in forward order:

- saturation: a layer is low saturated when its saturation is below
  ``relative`` (default 0.5) times the median saturation of the sequence;
  the saturation tail is the longest run of low-saturated layers that ends
  at the last layer;
- probes: the probe accuracy stops improving at the first layer whose
  accuracy comes within ``tolerance`` (default 0.01) of the sequence's best;
  the probe tail is every layer after it;
- with both, the tail is the layers both criteria put in it (the shorter
  suffix). A tail of fewer than ``min_length`` (2) layers is no pattern.

    >>> names = ["c1", "c2", "c3", "c4", "c5"]
    >>> sat = {"c1": 0.6, "c2": 0.7, "c3": 0.65, "c4": 0.1, "c5": 0.08}
    >>> acc = {"c1": 0.4, "c2": 0.6, "c3": 0.8, "c4": 0.805, "c5": 0.79}
    >>> tail_pattern(names, saturation=sat, accuracy=acc)["layers"]
    ['c4', 'c5']
"""

import numpy as np

from branchzoo.analysis.extraction import curves, layer_positions


def saturation_tail(names, saturation, relative=0.5):
    """The longest run of layers ending at the last one whose saturation is below
    ``relative`` times the median saturation of `names`; returns ``(tail, threshold)``."""
    values = np.array([float(saturation[n]) for n in names])
    threshold = relative * float(np.median(values))
    tail = []
    for name, value in zip(reversed(names), reversed(values)):
        if not value < threshold:
            break
        tail.insert(0, name)
    return tail, threshold


def probe_tail(names, accuracy, tolerance=0.01):
    """The layers after the first one whose probe accuracy is within `tolerance` of the best."""
    values = [float(accuracy[n]) for n in names]
    best = max(values)
    peak = next(i for i, v in enumerate(values) if v >= best - tolerance)
    return list(names[peak + 1:])


def tail_pattern(names, saturation=None, accuracy=None, relative=0.5, tolerance=0.01, min_length=2):
    """The tail pattern of one sequence of layers (forward order) by saturation and/or probes.

    Args:
        names: layer names in forward order (one pathway's sequence, or the
            whole network's).
        saturation: ``{name: saturation}`` or None.
        accuracy: ``{name: probe test accuracy}`` or None.
        relative: low saturation = below ``relative * median`` of the sequence.
        tolerance: probe accuracy within this of the best counts as not
            improving any more.
        min_length: fewest layers that make a pattern.

    Returns:
        A dict: ``layers`` (the tail, forward order; [] when there is no
        pattern), ``start`` (its first layer or None), ``length``,
        ``fraction`` (of the sequence), ``criteria`` (which signals were
        used), ``saturation_threshold``, ``low_saturated`` ({name: bool}),
        ``mean_saturation_tail`` / ``mean_saturation_rest``,
        ``probe_gain_in_tail`` (best accuracy in the tail minus the accuracy
        of the layer before it: <= tolerance where probes stop improving,
        negative where they decay) and the rule's ``relative``,
        ``tolerance`` and ``min_length``.
    """
    names = list(names)
    if not names:
        raise ValueError("`names` must list at least one layer. Received: []")
    if saturation is None and accuracy is None:
        raise ValueError("`tail_pattern` needs `saturation`, `accuracy` or both. Received neither.")
    for what, values in (("saturation", saturation), ("accuracy", accuracy)):
        missing = [n for n in names if values is not None and n not in values]
        if missing:
            raise ValueError(f"`{what}` has no value for {missing[:3]} (of {len(missing)} layers).")
    candidates, criteria = [], []
    threshold = low = None
    if saturation is not None:
        sat_tail, threshold = saturation_tail(names, saturation, relative)
        low = {n: bool(float(saturation[n]) < threshold) for n in names}
        candidates.append(sat_tail)
        criteria.append("saturation")
    if accuracy is not None:
        candidates.append(probe_tail(names, accuracy, tolerance))
        criteria.append("probes")
    tail = min(candidates, key=len)
    if len(tail) < min_length:
        tail = []
    rest = [n for n in names if n not in tail]
    out = {
        "layers": tail,
        "start": tail[0] if tail else None,
        "length": len(tail),
        "fraction": len(tail) / len(names),
        "criteria": criteria,
        "relative": relative,
        "tolerance": tolerance,
        "min_length": min_length,
        "saturation_threshold": threshold,
        "low_saturated": low,
        "mean_saturation_tail": None,
        "mean_saturation_rest": None,
        "probe_gain_in_tail": None,
    }
    if saturation is not None and tail:
        out["mean_saturation_tail"] = float(np.mean([saturation[n] for n in tail]))
        out["mean_saturation_rest"] = float(np.mean([saturation[n] for n in rest])) if rest else None
    if accuracy is not None and tail:
        before = names.index(tail[0]) - 1
        if before >= 0:
            out["probe_gain_in_tail"] = max(accuracy[n] for n in tail) - accuracy[names[before]]
    return out


def tail_patterns(infos, saturation=None, accuracy=None, **kwargs):
    """`tail_pattern` of every pathway's sequence (`extraction.curves`): ``{pathway: result}``."""
    sequences = curves(infos)
    return {p: tail_pattern(names, saturation, accuracy, **kwargs) for p, names in sequences.items()}


def tail_spans(patterns, infos):
    """``{label: (x0, x1)}``: each pathway's tail on the figures' layer axis (for shading)."""
    positions = layer_positions(infos)
    spans = {}
    for pathway, result in patterns.items():
        if result["layers"]:
            xs = [positions[n] for n in result["layers"]]
            label = "tail" if len(patterns) == 1 else f"tail ({pathway})"
            spans[label] = (min(xs) - 0.5, max(xs) + 0.5)
    return spans
