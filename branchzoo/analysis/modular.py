"""Analyses of modular-loss ensembles: robustness, specialists, entropy, confusion, dominance.

After Webb et al. (2019), Sec. 4 and its reference code (docs/papers.md).
Every function works on the logits of all modules, ``[examples, M, K]`` (what a modular ensemble returns; see
`module_logits`), so each sub-ensemble costs a weighted sum, not a forward
pass:

- module dropping (Fig. 4): `module_dropping_curve` (N of M modules kept,
  drawn without replacement, 20 draws per N) and `keep_probability_curve`
  (each module kept with probability p), drawn by `robustness_figure`;
- specialist sub-ensembles (Fig. 5): `specialist_subensembles`, one-vs-all F1
  of random sub-ensembles against the ones chosen on a validation half;
- per-module prediction entropy (Table 6): `module_entropies`, `entropy_statistics`;
- per-module confusion matrices (Fig. 10): `module_confusion_matrices`, `confusion_figure`;
- module dominance (Fig. 7): `module_errors`, the `ModuleErrorHistory`
  callback and `dominance_figure`.

The registered analyses ``robustness``, ``specialists``, ``entropy``,
``confusion`` and ``dominance`` run them on the test split of an
`AnalysisData`; they raise ValueError for models whose output is not
``[batch, M, K]``.

    >>> import numpy as np
    >>> logits = np.random.default_rng(0).standard_normal((50, 8, 3))
    >>> labels = np.zeros(50, int)
    >>> curve = module_dropping_curve(logits, labels, draws=3)
    >>> curve["kept"][-1], len(curve["accuracy_mean"]) == len(curve["kept"])
    (8, True)
"""

import hashlib
import math

import keras
import numpy as np
from matplotlib.figure import Figure

from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.precision import to_numpy

PAPER = "004_226906bbadadb648.txt"


# ------------------------------------------------------------------ inputs
def check_module_logits(logits, labels=None):
    """Returns `logits` as float ``[N, M, K]`` (16-bit: float32; and int `labels` ``[N]``), or raises ValueError."""
    logits = to_numpy(logits)
    if logits.ndim != 3:
        raise ValueError(
            "Module analyses need the logits of every module, of shape [examples, num_modules, K] "
            f"(the output of a modular ensemble such as modular_mlp). Received: shape {logits.shape}"
        )
    if labels is None:
        return logits
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(logits):
        raise ValueError(
            f"`labels` must have one entry per example ({len(logits)}). Received: {len(labels)} labels"
        )
    return logits, labels


def _check_model_output(model):
    outputs = getattr(model, "outputs", None)
    if outputs:
        shape = tuple(outputs[0].shape)
        if len(outputs) != 1 or len(shape) != 3:
            raise ValueError(
                "This analysis needs a model whose output is the logits of every module, [batch, "
                f"num_modules, K] (a modular ensemble such as modular_mlp). Received: model {model.name!r} "
                f"with output shape(s) {[tuple(o.shape) for o in outputs]}"
            )


_LOGITS_CACHE = {}


def _weights_digest(model):
    digest = hashlib.blake2b(digest_size=16)
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def module_logits(model, batches):
    """Runs `model` in inference mode over `batches`; returns ``(logits [N, M, K], labels [N])``.

    Args:
        model: a model returning ``[batch, M, K]`` (ValueError otherwise).
        batches: a finite iterable of ``(x, y)`` batches (e.g. a tf.data split).

    Returns:
        float32 logits and int64 labels, as NumPy arrays.
    """
    _check_model_output(model)
    if batches is None:
        raise ValueError("This analysis needs test data: `data.test` must be an iterable of (x, y) batches.")
    key = (id(model), id(batches))
    digest = _weights_digest(model)
    cached = _LOGITS_CACHE.get(key)
    if cached is not None and cached[0] == digest:
        return cached[1], cached[2]
    outs, ys = [], []
    for x, y in batches:
        out = to_numpy(model.predict_on_batch(x))
        check_module_logits(out)
        outs.append(out.astype(np.float32))
        ys.append(np.asarray(y).reshape(-1))
    if not outs:
        raise ValueError("`data.test` yielded no batches.")
    logits, labels = check_module_logits(np.concatenate(outs), np.concatenate(ys))
    _LOGITS_CACHE.clear()  # one entry: the last model and data seen
    _LOGITS_CACHE[key] = (digest, logits, labels)
    return logits, labels


# ---------------------------------------------------------- sub-ensembles
def subset_accuracy(logits, labels, masks, chunk=16):
    """Accuracy of the sub-ensembles in `masks` (``[S, M]`` booleans): argmax of the mean kept logits.

    Returns:
        ``[S]`` accuracies. A mask keeping no module is a ValueError.
    """
    logits, labels = check_module_logits(logits, labels)
    masks = np.asarray(masks, bool)
    if masks.ndim != 2 or masks.shape[1] != logits.shape[1]:
        raise ValueError(f"`masks` must be [subsets, {logits.shape[1]}] booleans. Received: shape {masks.shape}")
    if not masks.any(axis=1).all():
        raise ValueError("Every sub-ensemble in `masks` must keep at least one module.")
    return np.concatenate([(p == labels).mean(axis=1) for p in _subset_predictions(logits, masks, chunk)])


def _subset_predictions(logits, masks, chunk=16):
    """Yields ``[s, N]`` argmax predictions of the sub-ensembles in `masks`, `chunk` at a time."""
    # The mean of the kept logits has the argmax of their sum.
    weights = masks.astype(logits.dtype)
    for start in range(0, len(weights), chunk):
        sums = np.einsum("nmk,sm->snk", logits, weights[start:start + chunk], optimize=True)
        yield sums.argmax(axis=-1)


def default_kept_counts(num_modules):
    """The reference code's grid of kept modules: 1, 1 + step, ..., M with step max(M // 20, 1)."""
    counts = list(range(1, num_modules + 1, max(num_modules // 20, 1)))
    return counts if counts[-1] == num_modules else counts + [num_modules]


def module_dropping_curve(logits, labels, kept=None, draws=20, seed=0):
    """Accuracy when only N of the M modules are kept (the first robustness protocol).

    After Webb et al. (2019), Sec. 4.1 and Fig. 4: for each N, average
    the logits of N modules drawn without replacement, `draws` times.

    Args:
        logits: ``[N_examples, M, K]``.
        labels: ``[N_examples]``.
        kept: numbers of kept modules (default `default_kept_counts`).
        draws: random draws per N.
        seed: NumPy seed.

    Returns:
        dict: ``kept``, ``dropped`` (M - kept), ``accuracy_mean``,
        ``accuracy_std`` (over draws) and ``accuracy`` (``[len(kept), draws]``).

    Example:

    >>> logits = np.zeros((4, 3, 2)); logits[:, 0, 1] = 1.0   # only module 0 knows
    >>> module_dropping_curve(logits, [1, 1, 1, 1], kept=[3], draws=2)["accuracy_mean"]
    [1.0]
    """
    logits, labels = check_module_logits(logits, labels)
    M = logits.shape[1]
    kept = default_kept_counts(M) if kept is None else [int(n) for n in kept]
    if not kept or min(kept) < 1 or max(kept) > M:
        raise ValueError(f"`kept` must hold numbers of modules between 1 and {M}. Received: kept={kept!r}")
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(kept) * draws, M), bool)
    for i, n in enumerate(kept):
        for d in range(draws):
            masks[i * draws + d, rng.choice(M, n, replace=False)] = True
    acc = subset_accuracy(logits, labels, masks).reshape(len(kept), draws)
    return {
        "kept": kept,
        "dropped": [M - n for n in kept],
        "accuracy_mean": acc.mean(axis=1).tolist(),
        "accuracy_std": acc.std(axis=1).tolist(),
        "accuracy": acc.tolist(),
    }


def keep_probability_curve(logits, labels, probabilities=None, draws=20, seed=0):
    """Accuracy when every module is kept with probability p (the second robustness protocol).

    Draws that keep no module are drawn again. The default probabilities
    are 20 values from ``1 - 0.001**(1/M)`` (at least one module kept with
    probability 0.999, as the reference code picks it) to 1.

    Returns:
        dict: ``probability``, ``accuracy_mean``, ``accuracy_std``,
        ``accuracy`` (``[len(probability), draws]``), ``mean_kept``.
    """
    logits, labels = check_module_logits(logits, labels)
    M = logits.shape[1]
    if probabilities is None:
        probabilities = np.linspace(1.0 - 0.001 ** (1.0 / M), 1.0, 20)
    probabilities = [float(p) for p in probabilities]
    if not probabilities or min(probabilities) <= 0 or max(probabilities) > 1:
        raise ValueError(f"`probabilities` must lie in (0, 1]. Received: probabilities={probabilities!r}")
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(probabilities) * draws, M), bool)
    for i, p in enumerate(probabilities):
        for d in range(draws):
            mask = rng.random(M) < p
            while not mask.any():
                mask = rng.random(M) < p
            masks[i * draws + d] = mask
    acc = subset_accuracy(logits, labels, masks).reshape(len(probabilities), draws)
    return {
        "probability": probabilities,
        "accuracy_mean": acc.mean(axis=1).tolist(),
        "accuracy_std": acc.std(axis=1).tolist(),
        "accuracy": acc.tolist(),
        "mean_kept": masks.sum(axis=1).reshape(len(probabilities), draws).mean(axis=1).tolist(),
    }


def robustness_figure(curves, protocol="dropped", error=True, title=None):
    """Fig. 4: ensemble error (or accuracy) against modules dropped or drop probability.

    Args:
        curves: ``{label: curve}`` from `module_dropping_curve` (protocol
            ``"dropped"``) or `keep_probability_curve` (``"probability"``).
        protocol: ``"dropped"`` or ``"probability"``.
        error: plot error (1 - accuracy) as the paper does, else accuracy.
        title: optional title.

    Returns:
        A matplotlib `Figure`.
    """
    if protocol not in ("dropped", "probability"):
        raise ValueError(f"`protocol` must be 'dropped' or 'probability'. Received: protocol={protocol!r}")
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for label, curve in curves.items():
        if protocol == "dropped":
            x = np.asarray(curve["dropped"])
        else:
            x = 1.0 - np.asarray(curve["probability"])
        mean = np.asarray(curve["accuracy_mean"])
        y = 1.0 - mean if error else mean
        order = np.argsort(x)
        ax.errorbar(x[order], y[order], yerr=np.asarray(curve["accuracy_std"])[order], label=str(label),
                    capsize=2, marker=".", linewidth=1.2)
    ax.set_xlabel("modules dropped" if protocol == "dropped" else "module drop probability")
    ax.set_ylabel("test error" if error else "test accuracy")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    ax.set_title(title or ("Module dropping (20 draws per point)" if protocol == "dropped"
                           else "Each module kept with probability 1 - p"), fontsize=10)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------- specialists
def one_vs_all_f1(predictions, labels, positive):
    """F1 of "predicted class == positive" against "label == positive"; ``predictions`` ``[..., N]``.

    0 where there is neither a positive prediction nor a positive label.

    Example:

    >>> float(one_vs_all_f1(np.array([1, 1, 0, 2]), np.array([1, 0, 1, 2]), 1))
    0.5
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    pred, true = predictions == positive, labels == positive
    tp = (pred & true).sum(axis=-1)
    fp = (pred & ~true).sum(axis=-1)
    fn = (~pred & true).sum(axis=-1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def specialist_subensembles(logits, labels, sizes=(1, 20), candidates=200, seed=0, num_classes=None):
    """Specialist sub-ensembles for the one-vs-all problems (Sec. 4.1, Fig. 5).

    The examples are split at random into a validation and a test half. For
    each sub-ensemble size and each class c (binary problem "class c or
    not", predicted as "the sub-ensemble's argmax is c"), `candidates`
    random sub-ensembles are drawn (all M single modules for size 1); the
    *random* score is their mean test F1, the *specialist* score the test
    F1 of the candidate with the best validation F1 for that class.

    Args:
        logits: ``[N, M, K]``.
        labels: ``[N]``.
        sizes: sub-ensemble sizes (clipped to M).
        candidates: random sub-ensembles per size (size 1: every module).
        seed: NumPy seed (split and draws).
        num_classes: ``K`` (default: the logits' last dimension).

    Returns:
        dict keyed by size (str): ``random_f1``, ``specialist_f1`` (means
        over classes), ``per_class`` lists of both, ``specialists`` (the
        chosen module indices per class).
    """
    logits, labels = check_module_logits(logits, labels)
    N, M, K = logits.shape
    K = num_classes or K
    rng = np.random.default_rng(seed)
    order = rng.permutation(N)
    val, test = order[: N // 2], order[N // 2:]
    result = {}
    for size in sizes:
        size = min(int(size), M)
        if size == 1:
            masks = np.eye(M, dtype=bool)
        else:
            n = min(candidates, math.comb(M, size))
            masks = np.zeros((n, M), bool)
            seen = set()
            while len(seen) < n:
                pick = tuple(sorted(rng.choice(M, size, replace=False)))
                if pick not in seen:
                    masks[len(seen), list(pick)] = True
                    seen.add(pick)
        preds = np.concatenate(list(_subset_predictions(logits, masks)))  # [S, N]
        random_f1, specialist_f1, chosen = [], [], []
        for c in range(K):
            f1_val = one_vs_all_f1(preds[:, val], labels[val], c)
            f1_test = one_vs_all_f1(preds[:, test], labels[test], c)
            best = int(np.argmax(f1_val))
            random_f1.append(float(f1_test.mean()))
            specialist_f1.append(float(f1_test[best]))
            chosen.append(np.flatnonzero(masks[best]).tolist())
        result[str(size)] = {
            "size": size,
            "candidates": int(len(masks)),
            "random_f1": float(np.mean(random_f1)),
            "specialist_f1": float(np.mean(specialist_f1)),
            "per_class": {"random_f1": random_f1, "specialist_f1": specialist_f1},
            "specialists": chosen,
        }
    return result


def specialists_figure(results, title=None):
    """Fig. 5: mean one-vs-all test F1 of random and specialist sub-ensembles.

    Args:
        results: ``{label: specialist_subensembles(...)}`` (e.g. one per lambda).

    Returns:
        A matplotlib `Figure` (one panel per sub-ensemble size).
    """
    sizes = sorted({s for r in results.values() for s in r}, key=int)
    fig = Figure(figsize=(3.2 * max(len(sizes), 1) + 0.6, 3.4))
    for i, size in enumerate(sizes, start=1):
        ax = fig.add_subplot(1, len(sizes), i)
        labels = [lab for lab, r in results.items() if size in r]
        x = np.arange(len(labels))
        rand = [results[lab][size]["random_f1"] for lab in labels]
        spec = [results[lab][size]["specialist_f1"] for lab in labels]
        ax.bar(x - 0.2, rand, 0.4, label="random")
        ax.bar(x + 0.2, spec, 0.4, label="specialist")
        ax.set_xticks(x, [str(lab) for lab in labels], fontsize=8)
        ax.set_title(f"sub-ensembles of {size}", fontsize=10)
        ax.set_ylabel("mean one-vs-all test F1")
        lo = min(rand + spec) if rand else 0.0
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.grid(axis="y", alpha=0.3)
        if i == 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ entropy
def module_entropies(logits):
    """Mean over examples of the entropy (nats) of each module's predicted distribution, ``[M]``."""
    logits = check_module_logits(logits).astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return (-(np.exp(log_p) * log_p).sum(axis=-1)).mean(axis=0)


def entropy_statistics(entropies):
    """Table 6: ``min``, ``max``, ``mean`` and ``std`` (population) of per-module entropies."""
    e = np.asarray(entropies, np.float64)
    return {"min": float(e.min()), "max": float(e.max()), "mean": float(e.mean()), "std": float(e.std())}


def entropy_figure(entropies, num_classes=None, title=None):
    """Per-module mean prediction entropy, sorted, with the uniform distribution's log K."""
    e = np.sort(np.asarray(entropies))
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(e)), e, width=1.0 if len(e) > 40 else 0.8)
    if num_classes:
        ax.axhline(math.log(num_classes), color="k", linestyle="--", linewidth=1, label=f"log {num_classes}")
        ax.legend(fontsize=8)
    ax.set_xlabel("module (sorted by entropy)")
    ax.set_ylabel("mean entropy H[q_j] (nats)")
    ax.set_title(title or "Per-module prediction entropy (Table 6)", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- confusion
def module_confusion_matrices(logits, labels, num_classes=None):
    """Confusion matrices of every module, ``[M, K, K]`` counts (rows true class, columns predicted)."""
    logits, labels = check_module_logits(logits, labels)
    K = num_classes or logits.shape[-1]
    preds = logits.argmax(axis=-1)  # [N, M]
    M = logits.shape[1]
    flat = (np.arange(M)[None, :] * K * K + labels[:, None] * K + preds).reshape(-1)
    return np.bincount(flat, minlength=M * K * K).reshape(M, K, K)


def confusion_figure(matrices, modules=None, class_names=None, title=None):
    """Fig. 10: row-normalised confusion matrices of some modules (x predicted, y true).

    Args:
        matrices: ``[M, K, K]`` from `module_confusion_matrices`.
        modules: indices to draw (default: the first four).
        class_names: tick labels (default: class indices; none beyond 20 classes).

    Returns:
        A matplotlib `Figure`.
    """
    matrices = np.asarray(matrices)
    modules = list(range(min(4, len(matrices)))) if modules is None else list(modules)
    cols = min(4, len(modules))
    rows = math.ceil(len(modules) / cols)
    fig = Figure(figsize=(2.6 * cols + 0.4, 2.6 * rows + 0.4))
    K = matrices.shape[-1]
    for i, m in enumerate(modules):
        ax = fig.add_subplot(rows, cols, i + 1)
        counts = matrices[m].astype(np.float64)
        norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"module {m}", fontsize=9)
        if K <= 20:
            names = [str(c) for c in (class_names or range(K))]
            ax.set_xticks(range(K), names, fontsize=6, rotation=90)
            ax.set_yticks(range(K), names, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("true", fontsize=8)
    fig.suptitle(title or "Per-module confusion matrices (row-normalised)", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- dominance
def module_errors(logits, labels):
    """``(module_errors [M], ensemble_error)``: each module's error rate and the ensemble's."""
    logits, labels = check_module_logits(logits, labels)
    per_module = (logits.argmax(axis=-1) != labels[:, None]).mean(axis=0)
    ensemble = float((logits.mean(axis=1).argmax(axis=-1) != labels).mean())
    return per_module, ensemble


def dominance_figure(errors_per_epoch, ensemble_errors=None, title=None):
    """Fig. 7: every module's error (grey; the best at the end in colour) and the ensemble's, per epoch.

    Args:
        errors_per_epoch: ``[epochs, M]`` module errors.
        ensemble_errors: ``[epochs]`` ensemble errors (optional).

    Returns:
        A matplotlib `Figure`.
    """
    errors = np.asarray(errors_per_epoch, np.float64)
    if errors.ndim != 2:
        raise ValueError(f"`errors_per_epoch` must be [epochs, num_modules]. Received: shape {errors.shape}")
    epochs = np.arange(1, len(errors) + 1)
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    best = int(np.argmin(errors[-1]))
    for m in range(errors.shape[1]):
        if m != best:
            ax.plot(epochs, errors[:, m], color="0.6", linewidth=0.6, alpha=0.6)
    ax.plot(epochs, errors[:, best], color="tab:orange", linewidth=1.6, label=f"best module ({best})")
    if ensemble_errors is not None:
        ax.plot(epochs, np.asarray(ensemble_errors), color="k", linewidth=1.6, label="ensemble")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Module dominance: module and ensemble error", fontsize=10)
    fig.tight_layout()
    return fig


class ModuleErrorHistory(keras.callbacks.Callback):
    """Records each module's error and the ensemble's on held-out data after every epoch (Fig. 7).

    Adds ``val_best_module_error``, ``val_median_module_error`` and
    ``val_ensemble_error`` to the epoch logs, so a TensorBoard or CSV
    callback placed after it records them; `dominance_figure(callback.errors,
    callback.ensemble_errors)` draws the curves.

    Args:
        x: inputs (array) of the held-out data.
        y: integer labels.
        batch_size: prediction batch size.

    Example:

    >>> import numpy as np
    >>> from branchzoo.models import modular_mlp
    >>> model = modular_mlp(3, 2, input_shape=(4,))
    >>> cb = ModuleErrorHistory(np.zeros((5, 4), "float32"), np.zeros(5, int))
    >>> cb.set_model(model); cb.on_epoch_end(0, logs := {})
    >>> np.asarray(cb.errors).shape, "val_best_module_error" in logs
    ((1, 3), True)
    """

    def __init__(self, x, y, batch_size=1000):
        super().__init__()
        self.x, self.y, self.batch_size = x, np.asarray(y).reshape(-1), batch_size
        self.errors, self.ensemble_errors = [], []

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
        per_module, ensemble = module_errors(logits, self.y)
        self.errors.append(per_module.tolist())
        self.ensemble_errors.append(ensemble)
        if logs is not None:
            logs["val_best_module_error"] = float(per_module.min())
            logs["val_median_module_error"] = float(np.median(per_module))
            logs["val_ensemble_error"] = ensemble


# ------------------------------------------------------ registered analyses
def _summary_at(curve, num_modules, fraction):
    """``(accuracy, dropped)`` at the grid point nearest to `fraction` of the modules dropped."""
    dropped = np.asarray(curve["dropped"])
    i = int(np.argmin(np.abs(dropped - fraction * num_modules)))
    return float(curve["accuracy_mean"][i]), int(dropped[i])


@register_analysis("robustness", "Module dropping (004, Fig. 4): accuracy with N of M modules kept, and with each kept w.p. p")
def robustness_analysis(model, data):
    """Both module-dropping protocols on the test split (Webb et al. 2019, Sec. 4.1, Fig. 4)."""
    logits, labels = module_logits(model, data.test)
    dropped = module_dropping_curve(logits, labels, seed=data.seed)
    probability = keep_probability_curve(logits, labels, seed=data.seed)
    M = logits.shape[1]
    half, half_n = _summary_at(dropped, M, 0.5)
    most, most_n = _summary_at(dropped, M, 0.9)
    numbers = {
        "num_modules": M,
        "accuracy_all_modules": float(dropped["accuracy_mean"][-1]),
        "accuracy_half_dropped": half,
        "accuracy_90pct_dropped": most,
        "single_module_accuracy": float(dropped["accuracy_mean"][0]),
        "dropped_at_half": half_n,
        "dropped_at_90pct": most_n,
        "by_modules_kept": {k: v for k, v in dropped.items() if k != "accuracy"},
        "by_keep_probability": {k: v for k, v in probability.items() if k != "accuracy"},
    }
    return AnalysisResult(
        numbers=numbers,
        figures={
            "dropped": robustness_figure({model.name: dropped}, "dropped"),
            "probability": robustness_figure({model.name: probability}, "probability"),
        },
    )


@register_analysis("specialists", "Specialist sub-ensembles (004, Fig. 5): one-vs-all F1, random vs selected on validation")
def specialists_analysis(model, data):
    """Random vs specialist sub-ensembles of 1 and 20 modules (Webb et al. 2019, Sec. 4.1, Fig. 5)."""
    logits, labels = module_logits(model, data.test)
    result = specialist_subensembles(logits, labels, seed=data.seed, num_classes=data.num_classes)
    numbers = {}
    for size, r in result.items():
        numbers[f"random_f1_size{size}"] = r["random_f1"]
        numbers[f"specialist_f1_size{size}"] = r["specialist_f1"]
    numbers["by_size"] = result
    return AnalysisResult(numbers=numbers, figures={"f1": specialists_figure({model.name: result})})


@register_analysis("entropy", "Per-module prediction entropy (004, Table 6): min / max / mean / std")
def entropy_analysis(model, data):
    """Entropy of each module's predicted distribution on the test split (Webb et al. 2019, Table 6)."""
    logits, _ = module_logits(model, data.test)
    entropies = module_entropies(logits)
    stats = entropy_statistics(entropies)
    numbers = {f"entropy_{k}": v for k, v in stats.items()}
    numbers["per_module"] = entropies.tolist()
    K = data.num_classes or logits.shape[-1]
    return AnalysisResult(numbers=numbers, figures={"per_module": entropy_figure(entropies, K)})


@register_analysis("confusion", "Per-module confusion matrices (004, Fig. 10)")
def confusion_analysis(model, data):
    """Confusion matrices of the modules on the test split (Webb et al. 2019, Sec. 4.3, Fig. 10).

    The figure shows four modules: the most and least accurate and two in
    between. ``max_predicted_share`` is, per module, the largest fraction of
    its predictions given to one class (vertical banding when high).
    """
    logits, labels = module_logits(model, data.test)
    K = data.num_classes or logits.shape[-1]
    matrices = module_confusion_matrices(logits, labels, K)
    totals = matrices.sum(axis=(1, 2))
    accuracy = np.trace(matrices, axis1=1, axis2=2) / np.maximum(totals, 1)
    share = matrices.sum(axis=1).max(axis=1) / np.maximum(totals, 1)
    order = np.argsort(-accuracy)
    shown = sorted({int(order[0]), int(order[len(order) // 3]), int(order[2 * len(order) // 3]), int(order[-1])},
                   key=lambda m: -accuracy[m])
    numbers = {
        "mean_module_accuracy": float(accuracy.mean()),
        "mean_max_predicted_share": float(share.mean()),
        "max_max_predicted_share": float(share.max()),
        "module_accuracy": accuracy.tolist(),
        "max_predicted_share": share.tolist(),
        "shown_modules": shown,
        "matrices_shown": {str(m): matrices[m].tolist() for m in shown},
    }
    names = data.class_names if data.class_names and len(data.class_names) == K else None
    return AnalysisResult(numbers=numbers, figures={"modules": confusion_figure(matrices, shown, names)})


@register_analysis("dominance", "Module dominance (004, Fig. 7): each module's error against the ensemble's")
def dominance_analysis(model, data):
    """Each module's test error now (Webb et al. 2019, Sec. 4.2, Fig. 7).

    Run every few epochs (``train.py --analysis dominance``), the scalars
    trace Fig. 7's curves in TensorBoard; `ModuleErrorHistory` records them
    within one training run.
    """
    logits, labels = module_logits(model, data.test)
    per_module, ensemble = module_errors(logits, labels)
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(per_module)), np.sort(per_module), width=1.0 if len(per_module) > 40 else 0.8,
           color="0.5", label="modules (sorted)")
    ax.axhline(ensemble, color="k", linewidth=1.4, label="ensemble")
    ax.set_xlabel("module (sorted by error)")
    ax.set_ylabel("test error")
    ax.legend(fontsize=8)
    ax.set_title("Module dominance (Fig. 7)", fontsize=10)
    fig.tight_layout()
    numbers = {
        "ensemble_error": ensemble,
        "best_module_error": float(per_module.min()),
        "median_module_error": float(np.median(per_module)),
        "worst_module_error": float(per_module.max()),
        "best_module": int(np.argmin(per_module)),
        "dominance_gap": float(np.median(per_module) - per_module.min()),
        "module_errors": per_module.tolist(),
    }
    return AnalysisResult(numbers=numbers, figures={"module_errors": fig})
