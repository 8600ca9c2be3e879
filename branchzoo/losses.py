"""The modular loss of jointly trained ensembles and its metrics; the BranchSum classifier's loss.

After Webb et al. (2019), Sec. 2-3.

An ensemble of ``M`` modules predicts, for every example, the natural
parameters ``eta_j`` of ``M`` distributions of one natural exponential family
(logits for the categorical family): ``y_pred`` has shape ``[batch, M, K]``.
The ensemble is the normalised geometric mean of the modules' distributions,
whose natural parameter is the mean ``eta_bar = mean_j eta_j`` (Eq. 2-3).
The modular loss interpolates between independent (``lambda_ = 0``) and joint
(``lambda_ = 1``) training (Eq. 4 / Eq. 7):

    L = lambda_ * NLL(eta_bar) + (1 - lambda_) * mean_j NLL(eta_j)
      = mean_j NLL(eta_j) - lambda_ * mean_j KL(q_bar || q_j)      (Eq. 6)

and its gradient with respect to each module's natural parameters is
``(1/M) (y_hat_j - y - lambda_ (y_hat_j - y_bar))`` (Eq. 8) for every family.

Families and the negative log-likelihoods used (terms that depend on the
target only are dropped: they change neither the gradient nor Eq. 4-6):

- ``"categorical"``: ``y_true`` integer labels ``[batch]``; softmax
  cross-entropy ``logsumexp(eta) - eta[y]``.
- ``"gaussian"`` (unit variance): ``y_true`` targets ``[batch, K]``;
  ``0.5 * sum_k (y_k - eta_k)^2``.
- ``"poisson"``: ``y_true`` counts ``[batch, K]``; ``sum_k exp(eta_k) - y_k
  eta_k`` (PyTorch's ``PoissonNLLLoss(full=False)``).

`ClampedTargetCrossentropy` is the loss of the BranchSum CIFAR-10
classifier of Brokman & Gilboa (2022), Sec. 6: cross-entropy against a
target that is not one-hot but the softmax of class-indicating values inside
the logits' clamp range (see its docstring).

Everything here is ``keras.ops`` only, and computes in float32 at least
whatever the dtype policy: 16-bit predictions (a mixed-precision model's)
are cast up before the mean over modules, the log-normaliser and the
softmax.

    >>> import numpy as np
    >>> loss = ModularLoss(lambda_=0.95)
    >>> logits = np.zeros((2, 4, 10), "float32")   # 2 examples, 4 modules, 10 classes
    >>> round(float(loss(np.array([3, 7]), logits)), 4)   # log(10)
    2.3026
"""

import numbers

import keras
from keras import ops

from branchzoo.layers.branch_sum import normalize_clamp
from branchzoo.precision import upcast

PAPER = "004_226906bbadadb648.txt"
FAMILIES = ("categorical", "gaussian", "poisson")


def check_family(family):
    """Returns `family` if it is one of `FAMILIES`, else raises ValueError."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}. Received: family={family!r}")
    return family


def check_lambda(lambda_):
    """Returns `lambda_` as a float in [0, 1], else raises ValueError citing Theorem 1."""
    if isinstance(lambda_, bool) or not isinstance(lambda_, numbers.Real) or not 0.0 <= float(lambda_) <= 1.0:
        raise ValueError(
            "`lambda_` must be a number in [0, 1]: 0 trains the modules independently, 1 "
            f"jointly, and by Theorem 1 of {PAPER} (Sec. 3.2) any lambda_ > 1 makes the loss "
            "unbounded below while the ensemble's NLL grows without bound. "
            f"Received: lambda_={lambda_!r}"
        )
    return float(lambda_)


def _check_pred(y_pred):
    if len(y_pred.shape) != 3:
        raise ValueError(
            "The modular loss and its metrics expect `y_pred` of shape [batch, num_modules, K] "
            "(the natural parameters of every module, e.g. a modular ensemble's output). "
            f"Received: y_pred.shape={tuple(y_pred.shape)}"
        )


def _labels(y_true):
    """Integer class labels ``[batch]`` from ``[batch]`` or ``[batch, 1]``."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 2 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != 1:
        raise ValueError(
            "For the categorical family `y_true` must be integer labels of shape [batch] "
            f"(or [batch, 1]). Received: y_true.shape={tuple(y_true.shape)}"
        )
    return ops.cast(y_true, "int32")


def target_statistics(y_true, num_outputs, family, dtype="float32"):
    """The sufficient statistic ``y`` of the targets: one-hot labels or the targets, ``[batch, K]``."""
    if family == "categorical":
        return ops.one_hot(_labels(y_true), num_outputs, dtype=dtype)
    y_true = ops.cast(ops.convert_to_tensor(y_true), dtype)
    if len(y_true.shape) == 1 and num_outputs == 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_true.shape) != 2 or (y_true.shape[-1] is not None and y_true.shape[-1] != num_outputs):
        raise ValueError(
            f"For the {family} family `y_true` must be targets of shape [batch, K] with K = "
            f"{num_outputs} (the last dimension of y_pred). Received: y_true.shape={tuple(y_true.shape)}"
        )
    return y_true


def log_normalizer(eta, family):
    """``A(eta)`` of Table 1, summed over the last axis (K independent outputs; softmax for categorical)."""
    if family == "categorical":
        return ops.logsumexp(eta, axis=-1)
    if family == "gaussian":
        return 0.5 * ops.sum(ops.square(eta), axis=-1)
    return ops.sum(ops.exp(eta), axis=-1)


def inverse_link(eta, family):
    """The mean ``y_hat = f^{-1}(eta)`` (Table 1): softmax, identity or exp."""
    check_family(family)
    if family == "categorical":
        return ops.softmax(eta, axis=-1)
    if family == "gaussian":
        return eta
    return ops.exp(eta)


def negative_log_likelihood(y, eta, family):
    """NLL of the statistic `y` (``[batch, K]``, broadcast against `eta` ``[..., K]``), last axis reduced.

    Target-only constants are dropped, except the gaussian's ``0.5 y^2`` that
    makes it the squared loss ``0.5 ||y - eta||^2``.
    """
    nll = log_normalizer(eta, family) - ops.sum(eta * y, axis=-1)
    if family == "gaussian":
        nll = nll + 0.5 * ops.sum(ops.square(y), axis=-1)
    return nll


def kl_divergence(eta_p, eta_q, family):
    """``KL(q(.|eta_p) || q(.|eta_q)) = (eta_p - eta_q) . mu_p - A(eta_p) + A(eta_q)``, last axis reduced."""
    mu_p = inverse_link(eta_p, family)
    return ops.sum((eta_p - eta_q) * mu_p, axis=-1) - log_normalizer(eta_p, family) + log_normalizer(eta_q, family)


def _modules_axis_stats(y_true, y_pred, family):
    y_pred = upcast(y_pred)
    _check_pred(y_pred)
    y = target_statistics(y_true, y_pred.shape[-1], family, dtype=y_pred.dtype)
    return y, y_pred


def ensemble_nll(y_true, y_pred, family="categorical"):
    """``NLL(eta_bar)`` per example ``[batch]``: the loss of the ensemble (mean natural parameters)."""
    check_family(family)
    y, y_pred = _modules_axis_stats(y_true, y_pred, family)
    return negative_log_likelihood(y, ops.mean(y_pred, axis=1), family)


def member_nll(y_true, y_pred, family="categorical"):
    """``NLL(eta_j)`` of every module, ``[batch, M]``."""
    check_family(family)
    y, y_pred = _modules_axis_stats(y_true, y_pred, family)
    return negative_log_likelihood(ops.expand_dims(y, 1), y_pred, family)


def ambiguity(y_pred, family="categorical"):
    """``mean_j KL(q_bar || q_j)`` per example ``[batch]``: the ensemble's diversity (Eq. 6).

    Args:
        y_pred: natural parameters ``[batch, M, K]``.
        family: one of `FAMILIES`.

    Returns:
        ``[batch]``; zero when every module predicts the same.
    """
    check_family(family)
    y_pred = upcast(y_pred)
    _check_pred(y_pred)
    eta_bar = ops.mean(y_pred, axis=1, keepdims=True)
    return ops.mean(kl_divergence(eta_bar, y_pred, family), axis=1)


def modular_loss(y_true, y_pred, lambda_, family="categorical"):
    """Eq. 4 per example: ``lambda_ NLL(eta_bar) + (1 - lambda_) mean_j NLL(eta_j)``, ``[batch]``.

    After Webb et al. (2019), Sec. 3.1 (Eq. 4, 7 and 10).

    Args:
        y_true: labels ``[batch]`` (categorical) or targets ``[batch, K]``.
        y_pred: natural parameters ``[batch, M, K]``.
        lambda_: in [0, 1].
        family: one of `FAMILIES`.

    Returns:
        The per-example losses ``[batch]``.
    """
    lambda_ = check_lambda(lambda_)
    check_family(family)
    y, y_pred = _modules_axis_stats(y_true, y_pred, family)
    # one-hot and sum, not sparse_categorical_crossentropy: on TF's CPU kernels the fused sparse
    # op was 20-40% slower for [100, 256, 10] logits (forward + gradient)
    joint = negative_log_likelihood(y, ops.mean(y_pred, axis=1), family) if lambda_ > 0 else 0.0
    if lambda_ == 1.0:
        return joint
    members = ops.mean(negative_log_likelihood(ops.expand_dims(y, 1), y_pred, family), axis=1)
    return lambda_ * joint + (1.0 - lambda_) * members


@keras.saving.register_keras_serializable(package="branchzoo")
class ModularLoss(keras.losses.Loss):
    """The modular loss ``L_lambda`` of an ensemble's ``[batch, M, K]`` natural parameters.

    After Webb et al. (2019), Sec. 3.1, Eq. 4: ``lambda_ *
    NLL(mean_j eta_j) + (1 - lambda_) * mean_j NLL(eta_j)``. ``lambda_ = 0``
    trains the modules independently (each gets its own gradient scaled by
    ``1/M``), ``lambda_ = 1`` trains the ensemble as one network (the NLL of
    the mean natural parameters); values slightly below 1 keep the accuracy
    of joint training and make the ensemble robust to dropped modules
    (Sec. 4.1). Both terms scale each module's gradient by ``1/M``, so the
    learning rate of the reference code grows with ``M`` (about ``0.02 * M``
    for the MLPs).

    Args:
        lambda_: in [0, 1]; outside it is a ValueError (Theorem 1).
        family: ``"categorical"`` (logits; ``y_true`` integer labels),
            ``"gaussian"`` (unit variance; ``y_true`` targets ``[batch,
            K]``) or ``"poisson"`` (log rates; ``y_true`` counts ``[batch,
            K]``).
        name, reduction, dtype: as ``keras.losses.Loss``.

    Returns:
        The reduced loss (mean over the batch by default).

    Example:

    >>> import numpy as np
    >>> loss = ModularLoss(lambda_=1.0)
    >>> eta = np.array([[[2.0, 0.0], [0.0, 0.0]]], "float32")   # 1 example, 2 modules, 2 classes
    >>> round(float(loss(np.array([0]), eta)), 4)   # cross-entropy of the mean logits [1, 0]
    0.3133
    """

    def __init__(self, lambda_, family="categorical", name="modular_loss", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.lambda_ = check_lambda(lambda_)
        self.family = check_family(family)

    def call(self, y_true, y_pred):
        return modular_loss(y_true, y_pred, self.lambda_, self.family)

    def get_config(self):
        config = super().get_config()
        config.update({"lambda_": self.lambda_, "family": self.family})
        return config


def clamped_target(y_true, num_classes, logit_clamp, dtype="float32"):
    """The target of `ClampedTargetCrossentropy`: ``softmax(low + (high - low) * one_hot)``, ``[batch, K]``.

    Args:
        y_true: integer labels ``[batch]`` (or ``[batch, 1]``).
        num_classes: K.
        logit_clamp: ``c`` (the range ``[-c, c]``) or ``(low, high)``.
        dtype: of the result.
    """
    low, high = normalize_clamp(logit_clamp)
    one_hot = ops.one_hot(_labels(y_true), num_classes, dtype=dtype)
    return ops.softmax(low + (high - low) * one_hot, axis=-1)


def clamped_target_crossentropy(y_true, y_pred, logit_clamp):
    """Per-example cross-entropy of the logits `y_pred` ``[batch, K]`` against `clamped_target`, ``[batch]``."""
    y_pred = upcast(y_pred)
    if len(y_pred.shape) != 2:
        raise ValueError(
            "`ClampedTargetCrossentropy` expects logits `y_pred` of shape [batch, num_classes]. "
            f"Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    target = clamped_target(y_true, y_pred.shape[-1], logit_clamp, dtype=y_pred.dtype)
    return -ops.sum(target * ops.log_softmax(y_pred, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="branchzoo")
class ClampedTargetCrossentropy(keras.losses.Loss):
    """Cross-entropy against the softmax of class-indicating values in the clamp range (000, Sec. 6).

    After Brokman & Gilboa (2022), Sec. 6: the summed logits ``y = sum_i
    f_i(x)`` are clamped, and so the target of the cross-entropy "is not a
    one-hot vector, but a softmax on the class-indicating values". The
    class-indicating values used here are the clamp's bounds: ``high`` at
    the labelled class, ``low`` at every other class (the paper's symbols
    and range were lost in the extracted text; this is our reading). The
    target ``softmax(low + (high - low) * one_hot(label))`` is then the most
    confident distribution the clamped model can output, so a perfect fit
    (``dL/dy = softmax(y) - target = 0``, Eq. 3 and Sec. 8) is reachable,
    which a one-hot target never is. With ``logit_clamp=5`` and 10 classes
    the labelled class gets ``1 / (1 + 9 e^-10) = 0.99959``.

    The loss's minimum is the target's entropy, not 0. Use it with
    ``y_pred`` the model's clamped logits and the same ``logit_clamp`` as
    the model's `BranchSum`.

    Args:
        logit_clamp: ``c > 0`` (the range ``[-c, c]``) or ``(low, high)``.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Returns:
        The reduced loss (mean over the batch by default); ``y_true`` holds
        integer labels ``[batch]``.

    Example:

    >>> import numpy as np
    >>> loss = ClampedTargetCrossentropy(logit_clamp=1.0)
    >>> round(float(loss(np.array([0]), np.array([[1.0, -1.0]], "float32"))), 4)   # entropy of [e^2, 1] / (e^2 + 1)
    0.3653
    """

    def __init__(self, logit_clamp=5.0, name="clamped_target_crossentropy", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.logit_clamp = normalize_clamp(logit_clamp)
        if self.logit_clamp is None:
            raise ValueError(
                "`logit_clamp` must be a positive number c (clamp to [-c, c]) or a pair (low, high): "
                "the target is built from the clamp's range. Received: logit_clamp=None"
            )

    def call(self, y_true, y_pred):
        return clamped_target_crossentropy(y_true, y_pred, self.logit_clamp)

    def get_config(self):
        config = super().get_config()
        config.update({"logit_clamp": self.logit_clamp})
        return config


class _MeanMetric(keras.metrics.Metric):
    """Weighted mean over examples of a per-example value ``[batch]``."""

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="count")

    def per_example(self, y_true, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        values = ops.cast(self.per_example(y_true, y_pred), self.dtype)
        if sample_weight is None:
            weights = ops.ones_like(values)
        else:
            weights = ops.reshape(ops.cast(sample_weight, self.dtype), ops.shape(values))
        self.total.assign_add(ops.sum(values * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="branchzoo")
class EnsembleAccuracy(_MeanMetric):
    """Top-k accuracy of the ensemble: the mean of the modules' logits (categorical).

    After Webb et al. (2019), Eq. 2-3 (softmax of the mean logits is the
    normalised geometric mean of the modules' distributions).

    Args:
        k: top-k (1 by default).
        name, dtype: as ``keras.metrics.Metric``.

    Returns:
        The fraction of examples whose label is among the ``k`` largest mean logits.

    Example:

    >>> import numpy as np
    >>> m = EnsembleAccuracy()
    >>> m.update_state(np.array([0, 1]), np.array([[[3., 0.], [-1., 0.]], [[0., 1.], [0., 1.]]], "float32"))
    >>> float(m.result())
    1.0
    """

    def __init__(self, k=1, name="ensemble_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
        self.k = int(k)

    def per_example(self, y_true, y_pred):
        y_pred = upcast(y_pred)
        _check_pred(y_pred)
        return ops.cast(ops.in_top_k(_labels(y_true), ops.mean(y_pred, axis=1), self.k), self.dtype)

    def get_config(self):
        return {"k": self.k, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="branchzoo")
class EnsembleError(EnsembleAccuracy):
    """``1 -`` `EnsembleAccuracy`: the ensemble's (top-k) error rate.

    Example:

    >>> import numpy as np
    >>> m = EnsembleError()
    >>> m.update_state(np.array([1]), np.array([[[3., 0.], [0., 1.]]], "float32"))
    >>> float(m.result())
    1.0
    """

    def __init__(self, k=1, name="ensemble_error", dtype=None):
        super().__init__(k=k, name=name, dtype=dtype)

    def per_example(self, y_true, y_pred):
        return 1.0 - super().per_example(y_true, y_pred)


@keras.saving.register_keras_serializable(package="branchzoo")
class MemberError(_MeanMetric):
    """Mean over modules of each module's own error rate (categorical; Fig. 3's member view).

    Example:

    >>> import numpy as np
    >>> m = MemberError()
    >>> m.update_state(np.array([0]), np.array([[[3., 0.], [0., 1.]]], "float32"))   # one of 2 modules wrong
    >>> float(m.result())
    0.5
    """

    def __init__(self, name="member_error", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def per_example(self, y_true, y_pred):
        _check_pred(y_pred)
        labels = ops.expand_dims(_labels(y_true), 1)
        wrong = ops.not_equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels)
        return ops.mean(ops.cast(wrong, self.dtype), axis=1)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


class _FamilyMetric(_MeanMetric):
    def __init__(self, family="categorical", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.family = check_family(family)

    def get_config(self):
        return {"family": self.family, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="branchzoo")
class MemberLoss(_FamilyMetric):
    """Mean over modules of each module's NLL, ``mean_j NLL(eta_j)`` (Fig. 3, "average member loss").

    Args:
        family: one of `FAMILIES`.
        name, dtype: as ``keras.metrics.Metric``.

    Example:

    >>> import numpy as np
    >>> m = MemberLoss()
    >>> m.update_state(np.array([0]), np.zeros((1, 3, 4), "float32"))
    >>> round(float(m.result()), 4)   # log(4)
    1.3863
    """

    def __init__(self, family="categorical", name="member_loss", dtype=None):
        super().__init__(family=family, name=name, dtype=dtype)

    def per_example(self, y_true, y_pred):
        return ops.mean(member_nll(y_true, y_pred, self.family), axis=1)


@keras.saving.register_keras_serializable(package="branchzoo")
class EnsembleLoss(_FamilyMetric):
    """The ensemble's NLL, ``NLL(mean_j eta_j)`` (Fig. 3, "ensemble loss").

    Example:

    >>> import numpy as np
    >>> m = EnsembleLoss(family="gaussian")
    >>> m.update_state(np.array([[1.0]]), np.array([[[0.0], [2.0]]], "float32"))   # mean prediction 1.0
    >>> float(m.result())
    0.0
    """

    def __init__(self, family="categorical", name="ensemble_loss", dtype=None):
        super().__init__(family=family, name=name, dtype=dtype)

    def per_example(self, y_true, y_pred):
        return ensemble_nll(y_true, y_pred, self.family)


@keras.saving.register_keras_serializable(package="branchzoo")
class Ambiguity(_FamilyMetric):
    """The ensemble's diversity ``mean_j KL(q_bar || q_j)`` (the ambiguity term of Eq. 6).

    Example:

    >>> import numpy as np
    >>> m = Ambiguity(family="gaussian")
    >>> m.update_state(np.array([[0.0]]), np.array([[[0.0], [2.0]]], "float32"))
    >>> float(m.result())   # mean of 0.5 * (1 - 0)^2 and 0.5 * (1 - 2)^2
    0.5
    """

    def __init__(self, family="categorical", name="ambiguity", dtype=None):
        super().__init__(family=family, name=name, dtype=dtype)

    def per_example(self, y_true, y_pred):
        return ambiguity(y_pred, self.family)


def default_metrics(family="categorical"):
    """The metrics a modular ensemble is compiled with.

    Categorical: ``top1`` / ``top5`` (ensemble accuracy, named as for any
    classifier), ``member_error``, ``member_loss``, ``ensemble_loss``,
    ``ambiguity``. Other families: the three losses.
    """
    check_family(family)
    metrics = [MemberLoss(family), EnsembleLoss(family), Ambiguity(family)]
    if family == "categorical":
        metrics = [EnsembleAccuracy(1, name="top1"), EnsembleAccuracy(5, name="top5"), MemberError()] + metrics
    return metrics
