"""Branch specialization: what each summed branch contributes, and to what.

After Brokman & Gilboa (2022), Secs. 4.1 and 6 (Figs. 3, 5, 6, 7): for a
model whose output is the sum of N branches (`branchzoo.layers.BranchSum`),

- the response matrix R (examples x branches) and the branches' covariance
  ``R^T R`` and correlation (Fig. 3 right, Fig. 5);
- each branch's mean contribution to the correct logit, per class (Fig. 6);
- each branch's confidence on each example (Fig. 7);
- silent ("null") branches, whose output is essentially zero for every
  input (Sec. 4, observation 4).

The plain functions take arrays (``branch_outputs [n, N]`` for scalar
branches or ``[n, N, K]`` for K logits per branch) and return arrays or
matplotlib Figures; `collect_branch_outputs` gets the arrays from a model,
and the registered analysis ``"specialization"`` runs them all
(``evaluate.py --analysis specialization --report DIR``).
"""

import keras
import numpy as np

from branchzoo._validation import check_int
from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.layers import BranchSum

# A branch is silent when its RMS output is below this fraction of the most active branch's.
SILENT_THRESHOLD = 0.05


def _as_outputs(branch_outputs, name="branch_outputs"):
    outputs = np.asarray(branch_outputs, dtype=np.float64)
    if outputs.ndim == 2:
        outputs = outputs[:, :, None]
    if outputs.ndim != 3 or outputs.shape[0] < 1 or outputs.shape[1] < 1:
        raise ValueError(
            f"`{name}` must have shape [examples, branches] or [examples, branches, outputs]. "
            f"Received: shape {np.shape(branch_outputs)}"
        )
    return outputs


def _as_labels(labels, n, num_outputs):
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be {n} integer class indices (one per example). "
            f"Received: shape {labels.shape}, dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_outputs):
        raise ValueError(
            f"`labels` must lie in [0, {num_outputs}) (the branches' outputs). "
            f"Received: labels in [{labels.min()}, {labels.max()}]"
        )
    return labels


def response_matrix(branch_outputs, labels=None):
    """The response matrix R: one row per example (and output), one column per branch.

    After Brokman & Gilboa (2022), Sec. 4.1: ``R[i, j] = f_j(x_i)`` for scalar
    branches. For classifiers (K logits per branch) with `labels`, ``R[i, j]``
    is branch j's contribution to example i's correct logit; without labels,
    every logit is a row (``[n * K, N]``).

    Args:
        branch_outputs: ``[n, N]`` or ``[n, N, K]``.
        labels: optional ``[n]`` integer classes.

    Returns:
        float64 array ``[n, N]`` (or ``[n * K, N]``).

    Example:

    >>> response_matrix([[[1., 2.], [3., 4.]]], labels=[1]).tolist()
    [[2.0, 4.0]]
    """
    outputs = _as_outputs(branch_outputs)
    n, num_branches, k = outputs.shape
    if labels is None:
        return outputs.transpose(0, 2, 1).reshape(n * k, num_branches)
    labels = _as_labels(labels, n, k)
    return outputs[np.arange(n), :, labels]


def branch_covariance(responses, centered=False):
    """The branches' covariance ``R^T R / n`` (Fig. 3 right, Fig. 5).

    The paper's matrix is ``R^T R``; it is divided by the number of rows here
    so that it does not grow with the dataset. ``centered=True`` subtracts
    each branch's mean response first (the usual covariance).

    Args:
        responses: R, ``[n, N]`` (`response_matrix`).
        centered: subtract column means.

    Returns:
        ``[N, N]`` float64, symmetric positive semi-definite.

    Example:

    >>> branch_covariance([[1., 0.], [1., 2.]]).tolist()
    [[1.0, 1.0], [1.0, 2.0]]
    """
    r = np.asarray(responses, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 1:
        raise ValueError(f"`responses` must be a matrix [examples, branches]. Received: shape {r.shape}")
    if centered:
        r = r - r.mean(axis=0, keepdims=True)
    return r.T @ r / r.shape[0]


def branch_correlation(covariance):
    """Correlation ``C_ij / sqrt(C_ii C_jj)`` of a branch covariance; 0 where a branch is constant zero.

    Args:
        covariance: ``[N, N]`` from `branch_covariance`.

    Returns:
        ``[N, N]`` in [-1, 1], 1 on the diagonal of every non-zero branch.
    """
    c = np.asarray(covariance, dtype=np.float64)
    scale = np.sqrt(np.clip(np.diag(c), 0.0, None))
    denom = np.outer(scale, scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(denom > 0, c / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(corr, -1.0, 1.0)


def class_contributions(branch_outputs, labels, num_classes=None):
    """Each branch's mean contribution to the correct logit, per class (Fig. 6).

    ``M[j, k]`` = mean over the examples of class k of branch j's logit k.

    Args:
        branch_outputs: ``[n, N, K]``.
        labels: ``[n]`` integer classes.
        num_classes: K (default: the outputs' last dimension).

    Returns:
        ``[N, K]`` float64; NaN for classes without examples.

    Example:

    >>> class_contributions([[[2., 0.], [0., 1.]], [[4., 0.], [0., 3.]]], [0, 0]).tolist()
    [[3.0, nan], [0.0, nan]]
    """
    outputs = _as_outputs(branch_outputs)
    n, num_branches, k = outputs.shape
    num_classes = k if num_classes is None else check_int(num_classes, "num_classes", minimum=1, maximum=k)
    labels = _as_labels(labels, n, num_classes)
    correct = outputs[np.arange(n), :, labels]  # [n, N]
    result = np.full((num_branches, num_classes), np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            result[:, c] = correct[mask].mean(axis=0)
    return result


def _softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def branch_confidence(branch_outputs, labels=None):
    """Each branch's confidence on each example (Fig. 7).

    The probability branch j alone gives example i's correct class,
    ``softmax(f_j(x_i))[y_i]`` (with `labels`), or its top class
    (``max softmax``, without). A silent branch sits at 1/K.

    Args:
        branch_outputs: ``[n, N, K]`` logits per branch.
        labels: optional ``[n]`` integer classes.

    Returns:
        ``[n, N]`` float64 in (0, 1].
    """
    outputs = _as_outputs(branch_outputs)
    probs = _softmax(outputs, axis=-1)
    if labels is None:
        return probs.max(axis=-1)
    labels = _as_labels(labels, outputs.shape[0], outputs.shape[2])
    return probs[np.arange(outputs.shape[0]), :, labels]


def silent_branches(branch_outputs, threshold=SILENT_THRESHOLD):
    """Silent ("null") branches: essentially zero output for every input.

    Activity of branch j: the RMS of its outputs over all examples and
    outputs. A branch is silent when its activity is below `threshold`
    times the most active branch's (Sec. 4, observation 4).

    Args:
        branch_outputs: ``[n, N]`` or ``[n, N, K]``.
        threshold: relative activity below which a branch is silent.

    Returns:
        dict: ``activity`` [N], ``share`` [N] (activity^2 / its sum: the
        fraction of output energy per branch), ``silent`` [N] bool,
        ``silent_branches`` (their indices).

    Example:

    >>> silent_branches([[1.0, 0.001, -2.0]])["silent_branches"]
    [1]
    """
    outputs = _as_outputs(branch_outputs)
    threshold = float(threshold)
    if not 0 <= threshold < 1:
        raise ValueError(f"`threshold` must be in [0, 1). Received: threshold={threshold!r}")
    activity = np.sqrt(np.mean(outputs**2, axis=(0, 2)))
    energy = activity**2
    share = energy / energy.sum() if energy.sum() > 0 else np.zeros_like(energy)
    silent = activity < threshold * activity.max() if activity.max() > 0 else np.ones_like(activity, bool)
    return {"activity": activity, "share": share, "silent": silent,
            "silent_branches": [int(i) for i in np.flatnonzero(silent)]}


def specialization_summary(branch_outputs, labels, threshold=SILENT_THRESHOLD):
    """Scalar summaries of specialization for a classifier's branch outputs.

    Returns:
        dict with ``num_branches``, ``num_silent``, ``silent_branches``,
        ``activity_share`` (per branch), ``mean_abs_correlation`` (off-diagonal,
        between active branches, of the correct-logit responses),
        ``top_branch_share`` (per class: the largest branch contribution over
        the sum of the positive ones; 1 when one branch carries the class,
        1/N when all contribute equally), ``mean_top_branch_share``,
        ``dominant_branch`` (per class), ``branch_accuracy`` (each branch
        alone) and ``sum_accuracy`` (of the unclamped sum of the branch
        logits: ties at a `BranchSum` clamp can make the model's own
        accuracy slightly lower).
    """
    outputs = _as_outputs(branch_outputs)
    n, num_branches, k = outputs.shape
    labels = _as_labels(labels, n, k)
    silent = silent_branches(outputs, threshold)
    active = ~silent["silent"]
    corr = branch_correlation(branch_covariance(response_matrix(outputs, labels)))
    sub = corr[np.ix_(active, active)]
    off = sub[~np.eye(len(sub), dtype=bool)]
    contrib = class_contributions(outputs, labels)
    positive = np.clip(contrib, 0, None)
    totals = positive.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        top_share = np.where(totals > 0, positive.max(axis=0) / np.where(totals > 0, totals, 1), np.nan)
    return {
        "num_branches": int(num_branches),
        "num_silent": int(silent["silent"].sum()),
        "silent_branches": silent["silent_branches"],
        "activity_share": silent["share"],
        "mean_abs_correlation": float(np.abs(off).mean()) if off.size else 0.0,
        "top_branch_share": top_share,
        "mean_top_branch_share": float(np.nanmean(top_share)) if np.isfinite(top_share).any() else None,
        "dominant_branch": [int(np.argmax(c)) if np.isfinite(c).all() else None for c in contrib.T],
        "branch_accuracy": (outputs.argmax(axis=-1) == labels[:, None]).mean(axis=0),
        "sum_accuracy": float((outputs.sum(axis=1).argmax(axis=-1) == labels).mean()),
    }


# -- figures ---------------------------------------------------------------------------


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _branch_ticks(ax, num_branches, axis="both"):
    ticks = np.arange(num_branches)
    step = max(1, num_branches // 16)
    if axis in ("both", "x"):
        ax.set_xticks(ticks[::step], [str(t) for t in ticks[::step]])
    if axis in ("both", "y"):
        ax.set_yticks(ticks[::step], [str(t) for t in ticks[::step]])


def covariance_figure(matrix, title="Branch covariance R^T R / n", symmetric=True, label="covariance"):
    """A heatmap of an ``[N, N]`` branch covariance or correlation (Fig. 3 right, Fig. 5)."""
    m = np.asarray(matrix, dtype=np.float64)
    fig = _figure(4.2, 3.6)
    ax = fig.add_subplot()
    bound = float(np.abs(m).max()) or 1.0
    image = ax.imshow(m, cmap="RdBu_r" if symmetric else "viridis",
                      vmin=-bound if symmetric else None, vmax=bound if symmetric else None)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xlabel("branch")
    ax.set_ylabel("branch")
    _branch_ticks(ax, m.shape[0])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def contribution_figure(contributions, class_names=None,
                        title="Mean contribution to the correct logit"):
    """Branches x classes heatmap of `class_contributions` (Fig. 6)."""
    m = np.asarray(contributions, dtype=np.float64)
    num_branches, num_classes = m.shape
    fig = _figure(max(4.0, 0.45 * num_classes + 1.8), max(3.0, 0.3 * num_branches + 1.2))
    ax = fig.add_subplot()
    bound = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    image = ax.imshow(m, cmap="RdBu_r", vmin=-bound or -1, vmax=bound or 1, aspect="auto")
    fig.colorbar(image, ax=ax, label="mean logit of the true class")
    names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    ax.set_xticks(np.arange(num_classes), names[:num_classes], rotation=60, ha="right", fontsize=7)
    _branch_ticks(ax, num_branches, axis="y")
    ax.set_xlabel("class")
    ax.set_ylabel("branch")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _spread(num_examples, labels, count):
    """Up to `count` example indices spread over the classes (round-robin) or evenly over the set."""
    if num_examples <= count:
        return np.arange(num_examples)
    if labels is None:
        return np.unique(np.linspace(0, num_examples - 1, count).astype(int))
    labels = np.asarray(labels).reshape(-1)
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked, i = [], 0
    while len(picked) < count:
        for members in per_class:
            if i < len(members) and len(picked) < count:
                picked.append(members[i])
        i += 1
    return np.sort(np.asarray(picked))


def confidence_figure(confidence, labels=None, max_examples=200,
                      title="Branch confidence on the true class"):
    """Examples x branches heatmap of `branch_confidence` (Fig. 7).

    At most `max_examples` examples are drawn, spread over the classes when
    `labels` are given (evenly over the set otherwise), and grouped by the
    branch most confident about them (then by that confidence), so that each
    branch's block of "own" examples shows.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    conf = conf[_spread(len(conf), labels, max_examples)]
    order = np.lexsort((-conf.max(axis=1), conf.argmax(axis=1)))
    fig = _figure(4.6, 3.8)
    ax = fig.add_subplot()
    image = ax.imshow(conf[order].T, cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="p(true class | branch alone)")
    _branch_ticks(ax, conf.shape[1], axis="y")
    ax.set_xlabel(f"example ({len(order)}, grouped by most confident branch)")
    ax.set_ylabel("branch")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def activity_figure(activity, silent=None, title="Branch activity (RMS output)"):
    """Bar chart of each branch's RMS output; silent branches in grey."""
    activity = np.asarray(activity, dtype=np.float64)
    silent = np.zeros(len(activity), bool) if silent is None else np.asarray(silent, bool)
    fig = _figure(4.2, 2.6)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(activity)), activity, color=np.where(silent, "0.7", "C0"))
    _branch_ticks(ax, len(activity), axis="x")
    ax.set_xlabel("branch (grey: silent)")
    ax.set_ylabel("RMS output")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# -- models ----------------------------------------------------------------------------


def find_branch_sum(model):
    """The `BranchSum` layer of `model` (searched recursively); ValueError if there is none or several."""
    found = [l for l in model._flatten_layers(include_self=False, recursive=True) if isinstance(l, BranchSum)]
    if len(found) != 1:
        raise ValueError(
            f"The specialization analysis needs a model with exactly one BranchSum layer (its "
            f"per-branch outputs, e.g. branched_resnet18). Model {model.name!r} has {len(found)}."
        )
    return found[0]


def branch_output_model(model):
    """A model mapping `model`'s inputs to ``(output, branch_outputs [batch, N, ...])``."""
    layer = find_branch_sum(model)
    if not layer._inbound_nodes:
        raise ValueError(f"BranchSum {layer.name!r} of model {model.name!r} is not part of a functional graph.")
    node = layer._inbound_nodes[0]
    branches = node.input_tensors[0]
    output = node.output_tensors[0]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [output, branches], name=f"{model.name}_branches")


def collect_branch_outputs(model, batches, max_batches=None):
    """Runs `model` (inference mode) over ``(x, y)`` batches and keeps its branch outputs.

    Args:
        model: a model with one `BranchSum` layer.
        batches: iterable of ``(x, y)`` (a tf.data dataset, a list, ...).
        max_batches: stop after this many batches.

    Returns:
        dict: ``branches`` ``[n, N, ...]``, ``outputs`` ``[n, ...]`` (the
        model's summed output) and ``labels`` ``[n]`` (as given), numpy.
    """
    extractor = branch_output_model(model)
    outputs, branches, labels = [], [], []
    for i, (x, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        out, br = extractor(x, training=False)
        outputs.append(np.asarray(out))
        branches.append(np.asarray(br))
        labels.append(np.asarray(y).reshape(-1))
    if not outputs:
        raise ValueError("`batches` yielded no batch to analyse.")
    return {"branches": np.concatenate(branches), "outputs": np.concatenate(outputs),
            "labels": np.concatenate(labels)}


def specialization_report(branch_outputs, labels, class_names=None, threshold=SILENT_THRESHOLD):
    """Every number and figure of the specialization analysis, from arrays.

    Returns:
        `AnalysisResult` with `specialization_summary`'s numbers (plus the
        covariance and contribution matrices) and the figures
        ``covariance``, ``correlation`` (Fig. 5), ``class_contribution``
        (Fig. 6), ``confidence`` (Fig. 7) and ``activity``.
    """
    outputs = _as_outputs(branch_outputs)
    labels = _as_labels(labels, outputs.shape[0], outputs.shape[2])
    responses = response_matrix(outputs, labels)
    covariance = branch_covariance(responses)
    correlation = branch_correlation(covariance)
    contributions = class_contributions(outputs, labels)
    silent = silent_branches(outputs, threshold)
    numbers = specialization_summary(outputs, labels, threshold)
    numbers.update({"covariance": covariance, "class_contribution": contributions,
                    "activity": silent["activity"], "num_examples": int(outputs.shape[0])})
    figures = {
        "covariance": covariance_figure(covariance, "Branch covariance (correct logit)"),
        "correlation": covariance_figure(correlation, "Branch correlation (correct logit)", label="correlation"),
        "class_contribution": contribution_figure(contributions, class_names),
        "confidence": confidence_figure(branch_confidence(outputs, labels), labels),
        "activity": activity_figure(silent["activity"], silent["silent"]),
    }
    return AnalysisResult(numbers=_finite(numbers), figures=figures)


def _finite(obj):
    """NaN to None (JSON has no NaN), recursively; arrays to lists."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_finite(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


@register_analysis("specialization", description="Branch specialization of a BranchSum model (000, Figs. 5-7)")
def specialization_analysis(model, data):
    """Branch response covariance, per-class contributions, confidence and silent branches.

    After Brokman & Gilboa (2022), Sec. 6: runs on the test split (the
    train split when there is none) of `data` (`AnalysisData`).
    """
    find_branch_sum(model)  # a clear error before any data is read
    batches = data.test if data.test is not None else data.train
    if batches is None:
        raise ValueError("The specialization analysis needs `data.test` or `data.train` batches.")
    collected = collect_branch_outputs(model, batches)
    if collected["branches"].ndim != 3:
        raise ValueError(
            "The specialization analysis reads per-branch logits [batch, N, classes]. "
            f"Received branch outputs of shape {collected['branches'].shape}."
        )
    labels = collected["labels"].astype(np.int64)
    return specialization_report(collected["branches"], labels, data.class_names)
