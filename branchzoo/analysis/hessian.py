"""Gradient and Hessian of a branched model, split by branch (000, Secs. 5 and 8).

After Brokman & Gilboa (2022), Eqs. (8)-(14): for ``y = sum_i f_i(x;
theta_i)`` the gradient w.r.t. a parameter of branch i is the branch's
Jacobian (the "distributive" factor) times ``dL/dy`` of the whole model (the
"collaborative" factor), Eqs. (10)-(11):

    dL/d theta_i = (df_i/d theta_i)^T dL/dy,

and a Hessian entry between parameters of two DIFFERENT branches has no
second-derivative term of a branch (Eq. 14):

    d^2 L / d theta_i d theta_j = (df_i/d theta_i)^T (d^2 l / dy^2) (df_j/d theta_j),  i != j,

so the Hessian is block diagonal (one block per branch) wherever those
products vanish: for an example on which a branch is silent (a ReLU branch
whose units are all off, or whose output ReLU is off) its Jacobian is zero
and so is its contribution to every inter-branch block (Sec. 8).
`gradient_split` returns the two factors per example and per branch,
`loss_hessian` computes the full Hessian of a small `BranchSum` model,
`branch_parameter_index` says which branch owns each parameter,
`block_shares` measures how much of the Hessian's (squared Frobenius) norm
lies in the inter-branch blocks, and `interbranch_share_during_training`
follows that share through plain gradient descent.

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


def _split_fn(model, loss, training):
    """A compiled ``(x, y) -> numpy arrays`` of `gradient_split` for `model`."""
    import tensorflow as tf

    from branchzoo.analysis.specialization import branch_output_model

    extractor = branch_output_model(model)
    variables = _flat_variables(model)
    zero = tf.UnconnectedGradients.ZERO

    @tf.function
    def fn(x, y):
        with tf.GradientTape(persistent=True) as tape:
            output, branches = extractor(x, training=training)
            value = loss(y, output)
        collaborative = tape.gradient(value, branches, unconnected_gradients=zero)
        gradient = tape.gradient(value, variables, unconnected_gradients=zero)
        jacobian = tape.jacobian(branches, variables, unconnected_gradients=zero)
        return value, branches, collaborative, gradient, jacobian

    def run(x, y):
        value, branches, collaborative, gradient, jacobian = fn(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        n, num = int(branches.shape[0]), int(branches.shape[1])
        jac = np.concatenate([np.asarray(j, np.float64).reshape(n, num, -1, int(np.prod(v.shape)))
                              for j, v in zip(jacobian, variables)], axis=-1)  # [n, N, K, P]
        grad = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in gradient])
        # dL/df_i is the same for every i (y depends on the sum); n * dL/dy_k is example k's dl_k/dy.
        collab = np.asarray(collaborative, np.float64).reshape(n, num, -1)
        return {"loss": float(value), "jacobian": jac, "gradient": grad, "collaborative": n * collab}

    return run


def _split_by_branch(raw, index):
    jac, collab = raw["jacobian"], raw["collaborative"]
    n, num = jac.shape[:2]
    factor = collab[:, 0]
    parameters = [np.flatnonzero(index == i) for i in range(num)]
    distributive = [jac[:, i][:, :, p] for i, p in enumerate(parameters)]
    per_example = [np.einsum("nk,nkp->np", factor, d) for d in distributive]
    gradient = [raw["gradient"][p] for p in parameters]
    errors = [np.abs(g.mean(axis=0) - a).max() if a.size else 0.0 for g, a in zip(per_example, gradient)]
    cross = [np.abs(jac[:, j][:, :, p]).max() for i, p in enumerate(parameters) for j in range(num)
             if j != i and p.size]
    return {
        "collaborative": factor,
        "distributive": distributive,
        "per_example_gradient": per_example,
        "gradient": gradient,
        "parameters": parameters,
        "max_error": float(max(errors, default=0.0)),
        "cross_jacobian": float(max(cross, default=0.0)),
        "collaborative_spread": float(np.abs(collab - collab[:, :1]).max()),
        "loss": raw["loss"],
    }


def gradient_split(model, x, y, loss=None, training=False):
    """The gradient of a `BranchSum` model split per example into its distributive and collaborative factors.

    After Brokman & Gilboa (2022), Eqs. (5)-(6) and (10)-(11): for ``y =
    sum_i f_i(x; theta_i)`` and example k,

        dl_k / d theta_i = (d f_i(x_k) / d theta_i)^T (dl_k / dy(x_k)),

    the first factor (distributive: branch i's Jacobian w.r.t. its own
    parameters) depends on the branch alone, the second (collaborative:
    the loss's derivative at the whole model's output) is the same for
    every branch. ``y`` here is the sum of the branches: where `BranchSum`
    clamps or adds a pass-through term, the collaborative factor is taken
    at the sum, before them (autodiff through the rest of the model).

    The loss is taken to be the mean over the batch of per-example losses
    ``l_k`` (as `mean_squared_error` and Keras' losses are), so the
    collaborative factor of example k is ``n * dL/dy(x_k)`` for the batch
    loss ``L``; the mean over the batch of the per-example products is then
    the gradient of ``L``, which ``max_error`` checks against autodiff.
    Parameters no branch owns (`branch_parameter_index` -1) are left out.

    Args:
        model: a model with one `BranchSum` layer (TensorFlow backend), small.
        x, y: one batch.
        loss: ``fn(y_true, y_pred) -> scalar``, a mean over the batch
            (default `mean_squared_error`).
        training: the model's `training` flag.

    Returns:
        dict (float64 numpy), with n examples, K outputs per branch (the
        trailing axes of the branch outputs, flattened) and P_i parameters
        of branch i (flattened in `trainable_variables` order):

        - ``collaborative``: ``[n, K]``, dl_k/dy at example k;
        - ``distributive``: list of N arrays ``[n, K, P_i]``, d f_i(x_k) / d theta_i;
        - ``per_example_gradient``: list of N arrays ``[n, P_i]``, their
          product ``distributive[i][k]^T collaborative[k]``;
        - ``gradient``: list of N arrays ``[P_i]``, the autodiff gradient
          of the batch loss w.r.t. theta_i;
        - ``parameters``: list of N index arrays into the flat parameter
          vector (the positions of theta_i);
        - ``max_error``: the largest ``|mean_k per_example_gradient - gradient|``
          (round-off when the factorisation holds);
        - ``cross_jacobian``: the largest ``|d f_j / d theta_i|``, ``j != i``
          (0 when every branch depends on its own parameters only);
        - ``collaborative_spread``: the largest difference between the
          dL/df_i of two branches (0 when the output depends on their sum);
        - ``loss``: the batch loss.

    Example:

    >>> import keras
    >>> from branchzoo.models import branched_mlp
    >>> model = branched_mlp(3, hidden_units=(2,), num_classes=1, input_shape=(2,), dtype="float64")
    >>> split = gradient_split(model, np.ones((4, 2)), np.zeros((4, 1)))
    >>> split["distributive"][0].shape, split["collaborative"].shape
    ((4, 1, 9), (4, 1))
    >>> split["max_error"] < 1e-12
    True
    """
    _require_tensorflow()
    index = branch_parameter_index(model)
    return _split_by_branch(_split_fn(model, loss or mean_squared_error, training)(x, y), index)


def silent_fraction(split):
    """The share of (example, branch) pairs whose distributive factor is exactly zero (Sec. 8).

    Args:
        split: the result of `gradient_split`.

    Returns:
        float in [0, 1]: such a pair adds nothing to any Hessian block of
        its branch, inter-branch blocks included (Eq. 14).
    """
    zero = np.stack([np.all(d == 0, axis=(1, 2)) for d in split["distributive"]], axis=1)  # [n, N]
    return float(zero.mean())


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
        ``gradient_norm``, ``silent`` (`silent_fraction`: the share of
        (example, branch) pairs with a zero distributive factor).
    """
    _require_tensorflow()
    import tensorflow as tf

    steps = check_int(steps, "steps", minimum=0)
    every = check_int(every, "every", minimum=1)
    loss = loss or mean_squared_error
    index = branch_parameter_index(model)
    hessian_of = _hessian_fn(model, loss, False)
    split_of = _split_fn(model, loss, False)
    variables = list(model.trainable_variables)
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)

    @tf.function
    def descend():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        for v, g in zip(variables, tape.gradient(value, variables)):
            if g is not None:
                v.assign_sub(tf.cast(lr, v.dtype) * g)

    history = {k: [] for k in ("step", "loss", "inter", "intra", "shared", "gradient_norm", "silent")}
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            h = hessian_of(x, y)
            shares = block_shares(h["hessian"], index)
            history["step"].append(step)
            history["loss"].append(h["loss"])
            history["gradient_norm"].append(float(np.linalg.norm(h["gradient"])))
            for k in ("inter", "intra", "shared"):
                history[k].append(shares[k])
            history["silent"].append(silent_fraction(_split_by_branch(split_of(x, y), index)))
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
    """The ``inter`` share, the ``silent`` share (when recorded) and the loss against the step.

    Plots a history of `interbranch_share_during_training`.
    """
    fig, ax = _axes(ax, (4.6, 3.0))
    ax.plot(history["step"], history["inter"], "o-", ms=3, color="C0", label="inter-branch share of ||H||^2")
    if history.get("silent"):
        ax.plot(history["step"], history["silent"], "^:", ms=3, color="C2", label="silent (example, branch) pairs")
        ax.legend(fontsize=7, loc="center right")
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("share", color="C0")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.semilogy(history["step"], history["loss"], "s--", ms=3, color="C1")
    twin.set_ylabel("loss", color="C1")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
