"""Hessian of a branched model split by branch (000, Sec. 5), against float64 NumPy by hand."""

import keras
import numpy as np
import pytest

from branchzoo.analysis.hessian import (block_shares, branch_parameter_index, hessian_figure,
                                        interbranch_share_during_training, loss_hessian, share_figure)
from branchzoo.models import branched_mlp

RNG = np.random.default_rng(0)
N, D, H = 3, 2, 2  # branches, inputs, hidden units per branch


def _model():
    keras.utils.set_random_seed(3)
    return branched_mlp(N, hidden_units=(H,), num_classes=1, input_shape=(D,), dtype="float64")


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
        hidden = np.tanh(x @ w1[:, i * H:(i + 1) * H] + b1[i * H:(i + 1) * H])
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
    script.main(["--branches", "2", "--hidden", "2", "--steps", "4", "--every", "2", "--output", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branch_hessian.md", "branch_hessian.png"]
    table = (tmp_path / "branch_hessian.md").read_text()
    assert "| 0 |" in table and "| 4 |" in table
