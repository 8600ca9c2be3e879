"""The recipes' update rules: coupled L2 weight decay and GatedConnect's plain gate step.

Expected values are written out by hand (PyTorch's SGD update, Algorithm 1 of
Ahmed & Torresani 2017), in float64, independently of branchzoo.optimizers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from branchzoo import optimizers, tasks
from branchzoo.layers import GatedConnect


def _torch_sgd(w, grads_of, lr, momentum, nesterov, weight_decay, steps):
    """PyTorch's SGD (dampening 0) written out: d = g + wd*w; b = m*b + d; w -= lr*(d + m*b | b)."""
    w = np.asarray(w, "float64").copy()
    buf = None
    for _ in range(steps):
        d = grads_of(w) + weight_decay * w
        buf = d.copy() if buf is None else momentum * buf + d
        w = w - lr * (d + momentum * buf if nesterov else buf)
    return w


def test_coupled_weight_decay_three_nesterov_steps_by_hand():
    a = np.array([2.0, -1.0, 0.5])
    w0 = np.array([1.0, 3.0, -2.0])
    # loss = sum(a * w^2) / 2, so dL/dw = a * w
    expected = _torch_sgd(w0, lambda w: a * w, lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4 * 100, steps=3)  # a large decay, so its coupling shows
    w = keras.Variable(w0.astype("float32"))
    opt = tasks.make_optimizer({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                "weight_decay": 5e-2}, steps_per_epoch=10)
    for _ in range(3):
        opt.apply([tf.constant(a.astype("float32")) * w.value], [w])
    np.testing.assert_allclose(np.asarray(w.numpy(), "float64"), expected, rtol=1e-6)
    # the same three steps with Keras' decoupled decay land elsewhere: the recipes' decay is the coupled one
    v = keras.Variable(w0.astype("float32"))
    decoupled = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=5e-2)
    for _ in range(3):
        decoupled.apply([tf.constant(a.astype("float32")) * v.value], [v])
    assert np.max(np.abs(v.numpy() - expected)) > 1e-3


def test_coupled_decay_is_about_ten_times_the_decoupled_under_momentum():
    # no loss gradient: the decay alone. After many steps of momentum 0.9 the coupled decay
    # shrinks w by lr*wd/(1-m) per step, the decoupled by lr*wd: a tenth
    w = keras.Variable(np.ones(1, "float32"))
    v = keras.Variable(np.ones(1, "float32"))
    coupled = optimizers.SGD(0.1, momentum=0.9, l2=1e-3)
    decoupled = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(200):
        coupled.apply([tf.zeros(1)], [w])
        decoupled.apply([tf.zeros(1)], [v])
    shrink_coupled, shrink_decoupled = -np.log(w.numpy()[0]), -np.log(v.numpy()[0])
    assert shrink_coupled / shrink_decoupled == pytest.approx(10.0, rel=0.1)


def _gated_model(fan_in, seed=0):
    inputs = keras.Input((3, 3, 4 * 2))
    gate = GatedConnect(cardinality=4, fan_in=fan_in, seed=seed, name="m2_gate")
    outputs = keras.layers.Conv2D(5, 1, name="head")(gate(inputs))
    return keras.Model(inputs, outputs), gate


def test_gates_take_algorithm_1s_plain_step_while_weights_take_momentum_and_decay():
    model, gate = _gated_model(fan_in=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 3, 8)).astype("float32")
    target = rng.standard_normal((6, 3, 3, 5)).astype("float32")
    eta = 0.3
    opt = tasks.make_optimizer({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                                "weight_decay": 0.1, "plain_step": {"*_gate/gates": eta}}, 10)
    tasks.check_plain_step_matches(model, {"plain_step": {"*_gate/gates": eta}})
    head = model.get_layer("head").kernel
    for step in range(3):
        g_before = gate.gate_values().astype("float64")
        k_before = np.asarray(head.numpy(), "float64")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - target) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        by_path = {v.path: np.asarray(g, "float64") for v, g in zip(model.trainable_variables, grads)}
        opt.apply(grads, model.trainable_variables)
        # Algorithm 1: g <- clip(g - eta dL/dg) into [0, 1]; no momentum, no decay, every step
        expected = np.clip(g_before - eta * by_path["m2_gate/gates"], 0.0, 1.0)
        np.testing.assert_allclose(gate.gate_values(), expected, rtol=1e-5, atol=1e-6)
        if step == 0:
            # the first Nesterov step of the head: lr * (d + m * d), d = g + wd * w
            d = by_path["head/kernel"] + 0.1 * k_before
            np.testing.assert_allclose(head.numpy(), k_before - 0.05 * (d + 0.9 * d), rtol=1e-5, atol=1e-6)
    assert not np.allclose(gate.gate_values(), 0.5)  # they moved


@pytest.mark.parametrize("fan_in", [1, 4])
def test_gate_gradient_does_not_shrink_with_the_fan_in(fan_in):
    # dL/dg_jk = <dL/dx_j, y_k> (Eq. 1's binary-gate gradient) for every K: K=4 gates learn as fast as K=1
    gate = GatedConnect(cardinality=4, fan_in=fan_in, seed=3)
    rng = np.random.default_rng(1)
    y = rng.standard_normal((2, 3, 3, 4 * 2)).astype("float32")
    r = rng.standard_normal((2, 3, 3, 4 * 2)).astype("float32")
    gate.build(y.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(gate(y, training=True) * r)
    grad = tape.gradient(loss, gate.gates)
    blocks = lambda t: t.astype("float64").reshape(2, 3, 3, 4, 2)  # noqa: E731
    expected = np.einsum("nhwjf,nhwkf->jk", blocks(r), blocks(y))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-4)


def test_a_plain_step_pattern_that_matches_nothing_is_an_error():
    model, _ = _gated_model(fan_in=2)
    with pytest.raises(ValueError, match=r"`plain_step` pattern '\*_gates/gates' matches no variable"):
        tasks.check_plain_step_matches(model, {"plain_step": {"*_gates/gates": 0.1}})
    with pytest.raises(ValueError, match="plain_step.*must map variable path patterns"):
        tasks.make_optimizer({"optimizer": "sgd", "lr": 0.1, "plain_step": [0.1]}, 10)
    with pytest.raises(ValueError, match=r"plain_step\['g'\]` must be a non-negative number"):
        tasks.make_optimizer({"optimizer": "sgd", "lr": 0.1, "plain_step": {"g": -1}}, 10)


def test_optimizers_serialise_with_their_rules():
    opt = optimizers.SGD(0.1, momentum=0.9, nesterov=True, l2=5e-4, plain_step={"*_gate/gates": 0.02})
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, optimizers.SGD)
    assert (again.l2, again.plain_step, again.nesterov) == (5e-4, {"*_gate/gates": 0.02}, True)
