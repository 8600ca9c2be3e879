"""The modular loss (Eq. 4-8), its metrics, ModularLossEnsemble and the modular builders.

Every expected value comes from a float64 NumPy implementation written here
(from the paper's definitions, not from branchzoo.losses), from separately
built plain Keras modules, or from hand counts. After Webb et al. (2019).
"""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import branchzoo
from branchzoo import losses
from branchzoo.layers import ModularLossEnsemble
from branchzoo.layers.ensemble import normalize_active_modules, normalize_module
from branchzoo.models.modular import (config_title, ensemble_layer, modular_cnn, modular_densenet_bc, modular_mlp,
                                      modular_title, sub_ensemble)

RNG = np.random.default_rng(11)
FAMILIES = ("categorical", "gaussian", "poisson")


# --- float64 NumPy reference of the paper's definitions ------------------------------


def np_softmax(eta):
    e = np.exp(eta - eta.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_mean_output(eta, family):
    """y_hat = f^{-1}(eta) (Table 1)."""
    return {"categorical": np_softmax, "gaussian": lambda e: e, "poisson": np.exp}[family](eta)


def np_target(y_true, K, family):
    return np.eye(K)[y_true] if family == "categorical" else y_true.astype(np.float64)


def np_nll(y, eta, family):
    """-ln q(y | eta) without target-only terms (categorical: exact; gaussian: squared loss / 2)."""
    if family == "categorical":
        return -(y * np.log(np_softmax(eta))).sum(axis=-1)
    if family == "gaussian":
        return 0.5 * ((y - eta) ** 2).sum(axis=-1)
    return (np.exp(eta) - y * eta).sum(axis=-1)


def np_kl(eta_p, eta_q, family):
    """KL(q_p || q_q) from each family's textbook formula."""
    if family == "categorical":
        p, q = np_softmax(eta_p), np_softmax(eta_q)
        return (p * (np.log(p) - np.log(q))).sum(axis=-1)
    if family == "gaussian":  # unit variance
        return 0.5 * ((eta_p - eta_q) ** 2).sum(axis=-1)
    rate_p, rate_q = np.exp(eta_p), np.exp(eta_q)
    return (rate_p * np.log(rate_p / rate_q) - rate_p + rate_q).sum(axis=-1)


def np_eq4(y, eta, lam, family):
    eta_bar = eta.mean(axis=1)
    return lam * np_nll(y, eta_bar, family) + (1 - lam) * np_nll(y[:, None], eta, family).mean(axis=1)


def np_eq5(y, eta, lam, family):
    """Eq. 5: D(p||q_bar) + gamma/M sum_j D(p||q_j), gamma = (1 - lam)/lam; L = lam * Eq. 5."""
    gamma = (1 - lam) / lam
    return np_nll(y, eta.mean(axis=1), family) + gamma * np_nll(y[:, None], eta, family).mean(axis=1)


def np_eq6(y, eta, lam, family):
    eta_bar = eta.mean(axis=1, keepdims=True)
    return np_nll(y[:, None], eta, family).mean(axis=1) - lam * np_kl(eta_bar, eta, family).mean(axis=1)


def np_eq8(y, eta, lam, family):
    """dL/d eta_j = (1/M)(y_hat_j - y - lam (y_hat_j - y_bar)), per example."""
    M = eta.shape[1]
    y_hat = np_mean_output(eta, family)
    y_bar = np_mean_output(eta.mean(axis=1, keepdims=True), family)
    return (y_hat - y[:, None] - lam * (y_hat - y_bar)) / M


def sample(family, batch=6, M=5, K=4):
    eta = RNG.standard_normal((batch, M, K)) * (0.5 if family == "poisson" else 1.5)
    if family == "categorical":
        y_true = RNG.integers(0, K, batch)
    elif family == "gaussian":
        y_true = RNG.standard_normal((batch, K))
    else:
        y_true = RNG.poisson(2.0, (batch, K)).astype(np.float64)
    return y_true, eta, np_target(y_true, K, family)


# --- the loss ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
def test_eq4_eq5_eq6_agree_with_the_loss(family, lam):
    y_true, eta, y = sample(family)
    eq4 = np_eq4(y, eta, lam, family)
    eq6 = np_eq6(y, eta, lam, family)
    np.testing.assert_allclose(eq6, eq4, rtol=1e-12, atol=1e-12)
    if lam > 0:
        np.testing.assert_allclose(lam * np_eq5(y, eta, lam, family), eq4, rtol=1e-12, atol=1e-12)
    loss = losses.ModularLoss(lam, family, dtype="float64")
    assert float(loss(y_true, eta)) == pytest.approx(eq4.mean(), rel=1e-10, abs=1e-12)
    per_example = losses.modular_loss(y_true, eta, lam, family)
    np.testing.assert_allclose(np.asarray(per_example), eq4, rtol=1e-10, atol=1e-12)
    # the library's ambiguity form (Eq. 6) agrees with the textbook KL
    np.testing.assert_allclose(np.asarray(losses.ambiguity(eta, family)),
                               np_kl(eta.mean(axis=1, keepdims=True), eta, family).mean(axis=1), rtol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_gradient_is_eq8(family, lam):
    y_true, eta, y = sample(family)
    variable = tf.Variable(eta)
    loss = losses.ModularLoss(lam, family, reduction="sum", dtype="float64")
    with tf.GradientTape() as tape:
        value = loss(y_true, variable)
    grad = tape.gradient(value, variable).numpy()
    np.testing.assert_allclose(grad, np_eq8(y, eta, lam, family), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_zero_is_independent_training_scaled_by_one_over_m(family):
    y_true, eta, y = sample(family)
    M = eta.shape[1]
    variable = tf.Variable(eta)
    with tf.GradientTape() as tape:
        value = losses.ModularLoss(0.0, family, reduction="sum", dtype="float64")(y_true, variable)
    grad = tape.gradient(value, variable).numpy()
    for j in range(M):  # module j alone, its own NLL, then scaled by 1/M
        own = tf.Variable(eta[:, j])
        with tf.GradientTape() as tape:
            nll = tf.reduce_sum(losses.negative_log_likelihood(tf.constant(y), own, family))
        np.testing.assert_allclose(grad[:, j], tape.gradient(nll, own).numpy() / M, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad[:, j], (np_mean_output(eta[:, j], family) - y) / M, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_lambda_one_is_the_nll_of_the_mean(family):
    y_true, eta, y = sample(family)
    loss = losses.ModularLoss(1.0, family, dtype="float64")
    assert float(loss(y_true, eta)) == pytest.approx(np_nll(y, eta.mean(axis=1), family).mean(), rel=1e-10)


def test_categorical_lambda_one_is_keras_cross_entropy_of_the_mean_logits():
    y_true, eta, _ = sample("categorical")
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y_true, eta.mean(axis=1))
    assert float(losses.ModularLoss(1.0)(y_true, eta.astype("float32"))) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_single_module_loss_is_cross_entropy_for_every_lambda(lam):
    y_true, eta, y = sample("categorical", M=1)
    expected = -np.log(np_softmax(eta[:, 0]))[np.arange(len(y_true)), y_true].mean()
    assert float(losses.ModularLoss(lam, dtype="float64")(y_true, eta)) == pytest.approx(expected, rel=1e-10)


def test_labels_may_be_a_column():
    y_true, eta, _ = sample("categorical")
    loss = losses.ModularLoss(0.7, dtype="float64")
    assert float(loss(y_true[:, None], eta)) == pytest.approx(float(loss(y_true, eta)), rel=1e-12)


@pytest.mark.parametrize("lam", [1.5, -0.1, float("nan"), "1", True])
def test_lambda_outside_unit_interval_cites_theorem_1(lam):
    with pytest.raises(ValueError, match=r"`lambda_` must be a number in \[0, 1\].*Theorem 1.*Received: lambda_="):
        losses.ModularLoss(lam)


def test_bad_family_and_shapes_are_named():
    with pytest.raises(ValueError, match=r"`family` must be one of .*Received: family='bernoulli'"):
        losses.ModularLoss(0.5, family="bernoulli")
    with pytest.raises(ValueError, match=r"\[batch, num_modules, K\].*Received: y_pred.shape=\(2, 3\)"):
        losses.ModularLoss(0.5)(np.array([0, 1]), np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"targets of shape \[batch, K\] with K = 3"):
        losses.ModularLoss(0.5, "gaussian")(np.zeros((2, 4)), np.zeros((2, 5, 3), "float32"))


def test_loss_serialises_as_the_recipe_schema_says():
    loss = losses.ModularLoss(0.95, "poisson", name="ml")
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "branchzoo>ModularLoss"
    assert serialized["config"]["lambda_"] == 0.95 and serialized["config"]["family"] == "poisson"
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert isinstance(again, losses.ModularLoss) and again.get_config() == loss.get_config()


# --- metrics -----------------------------------------------------------------------


def test_metrics_against_numpy_with_sample_weights():
    K, M = 7, 6
    y_true = RNG.integers(0, K, 40)
    eta = RNG.standard_normal((40, M, K)).astype("float32")
    weights = RNG.uniform(0.1, 2.0, 40)
    y = np.eye(K)[y_true]
    eta64 = eta.astype(np.float64)
    mean = eta64.mean(axis=1)
    top5 = np.array([t in np.argsort(-m)[:5] for t, m in zip(y_true, mean)], float)
    expected = {
        "top1": (mean.argmax(-1) == y_true).astype(float),
        "top5": top5,
        "ensemble_error": (mean.argmax(-1) != y_true).astype(float),
        "member_error": (eta64.argmax(-1) != y_true[:, None]).mean(axis=1),
        "member_loss": np_nll(y[:, None], eta64, "categorical").mean(axis=1),
        "ensemble_loss": np_nll(y, mean, "categorical"),
        "ambiguity": np_kl(mean[:, None], eta64, "categorical").mean(axis=1),
    }
    metrics = losses.default_metrics() + [losses.EnsembleError()]
    assert sorted(m.name for m in metrics) == sorted(expected)
    for m in metrics:
        m.update_state(y_true[:20], eta[:20], sample_weight=weights[:20])
        m.update_state(y_true[20:], eta[20:], sample_weight=weights[20:])
        assert float(m.result()) == pytest.approx(np.average(expected[m.name], weights=weights), rel=2e-5, abs=1e-6), m.name
        m.reset_state()
        assert float(m.result()) == 0.0


def test_gaussian_and_poisson_metrics():
    for family in ("gaussian", "poisson"):
        y_true, eta, y = sample(family)
        member, ensemble = losses.MemberLoss(family, dtype="float64"), losses.EnsembleLoss(family, dtype="float64")
        member.update_state(y_true, eta)
        ensemble.update_state(y_true, eta)
        assert float(member.result()) == pytest.approx(np_nll(y[:, None], eta, family).mean(), rel=1e-9)
        assert float(ensemble.result()) == pytest.approx(np_nll(y, eta.mean(axis=1), family).mean(), rel=1e-9)
        assert [m.name for m in losses.default_metrics(family)] == ["member_loss", "ensemble_loss", "ambiguity"]


def test_metrics_config_round_trip():
    for metric in losses.default_metrics() + [losses.EnsembleError(k=2), losses.MemberLoss("poisson")]:
        serialized = keras.saving.serialize_keras_object(metric)
        assert serialized["registered_name"].startswith("branchzoo>")
        again = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
        assert type(again) is type(metric) and again.get_config() == metric.get_config()
    with pytest.raises(ValueError, match=r"`k` must be a positive integer. Received: k=0"):
        losses.EnsembleAccuracy(k=0)


# --- the layer: batched == M separately built modules --------------------------------


def _slice(array, j, M):
    width = array.shape[-1] // M
    return array[..., j * width:(j + 1) * width]


def _randomise_batchnorms(layer):
    for sub in layer._flatten_layers(include_self=False, recursive=True):
        if isinstance(sub, keras.layers.BatchNormalization):
            c = sub.gamma.shape[0]
            sub.set_weights([RNG.uniform(0.5, 1.5, c), RNG.normal(0, 0.3, c), RNG.normal(0, 0.3, c),
                             RNG.uniform(0.5, 1.5, c)])


def test_mlp_ensemble_equals_separate_modules():
    M, K, units = 5, 3, [6, 4]
    model = modular_mlp(M, units, num_classes=K, input_shape=(4, 5))
    ens = ensemble_layer(model)
    x = RNG.standard_normal((7, 4, 5)).astype("float32")
    out = model.predict(x, verbose=0)
    assert out.shape == (7, M, K)
    for j in range(M):
        module = keras.Sequential([keras.Input((4, 5)), keras.layers.Flatten(),
                                   keras.layers.Dense(6, activation="relu"), keras.layers.Dense(4, activation="relu"),
                                   keras.layers.Dense(K)])
        dense1, dense2, head = module.layers[1:]
        dense1.set_weights([_slice(ens.dense1.kernel.numpy(), j, M), _slice(ens.dense1.bias.numpy(), j, M)])
        dense2.set_weights([ens.hidden[0].kernel.numpy()[j], ens.hidden[0].bias.numpy()[j]])
        head.set_weights([ens.logits.kernel.numpy()[j], ens.logits.bias.numpy()[j]])
        np.testing.assert_allclose(out[:, j], module.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_cnn_ensemble_equals_separate_modules():
    M, K = 3, 4
    model = modular_cnn(M, filters=(4, 6, 8), strides=(1, 2, 1), num_classes=K, input_shape=(11, 11, 3))
    ens = ensemble_layer(model)
    x = RNG.standard_normal((5, 11, 11, 3)).astype("float32")
    out = model.predict(x, verbose=0)
    for j in range(M):
        inputs = keras.Input((11, 11, 3))
        h = inputs
        convs = []
        for filters, stride in ((4, 1), (6, 2), (8, 1)):
            convs.append(keras.layers.Conv2D(filters, 3, strides=stride, padding="valid", activation="relu"))
            h = convs[-1](h)
        head = keras.layers.Dense(K)
        module = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(h)))
        for conv, batched in zip(convs, ens.convs):
            conv.set_weights([_slice(batched.kernel.numpy(), j, M), _slice(batched.bias.numpy(), j, M)])
        head.set_weights([ens.logits.kernel.numpy()[j], ens.logits.bias.numpy()[j]])
        np.testing.assert_allclose(out[:, j], module.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def _plain_densenet_bc(depth, k, K, input_shape, compression=0.5):
    """One DenseNet-BC module with plain Keras layers (Huang et al. 2017; Amos & Kolter's layout)."""
    n = (depth - 4) // 6
    bn = dict(momentum=0.9, epsilon=1e-5)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(2 * k, 3, padding="same", use_bias=False)(inputs)
    channels = 2 * k
    for b in range(3):
        for _ in range(n):
            h = keras.layers.Conv2D(4 * k, 1, use_bias=False)(keras.layers.ReLU()(keras.layers.BatchNormalization(**bn)(x)))
            h = keras.layers.Conv2D(k, 3, padding="same", use_bias=False)(
                keras.layers.ReLU()(keras.layers.BatchNormalization(**bn)(h)))
            x = keras.layers.Concatenate()([x, h])
            channels += k
        if b < 2:
            channels = int(math.floor(channels * compression))
            x = keras.layers.Conv2D(channels, 1, use_bias=False)(keras.layers.ReLU()(keras.layers.BatchNormalization(**bn)(x)))
            x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(keras.layers.BatchNormalization(**bn)(x)))
    return keras.Model(inputs, keras.layers.Dense(K)(x))


def _densenet_sublayers(ens):
    """The batched layers in the order a plain module creates its weighted layers."""
    order = [ens.stem_conv]
    for b, block in enumerate(ens.dense_blocks):
        for bn1, conv1, bn2, conv2 in block:
            order += [bn1, conv1, bn2, conv2]
        if b < len(ens.transitions):
            order += list(ens.transitions[b])
    return order + [ens.final_bn, ens.logits]


@pytest.mark.parametrize("training", [False, True])
def test_densenet_ensemble_equals_separate_modules(training):
    M, K, depth, k = 3, 5, 10, 3
    model = modular_densenet_bc(depth, k, M, num_classes=K, input_shape=(8, 8, 3))
    ens = ensemble_layer(model)
    _randomise_batchnorms(ens)
    x = RNG.standard_normal((6, 8, 8, 3)).astype("float32")
    out = np.asarray(model(x, training=training))
    for j in range(M):
        module = _plain_densenet_bc(depth, k, K, (8, 8, 3))
        plain = [l for l in module.layers if l.weights]
        batched = _densenet_sublayers(ens)
        assert len(plain) == len(batched)
        for p, b in zip(plain, batched):
            if b is ens.logits:
                p.set_weights([b.kernel.numpy()[j], b.bias.numpy()[j]])
            else:
                p.set_weights([_slice(w, j, M) for w in b.get_weights()])
        np.testing.assert_allclose(out[:, j], np.asarray(module(x, training=training)), rtol=1e-5, atol=1e-5)


def test_dense_concatenation_stays_per_module():
    ens = ModularLossEnsemble(2, 3, module={"type": "densenet_bc", "depth": 10, "growth_rate": 1})
    ens.build((None, 4, 4, 1))
    x = np.arange(2 * 2 * 2 * 4, dtype="float32").reshape(2, 2, 2, 4)  # modules own channels [0, 1] and [2, 3]
    new = -np.ones((2, 2, 2, 2), "float32") * np.array([1, 2], "float32")  # module 0 adds -1, module 1 adds -2
    joined = np.asarray(ens._concat_per_module(x, new))
    np.testing.assert_array_equal(joined[..., :3], np.concatenate([x[..., :2], new[..., :1]], -1))
    np.testing.assert_array_equal(joined[..., 3:], np.concatenate([x[..., 2:], new[..., 1:]], -1))


# --- active modules ----------------------------------------------------------------


def test_active_modules_keep_the_chosen_modules():
    model = modular_mlp(6, 3, num_classes=4, input_shape=(5,))
    x = RNG.standard_normal((3, 5)).astype("float32")
    full = model.predict(x, verbose=0)
    ens = ensemble_layer(model)
    np.testing.assert_allclose(np.asarray(ens(x, active_modules=[4, 1])), full[:, [1, 4]], rtol=1e-6)
    mask = np.array([True, False, False, True, True, False])
    np.testing.assert_allclose(np.asarray(ens(x, active_modules=mask)), full[:, [0, 3, 4]], rtol=1e-6)
    sub = sub_ensemble(model, [0, 5])
    assert sub.output.shape == (None, 2, 4)
    np.testing.assert_allclose(sub.predict(x, verbose=0), full[:, [0, 5]], rtol=1e-6)
    assert all(a is b for a, b in zip(sub.weights, model.weights))  # shared, not copied
    # the ensemble of the kept modules is the mean of their logits
    kept = modular_mlp(6, 3, num_classes=4, input_shape=(5,), active_modules=[2, 3])
    kept.set_weights(model.get_weights())
    np.testing.assert_allclose(kept.predict(x, verbose=0).mean(axis=1), full[:, 2:4].mean(axis=1), rtol=1e-6)
    assert ensemble_layer(kept).num_active_modules == 2


@pytest.mark.parametrize(
    "active, message",
    [
        ([], r"non-empty list of module indices"),
        ([0, 6], r"between 0 and `num_modules` - 1 \(5\). Received: active_modules=\[0, 6\]"),
        ([-1], r"between 0 and"),
        ([1, 1], r"must not repeat"),
        ([True, False], r"mask must have length `num_modules` \(6\). Received: a mask of length 2"),
        ([False] * 6, r"at least one module"),
        ([0.5, 1.0], r"integer module indices or booleans"),
    ],
)
def test_bad_active_modules(active, message):
    with pytest.raises(ValueError, match=message):
        normalize_active_modules(active, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_modules": 0, "num_classes": 3}, r"`num_modules` must be >= 1. Received: num_modules=0"),
        ({"num_modules": 2, "num_classes": 3, "module": "resnet"}, r"`module` must be one of .*Received: module='resnet'"),
        ({"num_modules": 2, "num_classes": 3, "module": {"type": "mlp", "width": 3}}, r"unknown keys \['width'\]"),
        ({"num_modules": 2, "num_classes": 3, "module": {"type": "densenet_bc", "depth": 50}},
         r"must be 6n \+ 4.*Received: depth=50"),
        ({"num_modules": 2, "num_classes": 3, "module": {"type": "cnn", "filters": [4, 4], "strides": [1, 2, 1]}},
         r"one entry per conv layer \(2\)"),
        ({"num_modules": 2, "num_classes": 3, "module": {"type": "mlp", "hidden_units": [4, 0]}},
         r"`hidden_units\[1\]` must be >= 1"),
    ],
)
def test_bad_layer_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModularLossEnsemble(**kwargs)


def test_module_spec_defaults_and_round_trip():
    assert normalize_module("cnn") == {"type": "cnn", "filters": [32, 64, 64, 128, 128], "kernel_size": 3,
                                       "strides": [1, 2, 1, 2, 1], "padding": "valid", "activation": "relu"}
    for module in ("mlp", "cnn", {"type": "densenet_bc", "depth": 16, "growth_rate": 4}):
        layer = ModularLossEnsemble(3, 4, module=module, active_modules=[0, 2], name="e")
        config = layer.get_config()
        clone = ModularLossEnsemble.from_config(json.loads(json.dumps(config)))
        assert clone.get_config() == config
    with pytest.raises(ValueError, match=r"too small"):
        modular_cnn(2, input_shape=(8, 8, 3))


# --- builders, parameter counts, the zoo ----------------------------------------------


def _mlp_count(M, H, inputs=784, K=10):
    return M * (inputs * H + H) + M * (H * K + K)  # per module: hidden layer + output layer


@pytest.mark.parametrize("M, H, expected", [(1, 1024, 814_090), (16, 64, 814_240), (64, 16, 814_720),
                                            (256, 4, 816_640)])
def test_paper_mlp_parameter_counts(M, H, expected):
    assert _mlp_count(M, H) == expected  # the paper's counts, by hand
    model = modular_mlp(M, H)
    assert model.count_params() == expected
    assert modular_title(model) == f"{M}-M-{H}-H"
    assert config_title("modular_mlp", {"num_modules": M, "hidden_units": H}) == f"{M}-M-{H}-H"


def test_table3_cnn_parameter_count():
    per_module = 0
    channels = 3
    for filters in (32, 64, 64, 128, 128):
        per_module += 9 * channels * filters + filters
        channels = filters
    per_module += 128 * 10 + 10
    model = modular_cnn()
    assert model.count_params() == 10 * per_module == 2_790_500  # "~2.8M" (Table 3)
    layer = ensemble_layer(model)
    assert [c.compute_output_shape((None, 32, 32, 3))[1] for c in layer.convs[:1]] == [30]
    assert modular_title(model) == "10 x CNN(32-64-64-128-128)" == config_title("modular_cnn", {})


def densenet_bc_count(depth, k, M, K=100, compression=0.5):
    """Trainable parameters of M DenseNet-BC modules, counted by hand."""
    n = (depth - 4) // 6
    c = 2 * k
    total = 9 * 3 * c  # stem
    for b in range(3):
        for _ in range(n):
            total += 2 * c + c * 4 * k + 2 * 4 * k + 9 * 4 * k * k  # BN, 1x1, BN, 3x3
            c += k
        if b < 2:
            out = int(c * compression)
            total += 2 * c + c * out
            c = out
    total += 2 * c + c * K + K  # final BN, classifier
    return M * total


@pytest.mark.parametrize("name, depth, k, M, paper", [("DN-100-12-4", 100, 12, 4, 3.2e6),
                                                      ("DN-82-8-8", 82, 8, 8, 2.1e6),
                                                      ("DN-64-6-16", 64, 6, 16, 1.7e6)])
def test_table4_densenet_counts_by_hand(name, depth, k, M, paper):
    assert densenet_bc_count(depth, k, M) == pytest.approx(paper, rel=0.02), name


def test_small_densenet_builds_to_the_hand_count():
    model = modular_densenet_bc(16, 4, 3, num_classes=7, input_shape=(16, 16, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == densenet_bc_count(16, 4, 3, K=7)
    assert modular_title(model) == "DN-16-4-3"
    assert [config_title("modular_densenet_bc", branchzoo.model_card(n)["config"]) for n in
            ("modular_dn100_12x4_cifar100", "modular_dn82_8x8_cifar100", "modular_dn64_6x16_cifar100")] == [
        "DN-100-12-4", "DN-82-8-8", "DN-64-6-16"]


@pytest.mark.slow
@pytest.mark.parametrize("depth, k, M", [(100, 12, 4), (82, 8, 8), (64, 6, 16)])
def test_table4_densenets_build_to_the_hand_count(depth, k, M):
    model = modular_densenet_bc(depth, k, M)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == densenet_bc_count(depth, k, M)


MODULAR_ENTRIES = branchzoo.list_models("modular_*")


def test_zoo_entries_and_recipes():
    assert {"modular_mlp_1x1024", "modular_mlp_16x64", "modular_mlp_64x16", "modular_mlp_256x4",
            "modular_cnn_cifar10", "modular_dn100_12x4_cifar100", "modular_dn82_8x8_cifar100",
            "modular_dn64_6x16_cifar100"} <= set(MODULAR_ENTRIES)
    for name in MODULAR_ENTRIES:
        card = branchzoo.model_card(name)
        recipe = card["recipe"]
        assert card["family"] == "modular" and card["paper"].startswith("004_226906bbadadb648.txt")
        loss = keras.saving.deserialize_keras_object(recipe["loss"])
        assert isinstance(loss, losses.ModularLoss)
        metrics = [keras.saving.deserialize_keras_object(m) for m in recipe["metrics"]]
        assert [m.name for m in metrics][:2] == ["top1", "top5"]
        assert recipe["optimizer"] == "sgd" and recipe["momentum"] == 0.9
        M = card["config"].get("num_modules", 4)
        if card["builder"] == "modular_mlp":
            assert recipe["batch_size"] == 100
            # the reference code's learning rates: 0.02 M up to lambda 0.95, 0.006 M above
            expected = 0.02 if M == 1 else (0.02 if loss.lambda_ <= 0.95 else 0.006) * M
            assert recipe["lr"] == pytest.approx(expected, rel=0.01)


# --- serialisation of whole models -----------------------------------------------------


def test_compiled_model_keras_file_round_trip(tmp_path):
    model = modular_mlp(4, 3, num_classes=3, input_shape=(8, 8, 3))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ModularLoss(0.9),
                  metrics=losses.default_metrics())
    x = RNG.standard_normal((4, 8, 8, 3)).astype("float32")
    y = RNG.integers(0, 3, 4)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    assert isinstance(loaded.loss, losses.ModularLoss) and loaded.loss.lambda_ == 0.9
    assert loaded.evaluate(x, y, return_dict=True, verbose=0)["loss"] == pytest.approx(
        model.evaluate(x, y, return_dict=True, verbose=0)["loss"], rel=1e-5)
    sub = sub_ensemble(loaded, [1])
    assert sub.predict(x, verbose=0).shape == (4, 1, 3)


# --- real data (opt-in) ------------------------------------------------------------

REAL_DATA = os.environ.get("BRANCHZOO_DATA_DIR")
HAS_MNIST = bool(REAL_DATA and os.path.isdir(os.path.join(REAL_DATA, "mnist")))


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_MNIST, reason="needs BRANCHZOO_DATA_DIR holding mnist/")
def test_recipe_of_256x4_learns_mnist():
    from branchzoo import data

    card = branchzoo.model_card("modular_mlp_256x4")
    recipe = card["recipe"]
    keras.utils.set_random_seed(0)
    model = branchzoo.build("modular_mlp_256x4")
    model.compile(keras.optimizers.SGD(recipe["lr"], momentum=recipe["momentum"]),
                  loss=keras.saving.deserialize_keras_object(recipe["loss"]),
                  metrics=[keras.saving.deserialize_keras_object(m) for m in recipe["metrics"]])
    train = data.load_dataset("mnist", "train", recipe["batch_size"], augment=False, data_dir=REAL_DATA, seed=0,
                              steps_per_epoch=150)
    test = data.load_dataset("mnist", "test", 1000, data_dir=REAL_DATA)
    model.fit(train, epochs=1, verbose=0, shuffle=False)
    results = model.evaluate(test, return_dict=True, verbose=0)
    assert results["top1"] > 0.85  # chance is 0.1; 150 steps of the recipe
    assert results["member_error"] > 1 - results["top1"]  # the ensemble beats its average member


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not HAS_MNIST, reason="needs BRANCHZOO_DATA_DIR holding mnist/")
def test_replication_script_runs(tmp_path):
    from conftest import REPO
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "modular_mnist.py"), "--data-dir", REAL_DATA,
         "--modules", "16", "--lambdas", "0,1", "--epochs", "2", "--patience", "1", "--train-examples", "2000",
         "--output", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out" / "modular_mnist.json") as f:
        result = json.load(f)
    assert [r["model"] for r in result["rows"]] == ["1-M-1024-H", "16-M-64-H", "16-M-64-H"]
    assert all(0 < r["test_error"] < 0.5 for r in result["rows"])
    assert (tmp_path / "out" / "modular_mnist_dropping.png").exists()
