"""GatedConnect (Ahmed & Torresani 2017, Algorithm 1): sampler, gates, modes, errors."""

import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from branchzoo.layers import GatedConnect
from branchzoo.layers.gated import random_connectivity, sample_gates, top_k_gates

RNG = np.random.default_rng(0)


def successive_sampling_probabilities(weights, k):
    """Exact probability of every k-subset under successive sampling without replacement.

    Enumerates every ordered draw (a_1, ..., a_k) of distinct indices:
    P = prod_t p[a_t] / (1 - sum_{s<t} p[a_s]), p = weights / sum(weights).
    """
    p = np.asarray(weights, "float64") / np.sum(weights)
    subsets = {}
    for order in itertools.permutations(range(len(p)), k):
        prob, taken = 1.0, 0.0
        for a in order:
            prob *= p[a] / (1.0 - taken)
            taken += p[a]
        key = tuple(sorted(order))
        subsets[key] = subsets.get(key, 0.0) + prob
    return subsets


@pytest.mark.parametrize("weights, k", [([0.05, 0.1, 0.25, 0.6], 2), ([0.9, 0.3, 0.0, 0.5, 0.15], 3)])
def test_sampler_matches_successive_sampling_without_replacement(weights, k):
    draws = 40000
    gates = np.tile(np.asarray(weights, "float32"), (draws, 1))
    binary = np.asarray(sample_gates(gates, k, seed=1234))
    # exactly k distinct indices per draw, as 0/1 gates
    assert set(np.unique(binary)) <= {0.0, 1.0}
    np.testing.assert_array_equal(binary.sum(axis=1), np.full(draws, k))

    exact = successive_sampling_probabilities(weights, k)
    inclusion = np.zeros(len(weights))
    for subset, prob in exact.items():
        inclusion[list(subset)] += prob
    assert inclusion.sum() == pytest.approx(k)
    observed = binary.mean(axis=0)
    tolerance = 5 * np.sqrt(inclusion * (1 - inclusion) / draws) + 1e-12  # 5 standard errors
    np.testing.assert_array_less(np.abs(observed - inclusion), tolerance)
    if 0.0 in weights:  # a zero gate is never drawn while k positive gates remain
        assert observed[weights.index(0.0)] == 0.0

    # the joint law too: frequency of every k-subset
    codes = binary.astype(int) @ (1 << np.arange(len(weights)))
    for subset, prob in exact.items():
        code = sum(1 << i for i in subset)
        freq = np.mean(codes == code)
        assert abs(freq - prob) <= 5 * np.sqrt(prob * (1 - prob) / draws) + 1e-12, (subset, freq, prob)


def test_sampler_uses_floored_gates_when_too_few_are_positive():
    binary = np.asarray(sample_gates(np.tile([[0.0, 0.7, 0.0, 0.0]], (2000, 1)).astype("float32"), 2, seed=3))
    np.testing.assert_array_equal(binary[:, 1], 1.0)  # the only positive gate always
    np.testing.assert_array_equal(binary.sum(axis=1), 2.0)
    others = binary[:, [0, 2, 3]].mean(axis=0)  # the second index uniform among the zeros
    np.testing.assert_allclose(others, 1 / 3, atol=0.05)


def test_top_k_is_deterministic_and_breaks_ties_by_index():
    gates = np.array([[0.2, 0.9, 0.5, 0.9], [0.5, 0.5, 0.5, 0.5]], "float32")
    np.testing.assert_array_equal(np.asarray(top_k_gates(gates, 2)), [[0, 1, 0, 1], [1, 1, 0, 0]])


def _blocks(x, n):
    return np.asarray(x, "float64").reshape(x.shape[:-1] + (n, -1))


def mean_of_selected(y, binary, k):
    """float64 NumPy reference of Eq. 1 with the mean: x_j = (1/K) sum_k g_jk y_k."""
    blocks = _blocks(y, binary.shape[1])
    out = np.einsum("...kf,jk->...jf", blocks, np.asarray(binary, "float64")) / k
    return out.reshape(y.shape[:-1] + (-1,))


def _gate(cardinality=4, fan_in=2, values=None, **kwargs):
    layer = GatedConnect(cardinality, fan_in, **kwargs)
    layer.build((None, 5, 5, kwargs.get("num_inputs", cardinality) * 3))
    if values is not None:
        layer.gates.assign(np.asarray(values, "float32"))
    return layer


def test_inference_reads_the_top_k_and_is_deterministic():
    values = RNG.uniform(size=(4, 4)).astype("float32")
    layer = _gate(values=values, seed=0)
    y = RNG.standard_normal((2, 5, 5, 12)).astype("float32")
    first, second = layer(y, training=False), layer(y, training=False)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    expected_gates = np.zeros((4, 4))
    for j, row in enumerate(values):
        expected_gates[j, np.argsort(-row)[:2]] = 1
    np.testing.assert_array_equal(layer.binary_gates(), expected_gates)
    np.testing.assert_allclose(np.asarray(first), mean_of_selected(y, expected_gates, 2), rtol=1e-5, atol=1e-6)


def test_training_samples_k_inputs_and_outputs_their_mean():
    layer = _gate(cardinality=3, fan_in=2, num_inputs=5, seed=7)
    y = RNG.standard_normal((1, 5, 5, 15)).astype("float32")
    subsets = set()
    for _ in range(30):
        out = np.asarray(layer(y, training=True), "float64").reshape(1, 5, 5, 3, 3)
        for j in range(3):
            # which pair of inputs gives this block's output?
            matches = [pair for pair in itertools.combinations(range(5), 2)
                       if np.allclose(out[..., j, :], _blocks(y, 5)[..., list(pair), :].mean(axis=-2), atol=1e-5)]
            assert len(matches) == 1
            subsets.add(matches[0])
    assert len(subsets) > 3  # the draws vary between calls


def test_straight_through_gradient_reaches_the_real_gates():
    layer = _gate(cardinality=3, fan_in=2, seed=1)
    y = RNG.standard_normal((2, 5, 5, 9)).astype("float32")
    r = RNG.standard_normal((2, 5, 5, 9)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(y, training=True) * r)
    grad = tape.gradient(loss, layer.gates)
    # d loss / d g_jk = <r_j, y_k> whatever was drawn: Eq. 1's gradient w.r.t. the binary gate,
    # without the 1/K of the mean (straight-through, float64 reference)
    expected = np.einsum("nhwjf,nhwkf->jk", _blocks(r, 3), _blocks(y, 3))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(expected) > 0)


def _train_gates(layer, steps, lr):
    inputs = keras.Input((5, 5, layer.num_inputs * 3))
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    x = RNG.standard_normal((16, 5, 5, layer.num_inputs * 3)).astype("float32")
    target = RNG.standard_normal((16, 5, 5, layer.cardinality * 3)).astype("float32") * 10
    before = layer.gate_values()
    model.fit(x, target, batch_size=8, epochs=steps // 2, verbose=0)
    return before, layer.gate_values()


def test_gates_stay_in_unit_interval_at_a_large_learning_rate():
    layer = _gate(cardinality=4, fan_in=2, seed=2)
    before, after = _train_gates(layer, steps=100, lr=50.0)
    assert not np.allclose(before, after)  # they moved
    assert after.min() >= 0.0 and after.max() <= 1.0
    assert np.any(after == 0.0) and np.any(after == 1.0)  # pushed against both bounds, clipped


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_frozen_gates_do_not_move_and_use_the_top_k():
    layer = _gate(cardinality=4, fan_in=2, seed=2, values=RNG.uniform(size=(4, 4)))
    layer.frozen = True  # as a recipe phase's layer_attrs sets it
    assert layer.gates not in layer.trainable_weights and not layer.gates.trainable
    before, after = _train_gates(layer, steps=10, lr=50.0)
    np.testing.assert_array_equal(before, after)
    y = RNG.standard_normal((2, 5, 5, 12)).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(y, training=True)), np.asarray(layer(y, training=False)))
    layer.frozen = False
    assert layer.gates.trainable and layer.gates in layer.trainable_weights


def test_full_connectivity_is_the_mean_of_all_inputs():
    layer = _gate(cardinality=3, fan_in=3, connectivity="full")
    y = RNG.standard_normal((2, 5, 5, 9)).astype("float32")
    expected = np.repeat(_blocks(y, 3).mean(axis=-2, keepdims=True), 3, axis=-2).reshape(y.shape)
    for training in (False, True):
        np.testing.assert_allclose(np.asarray(layer(y, training=training)), expected, rtol=1e-5, atol=1e-6)
    assert layer.trainable_weights == []


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_random_connectivity_is_fixed_by_the_seed_and_never_trained():
    a = _gate(cardinality=6, fan_in=3, connectivity="random", seed=11)
    b = _gate(cardinality=6, fan_in=3, connectivity="random", seed=11)
    c = _gate(cardinality=6, fan_in=3, connectivity="random", seed=12)
    np.testing.assert_array_equal(a.gate_values(), b.gate_values())
    assert not np.array_equal(a.gate_values(), c.gate_values())
    np.testing.assert_array_equal(a.gate_values().sum(axis=1), 3)
    np.testing.assert_array_equal(a.binary_gates(), a.gate_values())
    assert a.trainable_weights == []
    before, after = _train_gates(a, steps=4, lr=10.0)
    np.testing.assert_array_equal(before, after)
    y = RNG.standard_normal((2, 5, 5, 18)).astype("float32")
    np.testing.assert_allclose(np.asarray(a(y, training=True)), mean_of_selected(y, a.gate_values(), 3),
                               rtol=1e-5, atol=1e-6)
    # each row: 3 distinct inputs, as NumPy's generator with this seed draws them
    np.testing.assert_array_equal(a.gate_values(), random_connectivity(6, 6, 3, 11))
    # without a seed one is drawn and kept in the config: a rebuilt layer has the same connections
    d = _gate(cardinality=6, fan_in=3, connectivity="random")
    clone = GatedConnect.from_config(d.get_config())
    clone.build((None, 5, 5, 18))
    np.testing.assert_array_equal(clone.gate_values(), d.gate_values())


def test_config_round_trip_and_keras_file_keep_the_gates(tmp_path):
    layer = GatedConnect(4, 3, seed=5, frozen=True, num_inputs=6, name="g")
    config = layer.get_config()
    clone = GatedConnect.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    inputs = keras.Input((4, 4, 12))
    model = keras.Model(inputs, layer(inputs))
    layer.gates.assign(RNG.uniform(size=(4, 6)).astype("float32"))
    model.save(tmp_path / "g.keras")
    loaded = keras.models.load_model(tmp_path / "g.keras")
    np.testing.assert_array_equal(loaded.get_layer("g").gate_values(), layer.gate_values())
    assert loaded.get_layer("g").frozen and not loaded.get_layer("g").gates.trainable


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cardinality": 8, "fan_in": 9}, r"`fan_in` must be between 1 and `cardinality` \(8\). Received: fan_in=9"),
        ({"cardinality": 8, "fan_in": 0}, r"`fan_in` must be between 1 and `cardinality` \(8\). Received: fan_in=0"),
        ({"cardinality": 4, "fan_in": 3, "num_inputs": 2}, r"`num_inputs` \(2\). Received: fan_in=3"),
        ({"cardinality": 8, "fan_in": 2.5}, r"`fan_in` must be an integer. Received: fan_in=2.5"),
        ({"cardinality": 0, "fan_in": 1}, r"`cardinality` must be >= 1. Received: cardinality=0"),
        ({"cardinality": 4, "fan_in": 2, "connectivity": "dense"}, r"`connectivity` must be one of .*connectivity='dense'"),
        ({"cardinality": 4, "fan_in": 2, "connectivity": "full"}, r'`fan_in` must equal `cardinality` \(4\) with connectivity="full".*fan_in=2'),
        ({"cardinality": 4, "fan_in": 2, "seed": -1}, r"`seed` must be >= 0. Received: seed=-1"),
        ({"cardinality": 4, "fan_in": 2, "frozen": "yes"}, r"`frozen` must be True or False. Received: frozen='yes'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GatedConnect(**kwargs)


def test_inputs_must_split_into_the_blocks():
    with pytest.raises(ValueError, match=r"`num_inputs` \(4\) blocks.*input_shape=\(None, 5, 5, 10\)"):
        GatedConnect(4, 2)(keras.Input((5, 5, 10)))
