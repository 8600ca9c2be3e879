"""The analyses of Distill's "Branch Specialization" (Voss et al. 2021).

- `weight_svd`: SVD of the absolute weights between two consecutive
  convolutions, which orders the first layer's neurons by the main factors of
  variation in what they connect to (the article's Fig. 6: colour vs.
  black-and-white, then frequency); `weight_svd_figure` draws it.
- `branch_enrichment_pvalue`: the chance that all n features of a family
  land in one branch of k of a layer's N neurons by accident (hypergeometric:
  ``C(k, n) / C(N, n)``), e.g. all 9 black-and-white-vs-colour detectors of
  mixed3a in its 32-neuron 5x5 branch (of 256): below 1e-8.
"""

import math
from fractions import Fraction

import numpy as np

from branchzoo._validation import check_int


def _kernel(kernel, name):
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim == 2:
        k = k[None, None]
    if k.ndim != 4:
        raise ValueError(
            f"`{name}` must be a conv kernel (kh, kw, in, out) or a dense kernel (in, out). "
            f"Received: shape {np.shape(kernel)}"
        )
    return k


def connection_matrix(kernel_b, in_channels=None):
    """``|W|`` between two layers: ``M[i, j] = sum over positions of |kernel_b[:, :, i, j]|``.

    A grouped second kernel (``kernel_b.shape[2] = in_channels / groups``)
    becomes the block-diagonal ``[in_channels, out]`` matrix of the grouped
    convolution (zeros between groups).

    Args:
        kernel_b: ``(kh, kw, in / groups, out)`` (or a dense ``(in, out)``).
        in_channels: the first layer's output channels (default
            ``kernel_b.shape[2]``: not grouped).

    Returns:
        ``[in_channels, out]`` float64, non-negative.
    """
    k = _kernel(kernel_b, "kernel_b")
    per_group, out = k.shape[2], k.shape[3]
    in_channels = per_group if in_channels is None else check_int(in_channels, "in_channels", minimum=1)
    if in_channels % per_group or out % (in_channels // per_group):
        raise ValueError(
            f"`kernel_b` reads {per_group} channels per group: the first layer's {in_channels} output "
            f"channels must be a multiple of that, and its {out} outputs divisible by the groups. "
            f"Received: kernel_b shape {k.shape}, in_channels={in_channels}"
        )
    groups = in_channels // per_group
    summed = np.abs(k).sum(axis=(0, 1))  # [in / groups, out]
    if groups == 1:
        return summed
    matrix = np.zeros((in_channels, out))
    out_per_group = out // groups
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        cols = slice(g * out_per_group, (g + 1) * out_per_group)
        matrix[rows, cols] = summed[:, cols]
    return matrix


def weight_svd(kernel_a, kernel_b, num_vectors=2, center=True):
    """SVD of ``|W|`` between two consecutive convolutions, neurons ordered by singular vectors.

    After Voss et al. (2021), Fig. 6 ("perform a singular value
    decomposition on the absolute values of the weights" between the first
    two conv layers; the authors call it weight PCA). With ``center=True``
    (default) every column of ``|W|`` is centred over the first layer's
    neurons first, so that singular vector 0 is the main factor of
    VARIATION (a PCA with the first layer's neurons as samples); with
    ``center=False`` it is the plain SVD, whose vector 0 of a non-negative
    matrix is one-signed (overall connection strength).

    Singular vectors are signed so that each left vector's largest-magnitude
    entry is positive.

    Args:
        kernel_a: the first conv kernel ``(kh, kw, in, C1)`` (its neurons
            are the rows; only its channel count is used here, and its
            filters are drawn by `weight_svd_figure`).
        kernel_b: the second conv kernel ``(kh, kw, C1 / groups, C2)``.
        num_vectors: how many singular vectors to return.
        center: centre ``|W|``'s columns before the SVD.

    Returns:
        dict: ``matrix`` (``|W|``, ``[C1, C2]``), ``singular_values``,
        ``left`` (``[C1, num_vectors]``: first-layer neurons),
        ``right`` (``[C2, num_vectors]``: second-layer neurons),
        ``order_a`` / ``order_b`` (neurons sorted by singular vector 0) and
        ``explained`` (each vector's share of the squared singular values).

    Example:

    >>> w_b = np.zeros((1, 1, 4, 2)); w_b[0, 0, :2, 0] = 1; w_b[0, 0, 2:, 1] = 1
    >>> weight_svd(np.zeros((3, 3, 3, 4)), w_b)["left"][:, 0].round(2).tolist()
    [0.5, 0.5, -0.5, -0.5]
    """
    a = _kernel(kernel_a, "kernel_a")
    matrix = connection_matrix(kernel_b, in_channels=a.shape[3])
    num_vectors = check_int(num_vectors, "num_vectors", minimum=1, maximum=min(matrix.shape))
    m = matrix - matrix.mean(axis=0, keepdims=True) if center else matrix
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    u, v = u[:, :num_vectors], vt[:num_vectors].T
    for i in range(num_vectors):
        j = np.argmax(np.abs(u[:, i]))
        if u[j, i] < 0:
            u[:, i], v[:, i] = -u[:, i], -v[:, i]
    energy = s**2
    return {
        "matrix": matrix,
        "singular_values": s,
        "left": u,
        "right": v,
        "order_a": np.argsort(-u[:, 0], kind="stable"),
        "order_b": np.argsort(-v[:, 0], kind="stable"),
        "explained": energy / energy.sum() if energy.sum() > 0 else energy,
    }


def _filter_image(kernel):
    """A conv filter ``(kh, kw, 3)`` as an RGB image in [0, 1] (zero at grey)."""
    bound = np.abs(kernel).max() or 1.0
    return np.clip(0.5 + 0.5 * kernel / bound, 0, 1)


def weight_svd_figure(result, kernel_a=None, branch_of=None, title="Neurons by singular vectors of |W|"):
    """First-layer neurons at (singular vector 0, 1), second-layer neurons likewise.

    With an RGB `kernel_a` each first-layer neuron is drawn as its filter
    (the article's Fig. 6); `branch_of` (``[C1]`` ints) colours the points by
    branch instead.
    """
    from matplotlib.figure import Figure

    left, right = result["left"], result["right"]
    second = 1 if left.shape[1] > 1 else 0
    fig = Figure(figsize=(8.4, 3.8))
    for i, (vectors, label) in enumerate(((left, "first layer"), (right, "second layer"))):
        ax = fig.add_subplot(1, 2, i + 1)
        x, y = vectors[:, 0], vectors[:, second]
        rgb = kernel_a is not None and np.ndim(kernel_a) == 4 and np.shape(kernel_a)[2] == 3
        if i == 0 and rgb:
            span = max(np.ptp(x), np.ptp(y), 1e-9)
            half = 0.03 * span
            for n in range(len(x)):
                ax.imshow(_filter_image(np.asarray(kernel_a)[:, :, :, n]), interpolation="nearest",
                          extent=(x[n] - half, x[n] + half, y[n] - half, y[n] + half), zorder=2)
            ax.set_xlim(x.min() - 2 * half, x.max() + 2 * half)
            ax.set_ylim(y.min() - 2 * half, y.max() + 2 * half)
            ax.set_aspect("auto")
        elif i == 0 and branch_of is not None:
            scatter = ax.scatter(x, y, c=np.asarray(branch_of), cmap="tab10", s=14)
            fig.colorbar(scatter, ax=ax, label="branch")
        else:
            ax.scatter(x, y, s=10, color="C0")
        ax.set_xlabel("singular vector 0")
        ax.set_ylabel(f"singular vector {second}")
        ax.set_title(f"{label} ({len(x)} neurons)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def branch_enrichment_pvalue(n_features, branch_size, layer_size, observed=None, exact=False):
    """The chance that a family of features clusters in one branch by accident.

    After Voss et al. (2021): if the n features of a family were
    spread over a layer's N neurons at random, the chance that all n fall in
    a given branch of k neurons is the hypergeometric ``C(k, n) / C(N, n)``
    (9 of 9 in 32 of 256: < 1e-8; 30 of 30 in 96 of 480: < 1e-20). With
    `observed` = m, the chance that at least m of the n do:
    ``sum_{j >= m} C(k, j) C(N - k, n - j) / C(N, n)``.

    Args:
        n_features: n, the size of the family.
        branch_size: k, the neurons of the branch.
        layer_size: N, the neurons of the layer.
        observed: m (default n: all of them).
        exact: return the exact `fractions.Fraction` instead of a float.

    Returns:
        The probability (float, or Fraction with ``exact=True``).

    Example:

    >>> branch_enrichment_pvalue(2, 2, 4)  # C(2, 2) / C(4, 2)
    0.16666666666666666
    """
    layer_size = check_int(layer_size, "layer_size", minimum=1)
    branch_size = check_int(branch_size, "branch_size", minimum=0, maximum=layer_size)
    n_features = check_int(n_features, "n_features", minimum=0, maximum=layer_size)
    observed = n_features if observed is None else check_int(observed, "observed", minimum=0, maximum=n_features)
    total = math.comb(layer_size, n_features)
    count = sum(math.comb(branch_size, j) * math.comb(layer_size - branch_size, n_features - j)
                for j in range(observed, n_features + 1))
    p = Fraction(count, total)
    return p if exact else float(p)
