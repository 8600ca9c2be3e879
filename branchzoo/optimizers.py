"""Optimizers with the papers' update rules: coupled L2 weight decay and plain gradient steps.

Keras 3 optimizers apply ``weight_decay`` DECOUPLED (``w -= lr * wd * w``
after the step). The reference code of the papers in this zoo (PyTorch's
``SGD(weight_decay=...)``: the ResNeXt, DenseNet and MPNet recipes) adds
``wd * w`` to the gradient BEFORE momentum; with momentum 0.9 that decay
acts about ten times as strongly. `SGD` and `Adam` here take ``l2`` for the
coupled form (Keras' own ``weight_decay`` stays available, decoupled).

``plain_step`` names variables (fnmatch patterns on ``variable.path``) that
take a plain gradient step ``v <- v - eta * dL/dv`` at their own constant
rate ``eta``: no momentum, no weight decay, no schedule; their constraint
still applies afterwards. GatedConnect's real-valued gates follow this rule
(Ahmed & Torresani 2017, Algorithm 1: ``g <- clip(g - eta dL/dg)``).

    >>> import numpy as np, keras
    >>> w = keras.Variable(np.array([1.0, -2.0], "float32"), name="w")
    >>> opt = SGD(learning_rate=0.1, momentum=0.0, l2=0.5)
    >>> opt.apply([keras.ops.zeros((2,))], [w])
    >>> np.round(keras.ops.convert_to_numpy(w).astype(float), 4).tolist()   # w - 0.1 * 0.5 * w
    [0.95, -1.9]
"""

import fnmatch

import keras
from keras import ops


def _check_rate(value, name):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a non-negative number. Received: {name}={value!r}") from None
    if not value >= 0:
        raise ValueError(f"`{name}` must be a non-negative number. Received: {name}={value!r}")
    return value


def check_plain_step(plain_step):
    """``{pattern: rate}`` with string patterns and non-negative rates, or {} for None."""
    if plain_step is None:
        return {}
    if not isinstance(plain_step, dict) or not all(isinstance(k, str) for k in plain_step):
        raise ValueError(
            "`plain_step` must map variable path patterns to learning rates, e.g. "
            f'{{"*_gate/gates": 0.05}}. Received: plain_step={plain_step!r}'
        )
    return {k: _check_rate(v, f"plain_step[{k!r}]") for k, v in plain_step.items()}


class _PaperUpdates:
    """Coupled L2 and per-variable plain steps on top of a Keras optimizer's `update_step`."""

    def _init_paper_updates(self, l2, plain_step):
        self.l2 = _check_rate(l2 or 0.0, "l2")
        self.plain_step = check_plain_step(plain_step)
        self._plain_rates = {}

    def build(self, variables):
        super().build(variables)
        self._plain_rates = {}
        for variable in variables:
            rate = plain_step_rate(self.plain_step, variable.path)
            if rate is not None:
                self._plain_rates[self._get_variable_index(variable)] = rate

    def update_step(self, gradient, variable, learning_rate):
        rate = self._plain_rates.get(self._get_variable_index(variable))
        if rate is not None:
            gradient = ops.cast(gradient, variable.dtype)
            self.assign_sub(variable, ops.multiply(gradient, ops.cast(rate, variable.dtype)))
            return
        if self.l2:
            gradient = ops.add(ops.cast(gradient, variable.dtype),
                               ops.multiply(variable, ops.cast(self.l2, variable.dtype)))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update({"l2": self.l2, "plain_step": dict(self.plain_step)})
        return config


def plain_step_rate(plain_step, path):
    """The plain-step rate of the variable at `path` (first matching pattern), else None."""
    for pattern, rate in plain_step.items():
        if fnmatch.fnmatch(path, pattern):
            return rate
    return None


@keras.saving.register_keras_serializable(package="branchzoo")
class SGD(_PaperUpdates, keras.optimizers.SGD):
    """Keras SGD (momentum, Nesterov) with coupled L2 decay and plain-step variables.

    The step of a variable ``w`` with gradient ``g`` is Keras SGD's on
    ``g + l2 * w``; with a constant rate this equals PyTorch's
    ``SGD(momentum, nesterov, weight_decay=l2)`` (the two momentum forms
    differ only in the few steps after a learning-rate change).
    Variables matching a ``plain_step`` pattern take ``w -= rate * g``.

    Args:
        learning_rate, momentum, nesterov: as `keras.optimizers.SGD`.
        l2: coupled weight decay (added to the gradient before momentum).
        plain_step: ``{fnmatch pattern on variable.path: constant rate}``.
        **kwargs: the rest of `keras.optimizers.SGD` (``weight_decay`` is
            Keras' decoupled decay).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, l2=0.0, plain_step=None,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self._init_paper_updates(l2, plain_step)


@keras.saving.register_keras_serializable(package="branchzoo")
class Adam(_PaperUpdates, keras.optimizers.Adam):
    """Keras Adam with coupled L2 decay (PyTorch's ``Adam(weight_decay=...)``) and plain steps."""

    def __init__(self, learning_rate=0.001, l2=0.0, plain_step=None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._init_paper_updates(l2, plain_step)
