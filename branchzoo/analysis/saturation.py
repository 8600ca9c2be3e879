"""Saturation: the share of a layer's channels its outputs actually use.

After Richter et al. (2020), "Feature space saturation during training" (the
delve library), used by Richter et al. (2022), Sec. 2.2 and Fig. 3, with
delve's rule (delve-team/delve, ``delve/metrics.py``,
``compute_intrinsic_dimensionality``):

- conv outputs ``[batch, H, W, C]``: every spatial position of every image
  is one sample of C channels (samples = batch * H * W), with no pooling
  first (delve's default "channelwise" mode; the 4x4 pooling belongs to
  the probes);
- the channel covariance ``E[x x^T] - mu mu^T`` is accumulated in float64 as
  sums (``sum x^T x``, ``sum x``, ``n``) over batches;
- its eigenvalues, sorted descending and clamped at 0, give cumulative
  ratios ``p_k = (l_1 + ... + l_k) / sum l``; the components with
  ``p_k < 0.99`` are kept, at least one; when ``0.99`` minus the last kept
  ratio exceeds 0.02, one more is counted. That count is the intrinsic
  dimension, and saturation = intrinsic dimension / C.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((500, 4)) * [3.0, 1.0, 0.0, 0.0]
    >>> saturation(x)
    0.5
"""

import numpy as np

from branchzoo.analysis import extraction, plots, tail
from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.precision import to_numpy


def intrinsic_dimension(covariance, threshold=0.99, margin=0.02):
    """delve's intrinsic dimension of a covariance matrix [C, C].

    Eigenvalues sorted descending (negatives clamped to 0) give the
    cumulative ratios ``p_k``; the components with ``p_k < threshold`` are
    kept (at least one); if ``threshold - p_last > margin`` for the last
    kept one, one more is counted. A zero matrix (a constant layer) has
    intrinsic dimension 1.

    Examples:

    >>> intrinsic_dimension(np.diag([9.0, 1.0, 0.0, 0.0]))   # p = 0.9, 1, 1, 1: one kept, +1
    2
    >>> intrinsic_dimension(np.eye(10))                       # p = 0.1 .. 0.9 kept, +1
    10
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    if not 0 < threshold <= 1:
        raise ValueError(f"`threshold` must be in (0, 1]. Received: threshold={threshold!r}")
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0.0, None)
    total = eigenvalues.sum()
    if not total > 0:
        return 1
    ratios = np.cumsum(eigenvalues) / total
    kept = int(np.count_nonzero(ratios < threshold))
    if kept == 0:
        return 1
    if threshold - ratios[kept - 1] > margin:
        kept += 1
    return min(kept, len(eigenvalues))


class SaturationAccumulator:
    """Streams batches of one layer's outputs into delve's saturation.

    Args:
        threshold: explained-variance threshold (0.99).

    Example:

    >>> import numpy as np
    >>> acc = SaturationAccumulator()
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(3):
    ...     acc.update(rng.standard_normal((8, 16, 16, 5)))
    >>> acc.samples, acc.channels           # every position of every map is a sample
    (6144, 5)
    """

    def __init__(self, threshold=0.99):
        if not 0 < threshold <= 1:
            raise ValueError(f"`threshold` must be in (0, 1]. Received: threshold={threshold!r}")
        self.threshold = float(threshold)
        self.samples = 0
        self.channels = None
        self._sum = None
        self._sum_of_products = None

    def update(self, features):
        """Adds a batch: ``[batch, H, W, C]`` maps (each position a sample) or ``[batch, C]`` vectors."""
        features = to_numpy(features)
        if features.ndim == 4:
            features = features.reshape(-1, features.shape[-1])
        elif features.ndim != 2:
            raise ValueError(
                "`features` must be [batch, height, width, channels] or [batch, channels]. "
                f"Received: shape {features.shape}"
            )
        if self.channels is None:
            self.channels = features.shape[1]
            self._sum = np.zeros(self.channels)
            self._sum_of_products = np.zeros((self.channels, self.channels))
        elif features.shape[1] != self.channels:
            raise ValueError(
                f"Every batch must have {self.channels} channels. Received: {features.shape[1]}"
            )
        features = features.astype(np.float64)
        self._sum += features.sum(axis=0)
        self._sum_of_products += features.T @ features
        self.samples += features.shape[0]

    def covariance(self):
        """``E[x x^T] - mu mu^T`` over every sample added so far (float64)."""
        if not self.samples:
            raise ValueError("No samples yet: call `update` first.")
        mean = self._sum / self.samples
        return self._sum_of_products / self.samples - np.outer(mean, mean)

    def intrinsic_dimension(self):
        return intrinsic_dimension(self.covariance(), self.threshold)

    def result(self):
        """Saturation: intrinsic dimension / channels."""
        return self.intrinsic_dimension() / self.channels


def saturation(features, threshold=0.99):
    """delve's saturation of one layer's outputs, in one shot.

    After Richter et al. (2020), used in Richter et al. (2022), Sec. 2.2
    (Fig. 3), with delve's rule (`intrinsic_dimension`).

    Args:
        features: ``[n, H, W, C]`` maps (every position a sample) or
            ``[n, C]`` vectors.
        threshold: explained-variance threshold (0.99).

    Returns:
        A float in (0, 1]: intrinsic dimension / C.

    Example:

    >>> import numpy as np
    >>> saturation(np.random.default_rng(0).standard_normal((100, 10)))
    1.0
    """
    acc = SaturationAccumulator(threshold=threshold)
    acc.update(features)
    return acc.result()


def layer_saturation(model, data, layers=None, max_examples=None, threshold=0.99, batch_size=128):
    """Saturation of every analysed output of `model`, streamed over `data`.

    After Richter et al. (2022), Sec. 3 (Fig. 3): every conv output and
    pathway sum (see `branchzoo.analysis.extraction.analysis_layers`), in
    inference mode, each layer's covariance accumulated batch by batch over
    every spatial position (no pooling).

    Args:
        model: a functional `keras.Model`.
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches.
        layers: None (all) or names / fnmatch patterns.
        max_examples: use the first this many examples (None: all).
        threshold: as in `saturation`.
        batch_size: for arrays.

    Returns:
        dict with ``layers`` (LayerInfo list), ``saturation``,
        ``intrinsic_dimension`` and ``channels`` (each ``{name: value}``) and
        ``samples`` (examples seen).

    Example:

    >>> import numpy as np
    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3]], blocks_per_stage=1, widths=(4, 4, 4, 4), input_shape=(8, 8, 3))
    >>> x = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype("float32")
    >>> out = layer_saturation(m, (x, np.zeros(16)), layers="*/sum")
    >>> sorted(out["channels"].values())
    [4, 4, 4, 4]
    """
    infos = extraction.select_layers(model, layers)
    names = [info.name for info in infos]
    accumulators = {n: SaturationAccumulator(threshold) for n in names}
    seen = 0
    for features, y, _ in extraction.iterate_features(
        model, data, names, batch_size=batch_size, pool_size=None,
        max_examples=max_examples, include_output=False,
    ):
        for n in names:
            accumulators[n].update(features[n])
        seen += len(y)
    if not seen:
        raise ValueError("`data` yielded no examples.")
    return {
        "layers": infos,
        "saturation": {n: a.result() for n, a in accumulators.items()},
        "intrinsic_dimension": {n: a.intrinsic_dimension() for n, a in accumulators.items()},
        "channels": {n: a.channels for n, a in accumulators.items()},
        "samples": seen,
    }


@register_analysis("saturation", "delve saturation of every conv output and pathway sum (003, Fig. 3)")
def saturation_analysis(model, data, layers=None, max_examples=None, split="test", **kwargs):
    """Saturation per layer and pathway with its figure; reads ``data.test`` (or ``data.train``).

    Keyword arguments go to `layer_saturation`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    source = getattr(data, split)
    if source is None:
        raise ValueError(f"The 'saturation' analysis needs `data.{split}`. Received: data.{split}=None")
    out = layer_saturation(model, source, layers=layers, max_examples=max_examples, **kwargs)
    infos = out["layers"]
    values = out["saturation"]
    numbers = {
        "mean_saturation": float(np.mean(list(values.values()))),
        **extraction.pathway_means(infos, values, "mean_saturation"),
        "samples": out["samples"],
        "layers": [i.name for i in infos],
        "pathway": {i.name: i.pathway for i in infos},
        "position": extraction.layer_positions(infos),
        "saturation": values,
        "intrinsic_dimension": out["intrinsic_dimension"],
        "channels": out["channels"],
    }
    tails = tail.tail_patterns(infos, saturation=values)
    numbers["tail"] = tails
    numbers["tail_length"] = max(t["length"] for t in tails.values())
    figure = plots.plot_saturation(values, infos, extraction.pathway_names(model),
                                   title=f"saturation (delve), {out['samples']} {split} examples",
                                   spans=tail.tail_spans(tails, infos))
    return AnalysisResult(numbers=numbers, figures={"layers": figure})


saturation_analysis.default_every = 1
