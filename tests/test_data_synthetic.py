"""Synthetic datasets: the 1-D toy problems of paper 000 and the generator registry."""

import numpy as np
import pytest
from data_helpers import home  # noqa: F401  (the autouse fixture)

from branchzoo import data


def leaky_relu(z, alpha):
    return np.where(z > 0, z, alpha * z)


def test_toy_xor1d_is_a_1d_xor_no_line_fits():
    x, y = data.synthetic_arrays("toy_xor1d")
    assert x.dtype == np.float64 and x.shape == (4, 1) and y.shape == (4, 1)
    np.testing.assert_array_equal(x[:, 0], [-2.0, -1.0, 1.0, 2.0])
    np.testing.assert_array_equal(y[:, 0], [2.0, 1.0, 1.0, 2.0])
    # Balanced, no target 0 (paper: 0 is the null contribution of a sum).
    assert sorted(np.unique(y, return_counts=True)[1]) == [2, 2] and not np.any(y == 0)
    # No line fits it: the best is y = 1.5, off by 0.5 at each point ...
    design = np.column_stack([x[:, 0], np.ones(4)])
    residual = np.linalg.lstsq(design, y[:, 0], rcond=None)[1]
    assert residual[0] == pytest.approx(4 * 0.5**2)
    # ... but two LeakyReLU branches do: LReLU(c x) + LReLU(-c x) = |x| for c = 1 / (1 - alpha).
    alpha = 0.2
    c = 1.0 / (1.0 - alpha)
    np.testing.assert_allclose(leaky_relu(c * x, alpha) + leaky_relu(-c * x, alpha), y, atol=1e-12)
    # No held-out data in the paper: the test split is the training set.
    np.testing.assert_array_equal(data.synthetic_arrays("toy_xor1d", "test")[1], y)


def test_toy_xor1d_parameters():
    x, y = data.synthetic_arrays("toy_xor1d", inputs=[3, -0.5, 0.5, -3, 1.5, -1], targets=(-1, 1))
    np.testing.assert_array_equal(x[:, 0], [3, -0.5, 0.5, -3, 1.5, -1])
    np.testing.assert_array_equal(y[:, 0], [1, -1, -1, 1, 1, -1])
    with pytest.raises(ValueError, match="`inputs`.*inner"):
        data.synthetic_arrays("toy_xor1d", inputs=[-2, -1, 1, 1])
    with pytest.raises(ValueError, match="`inputs`.*even"):
        data.synthetic_arrays("toy_xor1d", inputs=[1, 2, 3])
    with pytest.raises(ValueError, match="`targets`"):
        data.synthetic_arrays("toy_xor1d", targets=(1, 2, 3))


def test_toy_regression1d_grid_and_uniform():
    x, y = data.synthetic_arrays("toy_regression1d")
    grid = np.linspace(-1.0, 1.0, 21)
    np.testing.assert_allclose(x[:, 0], grid, atol=1e-15)
    np.testing.assert_allclose(y[:, 0], np.sin(np.pi * grid), atol=1e-12)
    x_test, y_test = data.synthetic_arrays("toy_regression1d", "test")
    np.testing.assert_allclose(x_test[:, 0], (grid[:-1] + grid[1:]) / 2, atol=1e-15)
    np.testing.assert_allclose(y_test[:, 0], np.sin(np.pi * x_test[:, 0]), atol=1e-12)

    square = data.synthetic_arrays("toy_regression1d", function="square", num_points=5,
                                   interval=(0, 2))
    np.testing.assert_allclose(square[1][:, 0], [0, 0.25, 1, 2.25, 4])

    a = data.synthetic_arrays("toy_regression1d", sampling="uniform", data_seed=1, noise=0.1)
    b = data.synthetic_arrays("toy_regression1d", sampling="uniform", data_seed=1, noise=0.1)
    c = data.synthetic_arrays("toy_regression1d", sampling="uniform", data_seed=2, noise=0.1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.all((a[0] >= -1) & (a[0] <= 1))
    noise = a[1][:, 0] - np.sin(np.pi * a[0][:, 0])
    assert 0.0 < np.abs(noise).max() < 0.5
    test = data.synthetic_arrays("toy_regression1d", "test", sampling="uniform", data_seed=1,
                                 noise=0.1)
    np.testing.assert_allclose(test[1][:, 0], np.sin(np.pi * test[0][:, 0]), atol=1e-12)


@pytest.mark.parametrize("params, words", [
    ({"num_points": 1}, ["`num_points`", "1"]),
    ({"function": "cos"}, ["`function`", "'cos'"]),
    ({"sampling": "sobol"}, ["`sampling`", "'sobol'"]),
    ({"noise": -1}, ["`noise`", "-1"]),
    ({"interval": (1, -1)}, ["`interval`", "low < high"]),
    ({"data_seed": -3}, ["`data_seed`", "-3"]),
    ({"points": 3}, ["points", "num_points"]),
])
def test_bad_generator_parameters_are_named(params, words):
    with pytest.raises(ValueError) as info:
        data.synthetic_arrays("toy_regression1d", **params)
    for word in words:
        assert word in str(info.value)


def test_synthetic_data_through_load_dataset():
    x, y = data.synthetic_arrays("toy_regression1d", num_points=9)
    ds = data.load_dataset("toy_regression1d", "train", 4, shuffle=False, num_points=9)
    batches = list(ds)
    assert [tuple(b[0].shape) for b in batches] == [(4, 1), (4, 1), (1, 1)]
    assert batches[0][0].dtype.name == "float32" and batches[0][1].dtype.name == "float32"
    # Raw values: neither normalised nor augmented.
    np.testing.assert_allclose(np.concatenate([b[0].numpy() for b in batches]), x, atol=1e-7)
    np.testing.assert_allclose(np.concatenate([b[1].numpy() for b in batches]), y, atol=1e-7)
    shuffled = [np.concatenate([b[1].numpy() for b in data.load_dataset(
        "toy_regression1d", "train", 4, seed=1, epochs=1, num_points=9)]) for _ in range(2)]
    np.testing.assert_array_equal(*shuffled)
    assert sorted(shuffled[0][:, 0]) == sorted(y[:, 0].astype(np.float32))

    info = data.dataset_info("toy_xor1d")
    assert info.kind == "synthetic" and info.num_classes == 0 and info.class_names == ()
    assert info.image_shape == (1,) and info.target_shape == (1,)
    assert info.num_examples == {"train": 4, "test": 4}
    assert info.options["targets"] == [1.0, 2.0]
    arrays = data.load_arrays("toy_xor1d", "train")
    assert arrays[0].dtype == np.float32 and arrays[2] == ()


@pytest.mark.parametrize("kwargs, words", [
    ({"augment": True}, ["`augment`", "synthetic"]),
    ({"pairing": "target_class"}, ["`pairing`", "'target_class'"]),
    ({"classes": ["a"]}, ["`classes`", "synthetic"]),
    ({"normalization": "unit"}, ["`normalization`", "'unit'"]),
])
def test_synthetic_data_refuses_image_options(kwargs, words):
    with pytest.raises(ValueError) as info:
        data.load_dataset("toy_xor1d", "train", 4, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_register_a_new_synthetic_problem(monkeypatch):
    from branchzoo.data import specs

    monkeypatch.setattr(specs, "_SPECS", dict(specs._SPECS))  # forget it after the test

    def circle(split, rng, num_points, radius):
        angle = rng.uniform(0, 2 * np.pi, num_points)
        inputs = np.column_stack([np.cos(angle), np.sin(angle)]) * radius
        return inputs, (angle > np.pi).astype(float)

    spec = data.register_synthetic("circle2d", circle, {"num_points": 16, "radius": 2.0},
                                   description="points on a circle")
    assert spec.kind == "synthetic" and "circle2d" in data.list_datasets("synthetic")
    x, y = data.synthetic_arrays("circle2d", data_seed=4)
    np.testing.assert_allclose(np.hypot(x[:, 0], x[:, 1]), 2.0)
    assert y.shape == (16, 1)
    info = data.dataset_info("circle2d", radius=1.0)
    assert info.image_shape == (2,) and info.num_examples == {"train": 16, "test": 16}
    # Train and test are independent draws of the same seed.
    assert not np.array_equal(x, data.synthetic_arrays("circle2d", "test", data_seed=4)[0])
