"""CKA and saturation against independent float64 references and hand-computed cases.

The references below are written from the published formulas, not from
branchzoo's code: HSIC of Gretton et al. (biased, tr(KHLH)/(n-1)^2) and the
unbiased estimator of Song et al. (2012, Eq. 5) with explicit traces, RBF
kernels from explicit pairwise distances; saturation from delve's rule with
hand-picked eigenvalues.
"""

import numpy as np
import pytest

from branchzoo.analysis import (
    CKAAccumulator, SaturationAccumulator, adaptive_average_pool, cka, cka_matrix, intrinsic_dimension,
    saturation,
)

RNG = np.random.default_rng(12)


# --- independent references -----------------------------------------------------


def ref_linear_kernel(x):
    return np.array([[float(np.dot(a, b)) for b in x] for a in x])


def ref_rbf_kernel(x, threshold):
    n = len(x)
    d2 = np.array([[float(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)])
    sigma2 = threshold**2 * np.median(d2)  # Kornblith et al.: median over all pairs
    return np.exp(-d2 / (2 * sigma2))


def ref_hsic(k, l, unbiased):
    n = len(k)
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def ref_cka(x, y, kernel="linear", threshold=1.0, debiased=False):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if kernel == "linear":
        k, l = ref_linear_kernel(x), ref_linear_kernel(y)
    else:
        k, l = ref_rbf_kernel(x, threshold), ref_rbf_kernel(y, threshold)
    return ref_hsic(k, l, debiased) / np.sqrt(ref_hsic(k, k, debiased) * ref_hsic(l, l, debiased))


def related_pair(n, d1, d2, noise=1.0):
    x = RNG.standard_normal((n, d1))
    y = np.tanh(x @ RNG.standard_normal((d1, d2))) + noise * RNG.standard_normal((n, d2)) + 3.0
    return x, y


def random_orthogonal(d):
    q, r = np.linalg.qr(RNG.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# --- CKA ------------------------------------------------------------------------


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n, d1, d2", [(60, 5, 7), (40, 90, 3), (30, 50, 60)])
def test_linear_cka_matches_reference(n, d1, d2, debiased):
    # (60, 5, 7): feature-space route; (40, 90, 3) and (30, 50, 60): Gram route
    x, y = related_pair(n, d1, d2)
    expected = ref_cka(x, y, "linear", debiased=debiased)
    assert cka(x, y, debiased=debiased) == pytest.approx(expected, abs=1e-10)
    assert cka(x.astype(np.float32), y.astype(np.float32), debiased=debiased) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_cka_matches_reference(threshold, debiased):
    x, y = related_pair(35, 6, 4)
    expected = ref_cka(x, y, "rbf", threshold, debiased)
    assert cka(x, y, "rbf", threshold, debiased) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariances_and_identity(kernel, debiased):
    x, y = related_pair(50, 8, 6)
    base = cka(x, y, kernel, debiased=debiased)
    assert 0.05 < base < 0.99  # a non-trivial value to be invariant about
    qx, qy = random_orthogonal(8), random_orthogonal(6)
    assert cka(x @ qx, y, kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(x, y @ qy, kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(7.5 * x, y, kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(x, 0.01 * y, kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(x, x, kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert cka(x @ qx, 3 * x, kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-10)
    # ...but not to arbitrary invertible maps (CKA is no CCA)
    stretch = np.diag([10.0, 1, 1, 1, 1, 1, 1, 0.1])
    assert abs(cka(x @ stretch, y, kernel, debiased=debiased) - base) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
def test_minibatch_cka_equals_full(debiased):
    x, y = related_pair(203, 12, 9)
    expected = ref_cka(x, y, debiased=debiased)
    x += 50.0  # a large common offset (CKA ignores it): the accumulator must centre exactly
    acc = CKAAccumulator(debiased=debiased)
    for start, stop in [(0, 1), (1, 64), (64, 100), (100, 203)]:
        acc.update(x[start:stop], y[start:stop])
    assert acc.n == 203
    assert acc.result() == pytest.approx(cka(x, y, debiased=debiased), abs=1e-10)
    assert acc.result() == pytest.approx(expected, abs=1e-10)


def test_cka_matrix_entries_and_symmetry():
    x, y = related_pair(40, 6, 5)
    z = x**2
    acts = {"x": x, "y": y, "z": z}
    m = cka_matrix(acts)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    for i, a in enumerate(acts.values()):
        for j, b in enumerate(acts.values()):
            assert m[i, j] == pytest.approx(ref_cka(a, b), abs=1e-10)
    rect = cka_matrix([x, y], [z], kernel="rbf", debiased=True)
    assert rect.shape == (2, 1)
    assert rect[1, 0] == pytest.approx(ref_cka(y, z, "rbf", debiased=True), abs=1e-10)


def test_cka_bad_arguments():
    x = RNG.standard_normal((10, 3))
    with pytest.raises(ValueError, match=r"`kernel` must be one of .* Received: kernel='cosine'"):
        cka(x, x, kernel="cosine")
    with pytest.raises(ValueError, match=r"same examples .* x with shape \(10, 3\), y with shape \(9, 3\)"):
        cka(x, x[:9])
    with pytest.raises(ValueError, match=r"debiased.* at least 4 examples. Received: 3"):
        cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match=r"`threshold` must be a positive number. Received: threshold=0"):
        cka(x, x, kernel="rbf", threshold=0)
    with pytest.raises(ValueError, match=r"feature matrix"):
        cka(np.ones(10), x)
    acc = CKAAccumulator()
    acc.update(x, x)
    with pytest.raises(ValueError, match=r"3 x-features and 3 y-features"):
        acc.update(x[:, :2], x)
    assert np.isnan(cka(np.ones((10, 3)), x))  # a constant representation


# --- saturation -----------------------------------------------------------------


def samples_with_covariance(eigenvalues, n=400, mean=5.0):
    """Samples whose biased covariance E[xx^T] - mu mu^T is exactly Q diag(eigenvalues) Q^T."""
    c = len(eigenvalues)
    z = RNG.standard_normal((n, c))
    z -= z.mean(axis=0)
    z, _ = np.linalg.qr(z)  # orthonormal, still zero-mean columns
    z *= np.sqrt(n)  # Z^T Z / n = I
    q = random_orthogonal(c)
    x = z @ np.diag(np.sqrt(eigenvalues)) @ q.T + mean
    return x, q @ np.diag(eigenvalues) @ q.T


@pytest.mark.parametrize(
    "eigenvalues, expected_dim",
    [
        # delve's rule (delve/metrics.py, compute_intrinsic_dimensionality): keep the components
        # whose cumulative ratio is below 0.99, at least 1, and one more when 0.99 minus the
        # last kept ratio exceeds 0.02
        ((9.0, 1.0, 0.0, 0.0), 2),  # .9, 1: one kept, .99 - .9 > .02: two (delve's example)
        ((1.0,) * 10, 10),  # .1 .. .9 kept, .99 - .9 > .02: ten of ten (delve's example)
        ((0.5, 0.3, 0.195, 0.005), 3),  # .5, .8 kept; .99 - .8 > .02: three
        ((1.0, 1.0, 1.0, 1.0), 4),  # .25, .5, .75 kept; +1
        ((3.0, 0.0, 0.0), 1),  # 1, 1, 1: no ratio below 0.99, at least 1
        ((0.98, 0.015, 0.004, 0.001), 1),  # .98 kept; .99 - .98 = .01: no extra
        ((0.9, 0.05, 0.03, 0.015, 0.005), 3),  # .9, .95, .98 kept; .01: no extra
    ],
)
def test_saturation_hand_cases(eigenvalues, expected_dim):
    x, covariance = samples_with_covariance(eigenvalues)
    acc = SaturationAccumulator()
    acc.update(x)
    np.testing.assert_allclose(acc.covariance(), covariance, atol=1e-10)
    assert intrinsic_dimension(covariance) == expected_dim
    assert acc.intrinsic_dimension() == expected_dim
    assert saturation(x) == expected_dim / len(eigenvalues)


def test_saturation_of_a_constant_layer_is_one_channel():
    assert saturation(np.full((20, 8), 3.0)) == 1 / 8


def test_adaptive_pooling_windows_are_pytorchs():
    maps = RNG.standard_normal((2, 7, 8, 3))
    pooled = adaptive_average_pool(maps, 4)
    rows = [(0, 2), (1, 4), (3, 6), (5, 7)]  # floor(i*7/4) .. ceil((i+1)*7/4)
    cols = [(0, 2), (2, 4), (4, 6), (6, 8)]
    expected = np.zeros((2, 4, 4, 3))
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            expected[:, i, j] = maps[:, r0:r1, c0:c1].mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, expected, atol=1e-12)
    small = RNG.standard_normal((2, 2, 3, 5))
    assert adaptive_average_pool(small, 4) is small  # no larger than 4x4: unchanged


def test_saturation_counts_every_position_of_every_map_without_pooling():
    # delve's "channelwise" mode: samples = N * H * W, features = C
    maps = RNG.standard_normal((3, 16, 16, 6))
    acc = SaturationAccumulator()
    acc.update(maps)
    assert acc.samples == 3 * 16 * 16 and acc.channels == 6
    flat = maps.reshape(-1, 6)
    np.testing.assert_allclose(acc.covariance(), np.cov(flat.T, bias=True), atol=1e-12)
    # a map whose channels vary only within each 4x4 window: pooling first would see none
    # of that variance (saturation 1/6), every position sees all of it
    inside = np.tile(RNG.standard_normal((1, 4, 4, 6)), (2, 4, 4, 1))
    inside -= inside.reshape(-1, 6).mean(axis=0)
    assert saturation(inside) > 0.5


def test_streaming_saturation_equals_one_shot():
    maps = RNG.standard_normal((50, 8, 8, 10)) @ RNG.standard_normal((10, 10)) * 0.1 + 2.0
    acc = SaturationAccumulator()
    for start, stop in [(0, 7), (7, 8), (8, 31), (31, 50)]:
        acc.update(maps[start:stop])
    one_shot = SaturationAccumulator()
    one_shot.update(maps)
    np.testing.assert_allclose(acc.covariance(), one_shot.covariance(), rtol=1e-10, atol=1e-12)
    assert acc.result() == one_shot.result() == saturation(maps)


def test_saturation_bad_arguments():
    acc = SaturationAccumulator()
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\] or \[batch, channels\]"):
        acc.update(np.ones((2, 3, 4)))
    acc.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"4 channels. Received: 5"):
        acc.update(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"`threshold` must be in \(0, 1\]. Received: threshold=1.5"):
        SaturationAccumulator(threshold=1.5)
    with pytest.raises(ValueError, match="No samples"):
        SaturationAccumulator().result()
