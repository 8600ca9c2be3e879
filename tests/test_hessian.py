"""Gradient and Hessian of a branched model split by branch (000, Secs. 5 and 8), against float64 NumPy by hand."""

import json

import keras
import numpy as np
import pytest

from branchzoo.analysis.hessian import (block_shares, branch_parameter_index, gradient_split, hessian_figure,
                                        interbranch_share_during_training, loss_hessian, share_figure,
                                        silent_fraction)
from branchzoo.analysis.specialization import branch_output_model
from branchzoo.models import branched_mlp

RNG = np.random.default_rng(0)
N, D, H = 3, 2, 2  # branches, inputs, hidden units per branch


def _model():
    keras.utils.set_random_seed(3)
    return branched_mlp(N, hidden_units=(H,), num_classes=1, input_shape=(D,), activation="relu", dtype="float64")


def _unpack(theta):
    """Flat parameters (trainable_variables order) -> hidden kernel/bias, head kernel/bias."""
    sizes = [D * N * H, N * H, N * H, N]
    parts = np.split(theta, np.cumsum(sizes)[:-1])
    return parts[0].reshape(D, N * H), parts[1], parts[2].reshape(N, H, 1), parts[3].reshape(N, 1)


def _branch_outputs(theta, x):
    """[n, N] outputs of each branch, float64, one branch at a time."""
    w1, b1, w2, b2 = _unpack(theta)
    out = []
    for i in range(N):
        hidden = np.maximum(x @ w1[:, i * H:(i + 1) * H] + b1[i * H:(i + 1) * H], 0.0)
        out.append((hidden @ w2[i] + b2[i])[:, 0])
    return np.stack(out, axis=1)


def _loss(theta, x, y):
    return np.mean((_branch_outputs(theta, x).sum(axis=1) - y[:, 0]) ** 2)


def _theta(model):
    return np.concatenate([np.asarray(v).reshape(-1) for v in model.trainable_variables])


def test_hessian_matches_finite_differences():
    model = _model()
    x = RNG.standard_normal((5, D))
    y = RNG.standard_normal((5, 1))
    got = loss_hessian(model, x, y)
    theta = _theta(model)
    p, eps = theta.size, 1e-4
    assert got["hessian"].shape == (p, p) and p == N * (D * H + H + H + 1)
    assert got["loss"] == pytest.approx(_loss(theta, x, y), rel=1e-12)
    expected = np.zeros((p, p))
    for i in range(p):
        for j in range(i, p):
            def f(di, dj):
                t = theta.copy()
                t[i] += di
                t[j] += dj
                return _loss(t, x, y)

            expected[i, j] = expected[j, i] = (f(eps, eps) - f(eps, -eps) - f(-eps, eps) + f(-eps, -eps)) / (4 * eps**2)
    np.testing.assert_allclose(got["hessian"], expected, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(got["hessian"], got["hessian"].T, atol=1e-12)


def test_branch_parameter_index_by_hand():
    index = branch_parameter_index(_model())
    hidden_kernel = np.tile([0, 0, 1, 1, 2, 2], D)  # [D, N*H]: last axis in branch chunks
    hidden_bias = [0, 0, 1, 1, 2, 2]
    head_kernel = [0, 0, 1, 1, 2, 2]  # [N, H, 1]: first axis
    head_bias = [0, 1, 2]
    assert index.tolist() == [*hidden_kernel, *hidden_bias, *head_kernel, *head_bias]


def test_inter_branch_blocks_are_products_of_branch_jacobians():
    """Eq. (14): for i != j, d2L/dtheta_i dtheta_j = (2/n) sum_x J_i(x)^T J_j(x) under the square loss."""
    model = _model()
    x = RNG.standard_normal((6, D))
    y = RNG.standard_normal((6, 1))
    hess = loss_hessian(model, x, y)["hessian"]
    index = branch_parameter_index(model)
    theta = _theta(model)
    eps = 1e-6
    jac = np.zeros((6, theta.size))  # d f_{branch(p)}(x) / d theta_p, central differences
    for p in range(theta.size):
        t_plus, t_minus = theta.copy(), theta.copy()
        t_plus[p] += eps
        t_minus[p] -= eps
        diff = (_branch_outputs(t_plus, x) - _branch_outputs(t_minus, x)) / (2 * eps)
        jac[:, p] = diff[:, index[p]]
    for i in range(N):
        for j in range(N):
            rows, cols = index == i, index == j
            if i != j:
                expected = 2 / 6 * jac[:, rows].T @ jac[:, cols]
                np.testing.assert_allclose(hess[np.ix_(rows, cols)], expected, atol=1e-7)
    # Within a branch the second derivative of the branch adds a term: the blocks differ.
    within = 2 / 6 * jac[:, index == 0].T @ jac[:, index == 0]
    assert np.abs(hess[np.ix_(index == 0, index == 0)] - within).max() > 1e-3


def _half_square(y_true, y_pred):
    """0.5 * mean (y - t)^2: its per-example derivative in y is (y - t)."""
    return 0.5 * keras.ops.mean(keras.ops.square(y_pred - y_true))


def _scalar_relu_branches():
    """Three scalar branches f_i(x) = relu(w_i x + b_i), summed (Sec. 4.1's toy branches with ReLU)."""
    model = branched_mlp(3, hidden_units=(), num_classes=1, input_shape=(1,), output_activation="relu",
                         dtype="float64")
    w, b = np.array([1.0, -2.0, 0.5]), np.array([0.5, 1.0, -1.0])
    model.set_weights([w.reshape(3, 1, 1), b.reshape(3, 1)])
    return model, w, b


X_TOY = np.array([[-1.0], [0.25], [1.0], [3.0]])
T_TOY = np.array([[0.0], [1.0], [2.0], [-1.0]])


def test_gradient_split_by_hand_for_scalar_relu_branches():
    """Eqs. 5-6 / 10-11: dl_k/dw_i = x_k 1[w_i x_k + b_i > 0] (y_k - t_k), dl_k/db_i = 1[...] (y_k - t_k)."""
    model, w, b = _scalar_relu_branches()
    x, t = X_TOY[:, 0], T_TOY[:, 0]
    on = (w[None, :] * x[:, None] + b[None, :] > 0).astype(np.float64)  # [n, N]
    y = np.sum(np.maximum(w[None, :] * x[:, None] + b[None, :], 0.0), axis=1)
    collaborative = y - t  # dl_k/dy for l_k = 0.5 (y_k - t_k)^2
    split = gradient_split(model, X_TOY, T_TOY, loss=_half_square)
    np.testing.assert_allclose(split["collaborative"][:, 0], collaborative, rtol=1e-12)
    assert collaborative.tolist() == [3.0, 0.25, -0.5, 5.0]  # y = (3, 1.25, 1.5, 4) by hand
    for i in range(3):
        assert split["parameters"][i].tolist() == [i, 3 + i]  # kernel [3, 1, 1] then bias [3, 1]
        jacobian = np.stack([x * on[:, i], on[:, i]], axis=1)  # [n, (w_i, b_i)]
        np.testing.assert_allclose(split["distributive"][i][:, 0, :], jacobian, rtol=1e-12)
        expected = collaborative[:, None] * jacobian
        np.testing.assert_allclose(split["per_example_gradient"][i], expected, rtol=1e-12)
        np.testing.assert_allclose(split["gradient"][i], expected.mean(axis=0), rtol=1e-12, atol=1e-15)
    assert split["max_error"] < 1e-14 and split["cross_jacobian"] == 0 and split["collaborative_spread"] == 0
    assert split["loss"] == pytest.approx(0.5 * np.mean((y - t) ** 2), rel=1e-12)
    assert silent_fraction(split) == pytest.approx(1 - on.mean())
    assert on.sum(axis=0).tolist() == [3, 2, 1]  # branch 2 is on for x = 3 only


def test_gradient_split_against_per_example_autodiff_with_a_clamp():
    """Each per-example product is the gradient of that example's loss; the clamp is in the collaborative factor."""
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    model = branched_mlp(2, hidden_units=(3,), num_classes=4, input_shape=(2,), logit_clamp=0.4, dtype="float64")
    x = RNG.standard_normal((5, 2))
    t = RNG.standard_normal((5, 4))
    split = gradient_split(model, x, t)
    index = branch_parameter_index(model)
    assert split["max_error"] < 1e-12 and split["cross_jacobian"] == 0
    for k in range(5):
        with tf.GradientTape() as tape:
            y = model(x[k:k + 1])
            value = tf.reduce_mean(tf.square(y - t[k:k + 1]))  # l_k of the mean squared error
        grads = tape.gradient(value, model.trainable_variables)
        flat = np.concatenate([np.asarray(g).reshape(-1) for g in grads])
        for i in range(2):
            np.testing.assert_allclose(split["per_example_gradient"][i][k], flat[index == i], atol=1e-12)
    # the factor is taken at the sum: zero where the clamp is active, 2 (y - t) / K elsewhere
    _, branches = branch_output_model(model)(x)
    summed = np.asarray(branches, np.float64).sum(axis=1)
    clipped = np.abs(summed) > 0.4
    assert clipped.any() and not clipped.all()
    expected = np.where(clipped, 0.0, 2 * (np.clip(summed, -0.4, 0.4) - t) / 4)
    np.testing.assert_allclose(split["collaborative"], expected, atol=1e-12)


def test_interbranch_hessian_blocks_of_scalar_relu_branches_by_hand():
    """Eq. 14 with relu'' = 0: H = (1/n) sum_k J_k^T J_k; a pair of branches never on together has a zero block."""
    model, w, b = _scalar_relu_branches()
    x = X_TOY[:, 0]
    on = (w[None, :] * x[:, None] + b[None, :] > 0).astype(np.float64)
    jac = np.concatenate([x[:, None] * on, on], axis=1)  # [n, (w_0, w_1, w_2, b_0, b_1, b_2)]
    expected = jac.T @ jac / len(x)
    hessian = loss_hessian(model, X_TOY, T_TOY, loss=_half_square)["hessian"]
    np.testing.assert_allclose(hessian, expected, atol=1e-12)
    # branch 1 is on for x = -1, 0.25 and branch 2 for x = 3 only: their block is zero
    assert np.all(hessian[np.ix_([1, 4], [2, 5])] == 0)
    assert np.abs(hessian[np.ix_([0, 3], [1, 4])]).max() > 0.1


def test_linear_branches_share_one_minus_one_over_n():
    """Linear branches have identical Jacobians: every block is equal, the inter share is 1 - 1/N."""
    for n in (2, 3, 5):
        model = branched_mlp(n, hidden_units=(), num_classes=1, input_shape=(3,), dtype="float64")
        x = RNG.standard_normal((7, 3))
        y = RNG.standard_normal((7, 1))
        shares = block_shares(loss_hessian(model, x, y)["hessian"], branch_parameter_index(model))
        assert shares["inter"] == pytest.approx(1 - 1 / n, abs=1e-12)
        assert shares["shared"] == 0 and shares["intra"] == pytest.approx(1 / n, abs=1e-12)


def test_block_shares_by_hand_and_errors():
    h = np.array([[1.0, 2.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 4.0]])
    shares = block_shares(h, np.array([0, 1, -1]))
    total = 1 + 4 + 4 + 9 + 1 + 1 + 16  # squared entries
    assert shares["intra"] == pytest.approx((1 + 9) / total)
    assert shares["inter"] == pytest.approx((4 + 4) / total)
    assert shares["shared"] == pytest.approx((1 + 1 + 16) / total)
    with pytest.raises(ValueError, match="`hessian` must be square"):
        block_shares(np.ones((2, 3)), [0, 1])


def test_share_during_training_and_figures():
    model = _model()
    x = RNG.uniform(-1, 1, (8, D))
    y = np.sin(2 * x[:, :1]) + x[:, 1:] ** 2
    history = interbranch_share_during_training(model, x, y, steps=30, lr=0.1, every=10)
    assert history["step"] == [0, 10, 20, 30]
    assert history["loss"][-1] < history["loss"][0]
    assert history["silent"] == [0.0] * 4  # a linear head's bias: never a zero Jacobian
    for inter, intra in zip(history["inter"], history["intra"]):
        assert 0 < inter < 1 and inter + intra == pytest.approx(1.0)
    index = branch_parameter_index(model)
    assert hessian_figure(loss_hessian(model, x, y)["hessian"], index).axes
    assert share_figure(history).axes


def test_needs_a_branch_sum_model():
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="exactly one BranchSum layer"):
        branch_parameter_index(plain)
    assert branch_parameter_index(plain, num_branches=1).tolist() == [0, 0, 0]


def test_experiment_script_writes_figure_and_table(tmp_path):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("branch_hessian", f"{REPO}/experiments/branch_hessian.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--branches", "2", "--hidden", "2", "--steps", "4", "--every", "2", "--seeds", "0,1",
                 "--output", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branch_hessian.json", "branch_hessian.md",
                                                          "branch_hessian.png"]
    final = json.loads((tmp_path / "branch_hessian.json").read_text())["final"]
    assert [(r["output_activation"], r["seed"]) for r in final] == [("none", 0), ("none", 1), ("relu", 0), ("relu", 1)]
    table = (tmp_path / "branch_hessian.md").read_text()
    assert "| 0 |" in table and "| 4 |" in table and "activation='relu'" in table
    finals = [line for line in table.splitlines() if line.startswith(("| none |", "| relu |"))]
    assert [line.split(" | ")[:2] for line in finals] == [["| none", "0"], ["| none", "1"], ["| relu", "0"],
                                                          ["| relu", "1"]]
    assert "## Output activation none, seed 0" in table and "## Output activation relu, seed 0" in table
