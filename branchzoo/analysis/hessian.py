"""Gradient and Hessian of a branched model, split by branch (000, Sec. 5).

After 000_a8fb4f73aa903839.txt, Eqs. (8)-(14): for ``y = sum_i f_i(x;
theta_i)`` the gradient w.r.t. a parameter of branch i is the branch's
Jacobian (the "distributive" factor) times ``dL/dy`` of the whole model (the
"collaborative" factor), and a Hessian entry between parameters of two
DIFFERENT branches has no second-derivative term of a branch:

    d^2 L / d theta_i d theta_j = (df_i/d theta_i)^T (d^2 l / dy^2) (df_j/d theta_j),  i != j,

so the Hessian is block diagonal (one block per branch) wherever those
products vanish. `loss_hessian` computes the full Hessian of a small
`BranchSum` model, `branch_parameter_index` says which branch owns each
parameter, `block_shares` measures how much of the Hessian's (squared
Frobenius) norm lies in the inter-branch blocks, and
`interbranch_share_during_training` follows that share through plain
gradient descent.

TensorFlow backend only (second derivatives through ``tf.GradientTape``);
meant for models of up to a few thousand parameters.
"""

import keras
import numpy as np

from branchzoo._validation import check_int
from branchzoo.layers import BatchedDense


def _require_tensorflow():
    if keras.config.backend() != "tensorflow":
        raise ValueError(
            "The Hessian tools differentiate twice with tf.GradientTape: they need the TensorFlow "
            f"backend. Received: backend {keras.config.backend()!r}"
        )


def _num_branches(model, num_branches):
    if num_branches is not None:
        return check_int(num_branches, "num_branches", minimum=1)
    from branchzoo.analysis.specialization import find_branch_sum

    layer = find_branch_sum(model)
    node = layer._inbound_nodes[0]
    return int(node.input_tensors[0].shape[1])


def branch_parameter_index(model, num_branches=None):
    """The branch owning every trainable parameter, flattened in `trainable_variables` order.

    The rule of the branch-major layouts built here (`branchzoo.models.branched_resnet`):
    a `BatchedDense` weight belongs to branch ``m`` along its first axis; a
    weight of any other layer splits its LAST axis into N contiguous chunks
    (convolution and dense output channels, BatchNorm channels). A variable
    whose last axis is not a multiple of N is shared (index -1).

    Args:
        model: a model with a `BranchSum` layer (or give `num_branches`).
        num_branches: N (default: read from the `BranchSum` input).

    Returns:
        int array ``[num_parameters]``.
    """
    n = _num_branches(model, num_branches)
    owner_of = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for v in layer.trainable_weights:
            owner_of.setdefault(id(v), layer)
    parts = []
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        layer = owner_of.get(id(v))
        index = np.full(shape, -1, dtype=np.int64)
        if isinstance(layer, BatchedDense) and shape and shape[0] == n:
            index[...] = np.arange(n).reshape((n,) + (1,) * (len(shape) - 1))
        elif shape and shape[-1] % n == 0:
            index[...] = np.repeat(np.arange(n), shape[-1] // n)
        parts.append(index.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _flat_variables(model):
    return list(model.trainable_variables)


def mean_squared_error(y_true, y_pred):
    """Mean squared error in the dtype of the predictions (Keras' loss objects compute in floatx)."""
    from keras import ops

    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.mean(ops.square(y_pred - ops.reshape(y_true, ops.shape(y_pred))))


def _hessian_fn(model, loss, training):
    """A compiled ``(x, y) -> (hessian rows per variable, flat gradient, loss)`` for `model`."""
    import tensorflow as tf

    variables = _flat_variables(model)

    @tf.function
    def fn(x, y):
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                value = loss(y, model(x, training=training))
            grads = inner.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
        rows = outer.jacobian(flat, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return rows, flat, value

    def run(x, y):
        rows, flat, value = fn(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        size = int(flat.shape[0])
        hessian = np.concatenate([np.asarray(r, np.float64).reshape(size, -1) for r in rows], axis=1)
        return {"hessian": hessian, "gradient": np.asarray(flat, np.float64), "loss": float(value)}

    return run


def loss_hessian(model, x, y, loss=None, training=False):
    """The Hessian of the mean loss over ``(x, y)`` w.r.t. every trainable parameter.

    Args:
        model: a Keras model (TensorFlow backend), small.
        x, y: one batch (the whole training set of a toy problem).
        loss: ``fn(y_true, y_pred) -> scalar`` (e.g. a Keras loss; those
            compute in ``floatx``); default `mean_squared_error`, in the
            model's dtype.
        training: the model's `training` flag (False keeps BatchNorm fixed).

    Returns:
        dict: ``hessian`` ``[P, P]`` (float64 numpy), ``gradient`` ``[P]``,
        ``loss`` (float).
    """
    _require_tensorflow()
    return _hessian_fn(model, loss or mean_squared_error, training)(x, y)


def block_shares(hessian, branch_index):
    """How the squared Frobenius norm of a Hessian splits over branch blocks.

    Args:
        hessian: ``[P, P]``.
        branch_index: ``[P]`` from `branch_parameter_index` (-1: shared).

    Returns:
        dict of fractions summing to 1: ``intra`` (both parameters in the same
        branch: the diagonal blocks), ``inter`` (two different branches) and
        ``shared`` (at least one shared parameter); and ``inter_to_intra``,
        the ratio of the inter- to intra-branch Frobenius norms.

    Example:

    >>> block_shares(np.ones((4, 4)), np.array([0, 0, 1, 1]))["inter"]
    0.5
    """
    h = np.asarray(hessian, dtype=np.float64)
    idx = np.asarray(branch_index).reshape(-1)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] != idx.shape[0]:
        raise ValueError(
            "`hessian` must be square [P, P] and `branch_index` [P]. "
            f"Received: hessian {h.shape}, branch_index {idx.shape}"
        )
    sq = h**2
    total = sq.sum()
    shared = (idx[:, None] < 0) | (idx[None, :] < 0)
    same = (idx[:, None] == idx[None, :]) & ~shared
    parts = {"intra": sq[same].sum(), "inter": sq[~same & ~shared].sum(), "shared": sq[shared].sum()}
    if not np.isfinite(total):  # a diverged model: say so rather than report shares of nothing
        return {"intra": float("nan"), "inter": float("nan"), "shared": float("nan"), "inter_to_intra": None}
    result = {k: float(v / total) if total > 0 else 0.0 for k, v in parts.items()}
    result["inter_to_intra"] = float(np.sqrt(parts["inter"] / parts["intra"])) if parts["intra"] > 0 else None
    return result


def interbranch_share_during_training(model, x, y, loss=None, steps=200, lr=0.05, every=20):
    """Plain gradient descent on ``(x, y)``, measuring the inter-branch Hessian share as it goes.

    Args:
        model: a small model with a `BranchSum` layer (TensorFlow backend).
        x, y: the training set (one full batch).
        loss: as in `loss_hessian` (default mean squared error).
        steps: gradient-descent steps.
        lr: learning rate.
        every: measure after every `every` steps (and at step 0).

    Returns:
        dict of lists: ``step``, ``loss``, ``inter``, ``intra``, ``shared``,
        ``gradient_norm``.
    """
    _require_tensorflow()
    import tensorflow as tf

    steps = check_int(steps, "steps", minimum=0)
    every = check_int(every, "every", minimum=1)
    loss = loss or mean_squared_error
    index = branch_parameter_index(model)
    hessian_of = _hessian_fn(model, loss, False)
    variables = list(model.trainable_variables)
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)

    @tf.function
    def descend():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        for v, g in zip(variables, tape.gradient(value, variables)):
            if g is not None:
                v.assign_sub(tf.cast(lr, v.dtype) * g)

    history = {k: [] for k in ("step", "loss", "inter", "intra", "shared", "gradient_norm")}
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            h = hessian_of(x, y)
            shares = block_shares(h["hessian"], index)
            history["step"].append(step)
            history["loss"].append(h["loss"])
            history["gradient_norm"].append(float(np.linalg.norm(h["gradient"])))
            for k in ("inter", "intra", "shared"):
                history[k].append(shares[k])
        if step < steps:
            descend()
    return history


def _axes(ax, size):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot()


def hessian_figure(hessian, branch_index, title="Loss Hessian (|H|, branch blocks outlined)", ax=None):
    """``log10 |H|`` with the parameters grouped by branch and the blocks outlined.

    Draws into `ax` when given (returns its figure), else into a new Figure.
    """
    h = np.asarray(hessian, dtype=np.float64)
    idx = np.asarray(branch_index).reshape(-1)
    order = np.argsort(np.where(idx < 0, idx.max() + 1, idx), kind="stable")
    h = np.abs(h[np.ix_(order, order)])
    fig, ax = _axes(ax, (4.4, 3.8))
    floor = max(h.max(), 1e-30) * 1e-6
    image = ax.imshow(np.log10(np.maximum(h, floor)), cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 |H|")
    for e in np.flatnonzero(np.diff(idx[order])) + 0.5:
        ax.axhline(e, color="w", lw=0.6)
        ax.axvline(e, color="w", lw=0.6)
    ax.set_xlabel("parameter (grouped by branch)")
    ax.set_ylabel("parameter")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def share_figure(history, title="Inter-branch share of the Hessian norm during training", ax=None):
    """The ``inter`` share and the loss of `interbranch_share_during_training` against the step."""
    fig, ax = _axes(ax, (4.6, 3.0))
    ax.plot(history["step"], history["inter"], "o-", ms=3, color="C0", label="inter-branch share")
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("||H_inter||^2 / ||H||^2", color="C0")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.semilogy(history["step"], history["loss"], "s--", ms=3, color="C1")
    twin.set_ylabel("loss", color="C1")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
