"""Centered kernel alignment (CKA) between two sets of activations.

After Kornblith et al. (2019), "Similarity of neural network representations
revisited", as used by Richter et al. (2022), Sec. 4.2.1 (Figs. 8 and 9)
and its reference code:

- linear kernel ``K = X X^T``, or RBF ``K_ij = exp(-|x_i - x_j|^2 / (2 s^2))``
  with ``s^2 = threshold^2 * median squared distance`` (the median over all
  n^2 pairs, diagonal included, as the reference code takes it);
- biased estimator: ``HSIC = tr(K H L H) / (n - 1)^2`` with the centring
  matrix ``H``; debiased: the unbiased HSIC estimator (Song et al. 2012)
  computed through U-centred Gram matrices (Szekely & Rizzo 2014);
- ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

For the linear kernel the n x n Gram matrices are never formed when the
features are narrower than the batch: ``|X^T Y|_F^2 = <K, L>``, and the
debiased correction needs only the rows' squared norms. The same statistics
are sums over examples, so `CKAAccumulator` builds them batch by batch for
activations that do not fit in memory and gives the same number as `cka`.

All arithmetic is float64.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((100, 8))
    >>> round(cka(x, 2 * x @ np.linalg.qr(np.ones((8, 8)) + np.eye(8))[0]), 6)
    1.0
"""

import numpy as np

from branchzoo.analysis import extraction, plots
from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.precision import to_numpy

KERNELS = ("linear", "rbf")


def _check_kernel(kernel):
    if kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {KERNELS}. Received: kernel={kernel!r}")


def _as_matrix(x, name):
    x = to_numpy(x)
    if x.ndim < 2:
        raise ValueError(
            f"`{name}` must be a feature matrix [examples, features] (or [examples, ...], "
            f"flattened per example). Received: {name} with shape {x.shape}"
        )
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    return x


def _check_pair(x, y, debiased):
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "`x` and `y` must hold the same examples (same first dimension). "
            f"Received: x with shape {x.shape}, y with shape {y.shape}"
        )
    minimum = 4 if debiased else 2
    if x.shape[0] < minimum:
        raise ValueError(
            f"CKA{' (debiased)' if debiased else ''} needs at least {minimum} examples. "
            f"Received: {x.shape[0]}"
        )
    return x, y


def _check_threshold(threshold):
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"`threshold` must be a positive number. Received: threshold={threshold!r}")
    return float(threshold)


# --- Gram-matrix route ---------------------------------------------------------


def gram_linear(x):
    """The linear-kernel Gram matrix ``x x^T`` (float64) of features [n, d]."""
    x = _as_matrix(x, "x").astype(np.float64, copy=False)
    return x @ x.T


def gram_rbf(x, threshold=1.0):
    """The RBF Gram matrix of features [n, d] (float64).

    ``exp(-|x_i - x_j|^2 / (2 threshold^2 m))`` with ``m`` the median of the
    n^2 squared distances (diagonal included), after Kornblith et al. (2019).
    """
    threshold = _check_threshold(threshold)
    x = _as_matrix(x, "x").astype(np.float64, copy=False)
    dots = x @ x.T
    norms = np.diag(dots)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2.0 * dots, 0.0)
    median = np.median(sq)
    if median <= 0:
        # All examples coincide: every kernel value is 1 (a constant kernel).
        return np.ones_like(sq)
    return np.exp(-sq / (2.0 * threshold**2 * median))


def center_gram(gram, debiased=False):
    """Centres a symmetric Gram matrix (a float64 copy).

    Biased: ``H K H``. Debiased: U-centring (Szekely & Rizzo 2014): zero
    diagonal, ``K_ij - r_i - r_j + t`` off the diagonal with
    ``r_i = sum_l K_il / (n - 2)`` and ``t = sum K / ((n - 1)(n - 2))``; the
    inner product of two U-centred matrices is ``n (n - 3)`` times the
    unbiased HSIC estimator.
    """
    gram = np.array(gram, dtype=np.float64, copy=True)
    n = gram.shape[0]
    if gram.ndim != 2 or gram.shape[1] != n:
        raise ValueError(f"`gram` must be a square matrix. Received: shape {gram.shape}")
    if debiased:
        np.fill_diagonal(gram, 0.0)
        row = gram.sum(axis=0) / (n - 2)
        row -= row.sum() / (2 * (n - 1))
        gram -= row[:, None]
        gram -= row[None, :]
        np.fill_diagonal(gram, 0.0)
    else:
        row = gram.mean(axis=0)
        row -= row.mean() / 2
        gram -= row[:, None]
        gram -= row[None, :]
    return gram


def cka_from_grams(gram_x, gram_y, debiased=False):
    """CKA of two Gram matrices [n, n] (centred here)."""
    kx = center_gram(gram_x, debiased)
    ky = center_gram(gram_y, debiased)
    return _normalised(np.vdot(kx, ky), np.vdot(kx, kx), np.vdot(ky, ky))


def _normalised(xy, xx, yy):
    denominator = np.sqrt(xx) * np.sqrt(yy)
    if not denominator > 0:
        # A constant representation has no variance to align with.
        return float("nan")
    return float(xy / denominator)


# --- Feature-space route for the linear kernel --------------------------------


def _linear_terms(xtx_fro2, yty_fro2, xty_fro2, rx_dot_ry, rx_dot_rx, ry_dot_ry, sum_rx, sum_ry, n, debiased):
    """(HSIC_xy, HSIC_xx, HSIC_yy) up to one common factor, from centred statistics.

    ``r`` are the rows' squared norms of the centred features; with them the
    U-centred inner product is ``|X^T Y|^2 - n/(n-2) r_x.r_y + sum r_x sum r_y /
    ((n-1)(n-2))`` (the diagonal of K is r and its total sum is 0).
    """
    if not debiased:
        return xty_fro2, xtx_fro2, yty_fro2
    a = n / (n - 2.0)
    b = 1.0 / ((n - 1.0) * (n - 2.0))
    return (
        xty_fro2 - a * rx_dot_ry + b * sum_rx * sum_ry,
        xtx_fro2 - a * rx_dot_rx + b * sum_rx * sum_rx,
        yty_fro2 - a * ry_dot_ry + b * sum_ry * sum_ry,
    )


def _linear_cka_features(x, y, debiased):
    xc = x.astype(np.float64)  # a copy: centred in place below
    yc = y.astype(np.float64)
    xc -= xc.mean(axis=0)
    yc -= yc.mean(axis=0)
    xtx = xc.T @ xc
    yty = yc.T @ yc
    xty = xc.T @ yc
    rx = np.einsum("ij,ij->i", xc, xc)
    ry = np.einsum("ij,ij->i", yc, yc)
    xy, xx, yy = _linear_terms(
        np.vdot(xtx, xtx), np.vdot(yty, yty), np.vdot(xty, xty),
        rx @ ry, rx @ rx, ry @ ry, rx.sum(), ry.sum(), x.shape[0], debiased,
    )
    return _normalised(xy, xx, yy)


def _feature_route_is_cheaper(n, d1, d2):
    # d x d products (n d1 d2 + n (d1^2 + d2^2) / 2 multiply-adds) against n x n Gram
    # matrices (n^2 (d1 + d2) / 2, plus about 8 passes over n x n arrays to centre them).
    return d1 * d2 + (d1 * d1 + d2 * d2) / 2 <= n * (d1 + d2) / 2 + 8 * n


def cka(x, y, kernel="linear", threshold=1.0, debiased=False):
    """Centered kernel alignment of two representations of the same examples.

    After Kornblith et al. (2019), used in Richter et al. (2022), Sec. 4.2.1.

    Args:
        x: features [n, d1] (or [n, ...], flattened per example).
        y: features [n, d2] of the same n examples.
        kernel: ``"linear"`` or ``"rbf"``.
        threshold: RBF bandwidth as a fraction of the median distance:
            ``bandwidth^2 = threshold^2 * median squared distance``.
        debiased: use the unbiased HSIC estimator (Song et al. 2012) instead
            of the biased one; needs n >= 4.

    Returns:
        A float in [0, 1] (debiased: may be slightly negative), NaN when a
        representation is constant.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((50, 6))
    >>> round(cka(x, 3.0 * x, kernel="rbf"), 6)
    1.0
    """
    _check_kernel(kernel)
    x, y = _check_pair(x, y, debiased)
    if kernel == "linear":
        if _feature_route_is_cheaper(x.shape[0], x.shape[1], y.shape[1]):
            return _linear_cka_features(x, y, debiased)
        return cka_from_grams(gram_linear(x), gram_linear(y), debiased)
    return cka_from_grams(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased)


class CKAAccumulator:
    """Linear CKA accumulated over minibatches: the same number as `cka` on all rows.

    Keeps float64 sums over examples (``X^T X``, ``Y^T Y``, ``X^T Y``, the
    column sums and, for the debiased estimator, the moments of the rows'
    squared norms) from which the centred statistics of the whole set follow
    exactly. Features are shifted by the first batch's mean before summing
    (the centred statistics do not change; the float64 sums lose less).
    The RBF kernel needs every pairwise distance at once and has no such form.

    Args:
        debiased: as in `cka`.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((60, 5)), rng.standard_normal((60, 3))
    >>> acc = CKAAccumulator()
    >>> for i in range(0, 60, 16):
    ...     acc.update(x[i:i + 16], y[i:i + 16])
    >>> bool(abs(acc.result() - cka(x, y)) < 1e-12)
    True
    """

    def __init__(self, debiased=False):
        self.debiased = bool(debiased)
        self.n = 0
        self._shift = None

    def update(self, x, y):
        """Adds a batch of examples: ``x`` [b, d1] and ``y`` [b, d2]."""
        x = _as_matrix(x, "x").astype(np.float64)
        y = _as_matrix(y, "y").astype(np.float64)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                "`x` and `y` must hold the same examples (same first dimension). "
                f"Received: x with shape {x.shape}, y with shape {y.shape}"
            )
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = (x.mean(axis=0), y.mean(axis=0))
            d1, d2 = x.shape[1], y.shape[1]
            self._sx, self._sy = np.zeros(d1), np.zeros(d2)
            self._xtx, self._yty, self._xty = np.zeros((d1, d1)), np.zeros((d2, d2)), np.zeros((d1, d2))
            # debiased: sums of a = |x|^2, b = |y|^2, their products, and a x, b x, a y, b y
            self._moments = np.zeros(5)  # S_a, S_b, S_aa, S_bb, S_ab
            self._ax, self._bx = np.zeros(d1), np.zeros(d1)
            self._ay, self._by = np.zeros(d2), np.zeros(d2)
        elif x.shape[1] != self._sx.shape[0] or y.shape[1] != self._sy.shape[0]:
            raise ValueError(
                f"Every batch must have {self._sx.shape[0]} x-features and {self._sy.shape[0]} "
                f"y-features. Received: x with shape {x.shape}, y with shape {y.shape}"
            )
        x -= self._shift[0]
        y -= self._shift[1]
        self.n += x.shape[0]
        self._sx += x.sum(axis=0)
        self._sy += y.sum(axis=0)
        self._xtx += x.T @ x
        self._yty += y.T @ y
        self._xty += x.T @ y
        if self.debiased:
            a = np.einsum("ij,ij->i", x, x)
            b = np.einsum("ij,ij->i", y, y)
            self._moments += (a.sum(), b.sum(), a @ a, b @ b, a @ b)
            self._ax += a @ x
            self._bx += b @ x
            self._ay += a @ y
            self._by += b @ y

    def result(self):
        """CKA of everything added so far."""
        n = self.n
        if n < (4 if self.debiased else 2):
            raise ValueError(
                f"CKA{' (debiased)' if self.debiased else ''} needs at least "
                f"{4 if self.debiased else 2} examples. Received: {n}"
            )
        m, q = self._sx / n, self._sy / n
        xtx = self._xtx - n * np.outer(m, m)
        yty = self._yty - n * np.outer(q, q)
        xty = self._xty - n * np.outer(m, q)
        if not self.debiased:
            return _normalised(np.vdot(xty, xty), np.vdot(xtx, xtx), np.vdot(yty, yty))
        s_a, s_b, s_aa, s_bb, s_ab = self._moments
        c, e = m @ m, q @ q
        # r_i = |x_i - m|^2 = a_i - 2 x_i.m + c; expand sums of r_x r_y etc.
        rx_ry = s_ab - 2 * q @ self._ay - 2 * m @ self._bx + 4 * m @ self._xty @ q + e * s_a + c * s_b - 3 * n * c * e
        rx_rx = s_aa - 4 * m @ self._ax + 4 * m @ self._xtx @ m + 2 * c * s_a - 3 * n * c * c
        ry_ry = s_bb - 4 * q @ self._by + 4 * q @ self._yty @ q + 2 * e * s_b - 3 * n * e * e
        xy, xx, yy = _linear_terms(
            np.vdot(xtx, xtx), np.vdot(yty, yty), np.vdot(xty, xty),
            rx_ry, rx_rx, ry_ry, s_a - n * c, s_b - n * e, n, True,
        )
        return _normalised(xy, xx, yy)


def cka_matrix(acts_a, acts_b=None, kernel="linear", threshold=1.0, debiased=False):
    """CKA between every layer of `acts_a` and every layer of `acts_b` (Fig. 9).

    After Richter et al. (2022), Sec. 4.2.1, Fig. 9 (layers of two
    pathways against each other) and Kornblith et al. (2019).

    Each layer's centred Gram matrix is computed once and normalised, so
    the matrix costs one n x n Gram per layer plus one inner product per
    pair (n^2 float64 values held per layer: subsample n for big sets).

    Args:
        acts_a: list (or dict, in its order) of feature arrays [n, ...].
        acts_b: the same for the columns; None: `acts_a` against itself.
        kernel, threshold, debiased: as in `cka`.

    Returns:
        float64 array [len(acts_a), len(acts_b)].

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((30, 4))
    >>> cka_matrix([x, x ** 2]).shape
    (2, 2)
    """
    _check_kernel(kernel)
    a = list(acts_a.values()) if isinstance(acts_a, dict) else list(acts_a)
    b = a if acts_b is None else (list(acts_b.values()) if isinstance(acts_b, dict) else list(acts_b))
    if not a or not b:
        raise ValueError("`acts_a` and `acts_b` must each hold at least one feature array.")
    n = np.asarray(a[0]).shape[0]
    for i, act in enumerate(a + ([] if acts_b is None else b)):
        if np.asarray(act).shape[0] != n:
            raise ValueError(
                f"Every feature array must hold the same {n} examples. "
                f"Received: an array with shape {np.asarray(act).shape} (index {i})"
            )
    _check_pair(a[0], a[0], debiased)

    def unit_gram(act):
        act = _as_matrix(act, "acts")
        gram = gram_linear(act) if kernel == "linear" else gram_rbf(act, threshold)
        centred = center_gram(gram, debiased)
        norm = np.sqrt(np.vdot(centred, centred))
        return centred / norm if norm > 0 else np.full_like(centred, np.nan)

    grams_a = [unit_gram(act) for act in a]
    grams_b = grams_a if acts_b is None else [unit_gram(act) for act in b]
    out = np.empty((len(grams_a), len(grams_b)))
    for i, ga in enumerate(grams_a):
        for j, gb in enumerate(grams_b):
            if acts_b is None and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = np.vdot(ga, gb)
    return out


# --- On models ------------------------------------------------------------------


def cka_with_output(model, data, layers=None, max_examples=2000, kernel="linear", threshold=1.0,
                    debiased=False, pool_size=4, batch_size=128, seed=0, max_feature_bytes=1 << 30):
    """CKA of every analysed output of `model` with the network's output (Fig. 8).

    After Richter et al. (2022), Sec. 4.2.1: each conv output and pathway
    sum, pooled to 4x4 and flattened as for the probes, against the model
    output (the logits), on a uniform seeded subset of `data`.

    Args:
        model: a functional `keras.Model` with one output.
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches.
        layers: None (all) or names / fnmatch patterns.
        max_examples: examples used (None: all).
        kernel, threshold, debiased: as in `cka`.
        pool_size, batch_size, seed: extraction settings.
        max_feature_bytes: features held at once (more layers: more passes).

    Returns:
        ``(infos, {name: CKA})``.
    """
    infos = extraction.select_layers(model, layers)
    x, y = extraction.as_arrays(data, max_examples, seed)
    values = {}
    for group in extraction.chunk_layers(model, infos, len(y), pool_size, max_feature_bytes):
        names = [i.name for i in group]
        features, _, outputs = extraction.collect_features(model, (x, y), names, batch_size, pool_size)
        for name in names:
            values[name] = cka(features[name], outputs, kernel, threshold, debiased)
    return infos, values


def heatmap_pairs(model, infos, block=None):
    """Which layer sets the CKA heatmaps compare (Fig. 9).

    A model with `MultiPathBlock`s: every pair of pathways of `block`
    (default: the last block with two or more pathways), their conv outputs
    as rows and columns. A model without pathways: every analysed output
    against every other.

    Returns:
        A list of ``(title, row names, column names, row axis, column axis)``.
    """
    blocks = []
    for info in infos:
        if info.block is not None and info.block not in blocks:
            blocks.append(info.block)
    if not blocks:
        names = [i.name for i in infos]
        return [("layers", names, names, "layer", "layer")]
    candidates = [b for b in blocks if len({i.pathway for i in infos if i.block == b and i.kind == "conv"}) > 1]
    if block is None:
        if not candidates:
            return []
        block = candidates[-1]
    elif block not in blocks:
        raise ValueError(f"`block` must be one of {blocks}. Received: block={block!r}")
    by_path = {}
    for info in infos:
        if info.block == block and info.kind == "conv":
            by_path.setdefault(info.pathway, []).append(info.name)
    paths = sorted(by_path, key=lambda p: int(p[4:]))
    pairs = []
    for i, p in enumerate(paths):
        for q in paths[i + 1:]:
            pairs.append((f"{block}_{p}_{q}", by_path[p], by_path[q], f"{block} {p}", f"{block} {q}"))
    return pairs


@register_analysis("cka", "Linear CKA of every layer with the output, and between pathways (003, Figs. 8, 9)")
def cka_analysis(model, data, layers=None, max_examples=2000, heatmap_examples=1000, heatmap_block=None,
                 kernel="linear", threshold=1.0, debiased=False, **kwargs):
    """CKA with the output per layer and pathway (Fig. 8) and pathway heatmaps (Fig. 9).

    Reads ``data.test``. Keyword arguments go to `cka_with_output`.
    """
    if data.test is None:
        raise ValueError("The 'cka' analysis needs `data.test`. Received: data.test=None")
    seed = kwargs.pop("seed", data.seed)
    infos, values = cka_with_output(model, data.test, layers, max_examples, kernel, threshold,
                                    debiased, seed=seed, **kwargs)
    titles = extraction.pathway_names(model)
    numbers = {
        "mean_cka_with_output": float(np.nanmean(list(values.values()))),
        **extraction.pathway_means(infos, values, "mean_cka_with_output"),
        "kernel": kernel,
        "debiased": bool(debiased),
        "layers": [i.name for i in infos],
        "pathway": {i.name: i.pathway for i in infos},
        "position": extraction.layer_positions(infos),
        "cka_with_output": values,
        "heatmaps": {},
    }
    figures = {"output": plots.plot_cka_with_output(values, infos, titles)}
    pairs = heatmap_pairs(model, infos, heatmap_block)
    if pairs:
        x, y = extraction.as_arrays(data.test, heatmap_examples, seed)
        needed = list(dict.fromkeys(n for _, rows, cols, _, _ in pairs for n in rows + cols))
        pool = kwargs.get("pool_size", 4)
        features, _, _ = extraction.collect_features(model, (x, y), needed, pool_size=pool)
        for title, rows, cols, row_axis, col_axis in pairs:
            matrix = cka_matrix([features[n] for n in rows], None if rows == cols else [features[n] for n in cols],
                                kernel, threshold, debiased)
            entry = {"rows": rows, "cols": cols, "matrix": matrix, "examples": len(y)}
            if len(rows) == len(cols) and rows != cols:
                entry["diagonal_mean"] = float(np.mean(np.diag(matrix)))
                numbers[f"diagonal_mean/{title}"] = entry["diagonal_mean"]
            numbers["heatmaps"][title] = entry
            short = [n.split("/")[-1] for n in rows], [n.split("/")[-1] for n in cols]
            name = "heatmap" if len(pairs) == 1 else f"heatmap_{title}"
            figures[name] = plots.plot_cka_heatmap(matrix, *short, row_title=row_axis, col_title=col_axis,
                                                   title=f"{kernel} CKA, {len(y)} examples")
    return AnalysisResult(numbers=numbers, figures=figures)


cka_analysis.default_every = 5
