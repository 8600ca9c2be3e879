"""Saturation: the share of a layer's channels its outputs actually use.

After Richter et al. (2020), "Feature space saturation during training" (the
delve library), used by 003_4bdb2e82324dbf00.txt, Sec. 2.2 and Fig. 3, with
delve's rule as ../shared/docs/SPEC-NOTES.md (section 3) states it:

- conv outputs ``[batch, H, W, C]`` larger than 4x4 are first average-pooled
  to 4x4 (adaptive pooling); every position is then one sample of C
  channels (samples = batch * H * W);
- the channel covariance ``E[x x^T] - mu mu^T`` is accumulated in float64 as
  sums (``sum x^T x``, ``sum x``, ``n``) over batches;
- its eigenvalues, sorted descending and clamped at 0, give cumulative
  ratios ``p_k = (l_1 + ... + l_k) / sum l``; the intrinsic dimension is
  the number of ``p_k < 0.99`` (at least 1), and saturation = intrinsic
  dimension / C. (That is one less than "components needed for 99%";
  delve's rule is kept so numbers compare with the paper.)

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((500, 4)) * [3.0, 1.0, 0.0, 0.0]
    >>> saturation(x)
    0.25
"""

import numpy as np

from branchzoo._validation import check_int
from branchzoo.analysis.registry import AnalysisResult, register_analysis


def adaptive_average_pool(maps, size=4):
    """Adaptive average pooling of channels-last maps ``[n, H, W, C]`` to ``[n, size, size, C]``.

    Output cell ``i`` averages input rows ``floor(i H / size)`` to
    ``ceil((i + 1) H / size) - 1`` (PyTorch's ``adaptive_avg_pool2d``
    windows), likewise for columns. Maps no larger than `size` on both sides
    are returned unchanged.
    """
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ValueError(f"`maps` must be [batch, height, width, channels]. Received: shape {maps.shape}")
    size = check_int(size, "size", minimum=1)
    h, w = maps.shape[1], maps.shape[2]
    if h <= size and w <= size:
        return maps
    out_h, out_w = min(h, size), min(w, size)
    if h % out_h == 0 and w % out_w == 0:
        n, _, _, c = maps.shape
        return maps.reshape(n, out_h, h // out_h, out_w, w // out_w, c).mean(axis=(2, 4))
    rows = [(i * h // out_h, -(-(i + 1) * h // out_h)) for i in range(out_h)]
    cols = [(j * w // out_w, -(-(j + 1) * w // out_w)) for j in range(out_w)]
    return np.stack(
        [np.stack([maps[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in cols], axis=1) for r0, r1 in rows],
        axis=1,
    )


def intrinsic_dimension(covariance, threshold=0.99):
    """delve's intrinsic dimension of a covariance matrix [C, C].

    The count of cumulative eigenvalue ratios below `threshold` (eigenvalues
    sorted descending, negatives clamped to 0), at least 1. A zero matrix
    (a constant layer) has intrinsic dimension 1.
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    if not 0 < threshold <= 1:
        raise ValueError(f"`threshold` must be in (0, 1]. Received: threshold={threshold!r}")
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0.0, None)
    total = eigenvalues.sum()
    if not total > 0:
        return 1
    ratios = np.cumsum(eigenvalues) / total
    return max(int(np.count_nonzero(ratios < threshold)), 1)


class SaturationAccumulator:
    """Streams batches of one layer's outputs into delve's saturation.

    Args:
        pool_size: maps larger than this (on either side) are average-pooled
            to it first (delve and the paper: 4).
        threshold: explained-variance threshold (0.99).

    Example:

    >>> import numpy as np
    >>> acc = SaturationAccumulator()
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(3):
    ...     acc.update(rng.standard_normal((8, 16, 16, 5)))
    >>> acc.samples, acc.channels
    (384, 5)
    """

    def __init__(self, pool_size=4, threshold=0.99):
        self.pool_size = check_int(pool_size, "pool_size", minimum=1)
        if not 0 < threshold <= 1:
            raise ValueError(f"`threshold` must be in (0, 1]. Received: threshold={threshold!r}")
        self.threshold = float(threshold)
        self.samples = 0
        self.channels = None
        self._sum = None
        self._sum_of_products = None

    def update(self, features):
        """Adds a batch: ``[batch, H, W, C]`` maps or ``[batch, C]`` vectors."""
        features = np.asarray(features)
        if features.ndim == 4:
            features = adaptive_average_pool(features, self.pool_size)
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


def saturation(features, pool_size=4, threshold=0.99):
    """delve's saturation of one layer's outputs, in one shot.

    After Richter et al. (2020), used in 003_4bdb2e82324dbf00.txt, Sec. 2.2
    (Fig. 3); the rule of ../shared/docs/SPEC-NOTES.md, section 3.

    Args:
        features: ``[n, H, W, C]`` maps (pooled to `pool_size` when larger)
            or ``[n, C]`` vectors.
        pool_size: see `SaturationAccumulator`.
        threshold: explained-variance threshold (0.99).

    Returns:
        A float in (0, 1]: intrinsic dimension / C.

    Example:

    >>> import numpy as np
    >>> saturation(np.random.default_rng(0).standard_normal((100, 10)))
    0.9
    """
    acc = SaturationAccumulator(pool_size=pool_size, threshold=threshold)
    acc.update(features)
    return acc.result()


def layer_saturation(model, data, layers=None, max_examples=None, pool_size=4, threshold=0.99,
                     batch_size=128):
    """Saturation of every analysed output of `model`, streamed over `data`.

    After 003_4bdb2e82324dbf00.txt, Sec. 3 (Fig. 3): every conv output and
    pathway sum (see `branchzoo.analysis.extraction.analysis_layers`), in
    inference mode, each layer's covariance accumulated batch by batch.

    Args:
        model: a functional `keras.Model`.
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches.
        layers: None (all) or names / fnmatch patterns.
        max_examples: use the first this many examples (None: all).
        pool_size, threshold: as in `saturation`.
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
    from branchzoo.analysis import extraction

    infos = extraction.select_layers(model, layers)
    names = [info.name for info in infos]
    accumulators = {n: SaturationAccumulator(pool_size, threshold) for n in names}
    seen = 0
    for features, y, _ in extraction.iterate_features(
        model, data, names, batch_size=batch_size, pool_size=pool_size,
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
    from branchzoo.analysis import extraction, plots
    from branchzoo.analysis.probes import pathway_means

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
        **pathway_means(infos, values, "mean_saturation"),
        "samples": out["samples"],
        "layers": [i.name for i in infos],
        "pathway": {i.name: i.pathway for i in infos},
        "position": extraction.layer_positions(infos),
        "saturation": values,
        "intrinsic_dimension": out["intrinsic_dimension"],
        "channels": out["channels"],
    }
    figure = plots.plot_saturation(values, infos, extraction.pathway_names(model),
                                   title=f"saturation (delve), {out['samples']} {split} examples")
    return AnalysisResult(numbers=numbers, figures={"layers": figure})


saturation_analysis.default_every = 1
