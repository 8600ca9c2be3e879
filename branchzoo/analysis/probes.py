"""Logistic-regression probes: how linearly separable each layer's output is.

After Alain & Bengio's probes as Richter et al. (2022) uses them (Sec. 2.2,
Figs. 1, 3, 5, 7) and its reference code: every conv
output and every pathway sum is average-pooled to 4x4 and flattened, a
multinomial L2 logistic regression is fit on training-set features and its
accuracy measured on test-set features. Features are extracted in inference
mode, so BatchNormalization statistics do not change.

Choices the paper leaves open (documented, not copied from its code):

- features are standardised with the training set's mean and standard
  deviation before the fit (the reference code fits raw features with SAGA,
  which converges far slower); L2 strength ``C=1`` (scikit-learn's default,
  as the reference code), L-BFGS fitted to convergence (scikit-learn's
  tolerance, at most `max_iter` = 5000 iterations); a probe that stops at
  the limit is counted in ``not_converged`` and named in the figure's title,
  since its accuracy is that of an unfinished fit;
- maps no larger than 4x4 are used as they are (not upsampled to 4x4);
- examples are a uniform seeded subset (`max_train_examples`,
  `max_test_examples`): a CIFAR-sized report then takes minutes on a CPU.
"""

import dataclasses
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from branchzoo import _progress as progress
from branchzoo._validation import check_int
from branchzoo.analysis import extraction, plots, tail
from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.precision import to_numpy

@dataclasses.dataclass
class ProbeResult:
    """Probe accuracies of one model.

    Attributes:
        layers: the probed outputs (`extraction.LayerInfo`) in forward order.
        accuracy: ``{name: test accuracy}``.
        train_accuracy: ``{name: training accuracy}``.
        model_test_accuracy: the model's own top-1 on the same test examples
            (None when its output is not ``[batch, classes]``).
        num_classes: number of classes; ``chance`` = 1 / num_classes.
        num_train, num_test: examples used.
        not_converged: probes whose L-BFGS hit `max_iter`.
        seconds: ``{"extract": s, "fit": s}``.
        pathway_titles: ``{"path1": "1:3x3", ...}`` for MPNets.
    """

    layers: list
    accuracy: dict
    train_accuracy: dict
    model_test_accuracy: float
    num_classes: int
    num_train: int
    num_test: int
    not_converged: int = 0
    seconds: dict = dataclasses.field(default_factory=dict)
    pathway_titles: dict = dataclasses.field(default_factory=dict)

    @property
    def chance(self):
        return 1.0 / self.num_classes

    def to_numbers(self):
        """JSON-able numbers; top-level scalars are what TensorBoard logs."""
        names = [info.name for info in self.layers]
        numbers = {
            "model_test_accuracy": self.model_test_accuracy,
            "final_probe_accuracy": self.accuracy[names[-1]],
            "best_probe_accuracy": max(self.accuracy.values()),
            "chance": self.chance,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "not_converged": self.not_converged,
        }
        numbers.update(extraction.pathway_means(self.layers, self.accuracy, "mean_accuracy"))
        numbers.update({
            "layers": names,
            "pathway": {info.name: info.pathway for info in self.layers},
            "kind": {info.name: info.kind for info in self.layers},
            "position": extraction.layer_positions(self.layers),
            "accuracy": dict(self.accuracy),
            "train_accuracy": dict(self.train_accuracy),
            "pathway_titles": dict(self.pathway_titles),
            "seconds": dict(self.seconds),
        })
        return numbers


MAX_ITER = 5000


def fit_probe(train_x, train_y, test_x, test_y, C=1.0, max_iter=MAX_ITER, standardize=True, threads=1):
    """One multinomial L2 logistic-regression probe.

    Args:
        train_x, test_x: features [n, d].
        train_y, test_y: integer labels [n].
        C: inverse L2 strength (scikit-learn's convention).
        max_iter: L-BFGS iterations at most.
        standardize: scale features by the training mean and std first.
        threads: BLAS/OpenMP threads for the fit (None: the library
            default). One by default: on this project's busy 2-core machine
            an oversubscribed two-thread fit ran 16x slower than one thread.

    Returns:
        ``(test accuracy, train accuracy, converged)``.
    """
    with threadpool_limits(limits=threads):
        return _fit_probe(train_x, train_y, test_x, test_y, C, max_iter, standardize)


def _fit_probe(train_x, train_y, test_x, test_y, C, max_iter, standardize):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_x = to_numpy(train_x).reshape(len(train_x), -1)
    test_x = to_numpy(test_x).reshape(len(test_x), -1)
    if standardize:
        scaler = StandardScaler().fit(train_x)
        train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    if np.unique(train_y).size < 2:
        # One class only: the probe predicts it everywhere.
        only = np.asarray(train_y).ravel()[0]
        return float(np.mean(test_y == only)), 1.0, True
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(train_x, train_y)
    converged = bool(np.all(clf.n_iter_ < max_iter))
    return float(clf.score(test_x, test_y)), float(clf.score(train_x, train_y)), converged


def fit_probes(model, train_data, test_data, layers=None, max_train_examples=5000,
               max_test_examples=2000, pool_size=4, C=1.0, max_iter=MAX_ITER, standardize=True,
               batch_size=128, num_classes=None, shuffle_labels=False, seed=0,
               max_feature_bytes=1 << 30, threads=1):
    """Fits a logistic-regression probe on every analysed output of `model`.

    After Richter et al. (2022), Sec. 2.2 (Figs. 3, 5, 7): each conv
    output and pathway sum (and hidden Dense output), pooled to 4x4 and
    flattened, extracted in inference mode.

    Args:
        model: a functional `keras.Model` (any registered model).
        train_data, test_data: ``(x, y)`` arrays or iterables of ``(x, y)``
            batches (e.g. ``branchzoo.data.load_dataset(..., augment=False)``).
        layers: None (every conv output, pathway/residual sum and hidden
            Dense output) or names / fnmatch patterns.
        max_train_examples, max_test_examples: uniform seeded subsets (None:
            everything). On 2 CPU cores a probe on 5000 x 2048 features fits
            in about 2 s.
        pool_size: average-pool maps to this size (4 in the paper).
        C, max_iter, standardize, threads: see `fit_probe`.
        batch_size: extraction batch size for arrays.
        num_classes: for the chance level (default: from the labels).
        shuffle_labels: permute the training labels (a control: probes then
            sit at chance).
        seed: for the subsets and the permutation.
        max_feature_bytes: features of this many bytes at most are held at
            once; more layers are extracted in several passes.

    Returns:
        A `ProbeResult`.

    Example:

    >>> import numpy as np
    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [1, 5]], blocks_per_stage=1, widths=(4, 4, 4, 4), input_shape=(8, 8, 3))
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.standard_normal((40, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 40)
    >>> r = fit_probes(m, (x, y), (x, y), layers=["*/sum"])
    >>> len(r.accuracy)
    4
    """
    check_int(max_iter, "max_iter", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    if not C > 0:
        raise ValueError(f"`C` must be a positive number. Received: C={C!r}")
    infos = extraction.select_layers(model, layers)
    start = time.perf_counter()
    train_x, train_y = extraction.as_arrays(train_data, max_train_examples, seed)
    test_x, test_y = extraction.as_arrays(test_data, max_test_examples, seed + 1)
    train_y = np.asarray(train_y).astype(np.int64).ravel()
    test_y = np.asarray(test_y).astype(np.int64).ravel()
    if shuffle_labels:
        train_y = np.random.default_rng(seed + 2).permutation(train_y)
    num_classes = extraction.infer_num_classes(num_classes, train_y, test_y)
    groups = extraction.chunk_layers(model, infos, len(train_y) + len(test_y), pool_size, max_feature_bytes)
    accuracy, train_accuracy = {}, {}
    not_converged = 0
    model_accuracy = None
    extract_seconds = fit_seconds = 0.0
    for g, group in enumerate(groups):
        names = [info.name for info in group]
        t0 = time.perf_counter()
        progress.say(f"Extracting features of {len(names)} layers from {len(train_y)} train and "
                     f"{len(test_y)} test examples")
        train_f, _, _ = extraction.collect_features(model, (train_x, train_y), names, batch_size, pool_size)
        test_f, _, outputs = extraction.collect_features(model, (test_x, test_y), names, batch_size, pool_size)
        extract_seconds += time.perf_counter() - t0
        if g == 0 and outputs.ndim == 2 and outputs.shape[1] > 1:
            model_accuracy = float(np.mean(np.argmax(outputs, axis=1) == test_y))
        t0 = time.perf_counter()
        for name in names:
            done = len(accuracy)
            progress.say(f"Fitting probe {done + 1} of {len(infos)} ({name}, {train_f[name][0].size} features)")
            acc, train_acc, converged = fit_probe(train_f[name], train_y, test_f[name], test_y,
                                                  C=C, max_iter=max_iter, standardize=standardize,
                                                  threads=threads)
            accuracy[name], train_accuracy[name] = acc, train_acc
            not_converged += not converged
        fit_seconds += time.perf_counter() - t0
        del train_f, test_f
    seconds = {"extract": extract_seconds, "fit": fit_seconds, "total": time.perf_counter() - start}
    return ProbeResult(
        layers=infos, accuracy=accuracy, train_accuracy=train_accuracy,
        model_test_accuracy=model_accuracy, num_classes=num_classes,
        num_train=len(train_y), num_test=len(test_y), not_converged=not_converged,
        seconds=seconds, pathway_titles=extraction.pathway_names(model),
    )


def _require(data, field, analysis):
    value = getattr(data, field, None)
    if value is None:
        raise ValueError(
            f"The '{analysis}' analysis needs `data.{field}` (batches of the {field} split). "
            f"Received: data.{field}=None"
        )
    return value


@register_analysis("probes", "Logistic-regression probe accuracy of every conv output and pathway sum (003, Figs. 3, 5, 7)")
def probes_analysis(model, data, layers=None, max_train_examples=5000, max_test_examples=2000, **kwargs):
    """Probe accuracy per layer and per pathway, with its figure (Figs. 3, 5, 7).

    Reads ``data.train`` and ``data.test``; keyword arguments go to `fit_probes`.
    """
    kwargs.setdefault("num_classes", data.num_classes)
    kwargs.setdefault("seed", data.seed)
    result = fit_probes(
        model, _require(data, "train", "probes"), _require(data, "test", "probes"),
        layers=layers, max_train_examples=max_train_examples, max_test_examples=max_test_examples, **kwargs,
    )
    numbers = result.to_numbers()
    tails = tail.tail_patterns(result.layers, accuracy=result.accuracy)
    numbers["tail"] = tails
    numbers["tail_length"] = max(t["length"] for t in tails.values())
    figure = plots.plot_probes(result, spans=tail.tail_spans(tails, result.layers))
    return AnalysisResult(numbers=numbers, figures={"accuracy": figure})


probes_analysis.default_every = 10
