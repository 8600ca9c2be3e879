"""experiments/branch_toy.py: plain GD on sums of scalar LeakyReLU branches (000, Sec. 4.1)."""

import importlib.util
import os

import numpy as np
import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("branch_toy", os.path.join(REPO, "experiments", "branch_toy.py"))
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


def _numpy_loss(w, b, x, y, alpha):
    """One network's mean squared error, float64, written out on its own."""
    out = np.zeros_like(x)
    for wi, bi in zip(w, b):
        z = wi * x + bi
        out += np.where(z > 0, z, alpha * z)
    return np.mean((out - y) ** 2)


def test_one_step_is_gradient_descent_on_the_loss():
    """w1 = w0 - lr * dL/dw, the gradient taken by central finite differences in float64."""
    x, y = toy.toy_problem("square1d")
    w0, b0 = toy.initial_parameters(3, 4, seed=5)
    lr, alpha, eps = 0.01, 0.01, 1e-6
    w1, b1 = toy.train_toy(x, y, w0, b0, steps=1, lr=lr, alpha=alpha, dtype="float64")
    for r in range(3):
        for i in range(4):
            for which in ("w", "b"):
                def loss(delta):
                    w, b = w0[r].copy(), b0[r].copy()
                    (w if which == "w" else b)[i] += delta
                    return _numpy_loss(w, b, x, y, alpha)

                grad = (loss(eps) - loss(-eps)) / (2 * eps)
                before, after = (w0, w1) if which == "w" else (b0, b1)
                assert after[r, i] == pytest.approx(before[r, i] - lr * grad, abs=1e-8)


def test_many_steps_match_a_float64_numpy_loop():
    x, y = toy.toy_problem("xor1d")
    w, b = toy.initial_parameters(5, 3, seed=1)
    got_w, got_b = toy.train_toy(x, y, w, b, steps=200, lr=0.01, alpha=0.01, dtype="float64")
    w, b = w.copy(), b.copy()
    for _ in range(200):  # the same GD, one network at a time, chain rule by hand
        for r in range(5):
            z = w[r][:, None] * x[None] + b[r][:, None]
            slope = np.where(z > 0, 1.0, 0.01)
            residual = (z * slope).sum(0) - y
            dz = 2 / len(x) * residual[None] * slope
            w[r] -= 0.01 * (dz * x[None]).sum(1)
            b[r] -= 0.01 * dz.sum(1)
    np.testing.assert_allclose(got_w, w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_b, b, rtol=1e-10, atol=1e-12)
    assert toy.toy_losses(got_w, got_b, x, y, 0.01).shape == (5,)


def test_toy_problems():
    x, y = toy.toy_problem("xor1d")
    assert x.tolist() == [-2, -1, 1, 2] and y.tolist() == [2, 1, 1, 2]
    design = np.column_stack([x, np.ones(4)])  # no line fits it: least-squares residual 4 * 0.5^2
    assert np.linalg.lstsq(design, y, rcond=None)[1][0] == pytest.approx(1.0)
    # Two opposite branches do: LReLU(c x) + LReLU(-c x) = |x| for c = 1 / (1 - alpha).
    c = 1 / (1 - 0.01)
    assert _numpy_loss([c, -c], [0.0, 0.0], x, y, 0.01) == pytest.approx(0.0, abs=1e-20)
    x, y = toy.toy_problem("square1d")
    assert len(x) == 21 and x[0] == -1 and x[-1] == 1 and np.allclose(y, x**2)
    with pytest.raises(ValueError, match="`problem` must be one of"):
        toy.toy_problem("xor2d")
    assert toy.parse_branches("2-5,10") == [2, 3, 4, 5, 10]
    with pytest.raises(ValueError, match="--branches"):
        toy.parse_branches("0-3")


def test_success_rate_rises_with_the_number_of_branches():
    """A reduced run of Fig. 3 (left): 300 initialisations, 4,000 steps."""
    rows, example = toy.run_problem("xor1d", [2, 4, 12], num_runs=300, steps=4000, example_branches=12,
                                    log=lambda *_: None)
    rates = [r["success_rate"] for r in rows]
    assert rates[0] < 0.9 and rates[2] > 0.97  # 2 branches often fail, 12 almost never
    assert rates[0] < rates[1] <= rates[2]
    assert example.shape == (12, 12) and np.allclose(example, example.T)
    assert rows[2]["active_branches"] < 12  # some branches of a trained network stay silent


def test_script_writes_figure_and_table(tmp_path):
    toy.main(["--problems", "square1d", "--branches", "2,3", "--inits", "20", "--steps", "50",
              "--example-branches", "3", "--threshold", "1", "--output", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["branch_toy.csv", "branch_toy.md", "branch_toy.png"]
    table = (tmp_path / "branch_toy.md").read_text()
    assert "| square1d | 3 |" in table and "--inits 20" in table
    assert (tmp_path / "branch_toy.png").stat().st_size < 400_000
