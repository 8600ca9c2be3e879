"""BranchSum and the branched models: a sum of separately built branches, counts, serialisation."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from branchzoo.export import export_saved_model
from branchzoo.layers import BatchedDense, BranchSum
from branchzoo.models import branched_mlp, branched_resnet, branched_resnet18

RNG = np.random.default_rng(0)


# -- the layer ----------------------------------------------------------------------


def test_branch_sum_adds_branches_pass_through_and_clamps():
    branches = RNG.standard_normal((4, 3, 5)).astype("float32") * 3
    passed = RNG.standard_normal((4, 5)).astype("float32")
    total = branches[:, 0] + branches[:, 1] + branches[:, 2]  # by hand
    np.testing.assert_allclose(np.asarray(BranchSum()(branches)), total, rtol=1e-6)
    out, back = BranchSum(3, pass_through=True, return_branches=True)([branches, passed])
    np.testing.assert_allclose(np.asarray(out), total + passed, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(back), branches)
    clamped = np.asarray(BranchSum(logit_clamp=2.0)(branches))
    np.testing.assert_allclose(clamped, np.minimum(np.maximum(total, -2.0), 2.0), rtol=1e-6)
    assert clamped.max() == 2.0 and clamped.min() == -2.0  # the clamp was active
    lopsided = np.asarray(BranchSum(logit_clamp=(0, 1))(branches))
    assert lopsided.min() == 0.0 and lopsided.max() == 1.0
    # any trailing shape: [batch, N, H, W, C] (e.g. branch images of a generator)
    images = RNG.standard_normal((2, 4, 3, 3, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(BranchSum()(images)), images.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_branch_sum_config_round_trip():
    layer = BranchSum(4, logit_clamp=3, pass_through=True, return_branches=True, name="bs")
    config = layer.get_config()
    assert config["logit_clamp"] == [-3.0, 3.0]
    clone = BranchSum.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_branches": 0}, r"`num_branches` must be >= 1. Received: num_branches=0"),
    ({"logit_clamp": -1}, r"`logit_clamp` must be a positive number.*Received: logit_clamp=-1"),
    ({"logit_clamp": (2, 1)}, r"low < high. Received: logit_clamp=\(2, 1\)"),
    ({"logit_clamp": "5"}, r"Received: logit_clamp='5'"),
])
def test_branch_sum_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BranchSum(**kwargs)


def test_branch_sum_bad_inputs():
    with pytest.raises(ValueError, match=r"axis 1 must equal `num_branches` \(4\)"):
        BranchSum(4)(np.zeros((2, 3, 5), "float32"))
    with pytest.raises(ValueError, match="shape of one branch's output"):
        BranchSum(pass_through=True)([np.zeros((2, 3, 5), "float32"), np.zeros((2, 4), "float32")])
    with pytest.raises(ValueError, match=r"takes \[branches, pass_through\]"):
        BranchSum(pass_through=True)(np.zeros((2, 3, 5), "float32"))


# -- the branched ResNet18 equals N separately built ResNet18s ------------------------


def _branch_slice(layer, value, branch, num_branches):
    """Branch `branch`'s part of one weight of an N-wide layer (rule written from the layout)."""
    if isinstance(layer, BatchedDense):  # [N, in, out] and [N, out]
        return value[branch:branch + 1]
    width = value.shape[-1] // num_branches  # branch-major channels on the last axis
    return value[..., branch * width:(branch + 1) * width]


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # non-trivial inference statistics
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


@pytest.mark.parametrize("training", [False, True])
def test_branched_resnet18_is_the_sum_of_separate_resnet18s(training):
    n, width = 3, 2
    branched = branched_resnet18(n, base_width=width, num_classes=4, input_shape=(16, 16, 3))
    _randomize(branched, 1)
    singles = []
    for b in range(n):
        single = branched_resnet18(1, base_width=width, num_classes=4, input_shape=(16, 16, 3))
        for layer in single.layers:
            if layer.weights:
                source = branched.get_layer(layer.name)
                layer.set_weights([_branch_slice(source, v, b, n) for v in source.get_weights()])
        singles.append(single)
    x = RNG.standard_normal((5, 16, 16, 3)).astype("float32")
    expected = sum(np.asarray(s(x, training=training)) for s in singles)
    got = np.asarray(branched(x, training=training))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
    assert np.abs(expected).max() > 0.1  # not a trivially zero comparison


def test_return_branches_sum_to_the_output_and_clamp_applies_to_the_sum():
    model = branched_resnet(4, blocks_per_stage=(1, 1), base_width=3, num_classes=6,
                            input_shape=(8, 8, 3), return_branches=True)
    x = RNG.standard_normal((3, 8, 8, 3)).astype("float32")
    logits, branches = model(x, training=False)
    assert branches.shape == (3, 4, 6)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(branches).sum(axis=1), rtol=1e-5, atol=1e-5)
    # The same weights with a clamp: only the sum is clipped.
    clamped = branched_resnet(4, blocks_per_stage=(1, 1), base_width=3, num_classes=6,
                              input_shape=(8, 8, 3), logit_clamp=0.05)
    clamped.set_weights(model.get_weights())
    expected = np.clip(np.asarray(branches).sum(axis=1), -0.05, 0.05)
    np.testing.assert_allclose(np.asarray(clamped(x, training=False)), expected, rtol=1e-5, atol=1e-6)


def test_branched_resnet18_layout():
    model = branched_resnet18(2, base_width=4, num_classes=5)
    assert model.name == "branched_resnet18_2x4"
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 3, 8)
    conv = model.get_layer("stage2_block1_conv1")
    assert conv.groups == 2 and conv.kernel.shape == (3, 3, 4, 16) and conv.strides == (2, 2)
    assert model.get_layer("stage2_block1_shortcut_conv").kernel.shape == (1, 1, 4, 16)
    names = {l.name for l in model.layers}
    assert "stage1_block1_shortcut_conv" not in names and "stage1_block2_shortcut_conv" not in names
    assert "stage3_block2_shortcut_conv" not in names
    spatial = [model.get_layer(f"stage{s}_block2_relu2").output.shape[1] for s in range(1, 5)]
    assert spatial == [32, 16, 8, 4]
    assert model.get_layer("branch_features").output.shape == (None, 2, 32)
    assert model.get_layer("branch_logits").kernel.shape == (2, 32, 5)
    assert model.output.shape == (None, 5)


def _resnet18_count(w, k=10):
    """Trainable parameters of one CIFAR ResNet18 branch, counted from the layout by hand."""
    count = 3 * 3 * 3 * w + 2 * w  # stem conv + BN (gamma, beta)
    c_in = w
    for s in range(4):
        c = w * 2**s
        for b in range(2):
            count += 3 * 3 * c_in * c + 2 * c + 3 * 3 * c * c + 2 * c
            if c_in != c:  # projection shortcut: 1x1 conv + BN
                count += c_in * c + 2 * c
            c_in = c
    return count + c_in * k + k


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_parameter_counts_per_branch():
    assert _resnet18_count(16) == 701_466  # 0.70M per branch: the slim width the paper entries use
    assert _resnet18_count(32) == 2_797_610  # 2.8M
    assert _resnet18_count(64) == 11_173_962  # pytorch-cifar's ResNet18: 11.2M
    model = branched_resnet18(2, base_width=16)
    assert _trainable(model) == 2 * 701_466
    bn_channels = 16 * (1 + 2 * 2) + 32 * 5 + 64 * 5 + 128 * 5  # stem + (4, or 5 with shortcut) BNs per stage
    assert model.count_params() == 2 * 701_466 + 2 * 2 * bn_channels  # + moving mean and variance


@pytest.mark.slow
def test_full_width_branch_is_resnet18():
    assert _trainable(branched_resnet18(1, base_width=64)) == 11_173_962


def test_branched_mlp_is_a_sum_of_mlps():
    model = branched_mlp(3, hidden_units=(4, 5), num_classes=2, input_shape=(3,), activation="tanh",
                         return_branches=True)
    x = RNG.standard_normal((6, 3)).astype("float32")
    out, branches = model(x)
    w1, b1 = model.get_layer("hidden1").get_weights()
    w2, b2 = model.get_layer("hidden2").get_weights()
    w3, b3 = model.get_layer("branch_logits").get_weights()
    manual = []
    for i in range(3):  # each branch as its own float64 MLP
        h = np.tanh(x @ w1[:, 4 * i:4 * (i + 1)] + b1[4 * i:4 * (i + 1)])
        h = np.tanh(h @ w2[i] + b2[i])
        manual.append(h @ w3[i] + b3[i])
    np.testing.assert_allclose(np.asarray(branches), np.stack(manual, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), np.sum(manual, axis=0), rtol=1e-5, atol=1e-6)
    linear = branched_mlp(2, hidden_units=(), num_classes=1, input_shape=(2,))
    assert _trainable(linear) == 2 * (2 + 1)


@pytest.mark.parametrize("builder, kwargs, message", [
    (branched_resnet18, {"num_branches": 0}, r"`num_branches` must be >= 1. Received: num_branches=0"),
    (branched_resnet18, {"base_width": 2.5}, r"`base_width` must be an integer. Received: base_width=2.5"),
    (branched_resnet18, {"input_shape": (32, 32)}, r"`input_shape` must be \(height, width, channels\)"),
    (branched_resnet18, {"logit_clamp": 0}, r"Received: logit_clamp=0"),
    (branched_resnet, {"num_branches": 2, "blocks_per_stage": []}, r"`blocks_per_stage` must be a non-empty"),
    (branched_mlp, {"hidden_units": (4, 0)}, r"`hidden_units\[1\]` must be >= 1"),
])
def test_builder_bad_arguments(builder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


# -- serialisation of a whole branched model -------------------------------------------


def test_branched_model_keras_file_and_saved_model(tmp_path):
    model = branched_resnet(2, blocks_per_stage=(1, 1), base_width=2, num_classes=3,
                            input_shape=(8, 8, 3), logit_clamp=(-1, 2))
    _randomize(model, 2)
    x = RNG.standard_normal((4, 8, 8, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    assert loaded.get_layer("branch_sum").logit_clamp == [-1.0, 2.0]
    diff = export_saved_model(model, str(tmp_path / "exported"), verify_batch=x)
    assert diff <= 1e-5
    reloaded = tf.saved_model.load(str(tmp_path / "exported"))  # holds the variables
    served = reloaded.serve(tf.constant(x))
    np.testing.assert_allclose(np.asarray(served), expected, atol=1e-5)


def test_zoo_cards_count_n_branches_by_hand():
    import branchzoo

    names = branchzoo.list_models("branched_resnet18_*")
    assert {"branched_resnet18_16x16_cifar10", "branched_resnet18_8x16_cifar10",
            "branched_resnet18_8x4_digits"} <= set(names)
    for name in names:
        card = branchzoo.model_card(name)
        config = card["config"]
        assert card["family"] == "branchsum" and card["paper"].startswith("000_a8fb4f73aa903839.txt")
        expected = config["num_branches"] * _resnet18_count(config["base_width"], config["num_classes"])
        assert card["parameters"]["trainable"] == expected, name
    assert branchzoo.model_card("branched_resnet18_16x16_cifar10")["parameters"]["trainable"] == 16 * 701_466


def test_readme_title_of_branched_resnet18():
    from branchzoo import registry

    title = registry.get_builder("branched_resnet18")["title"]
    assert title({"num_branches": 8, "base_width": 4, "logit_clamp": 5.0}) == \
        "BranchSum(8 x ResNet18, width 4), clamp 5"
    assert title({"num_branches": 2}) == "BranchSum(2 x ResNet18, width 16)"  # the builder's defaults


# -- the loss of the paper's classifier (000, Sec. 6) ------------------------------------------


def _clamped_target_ce_reference(labels, logits, low, high):
    """Cross-entropy against softmax(high at the label, low elsewhere), float64 NumPy."""
    logits = np.asarray(logits, np.float64)
    values = np.full(logits.shape, float(low))
    values[np.arange(len(labels)), labels] = high
    target = np.exp(values) / np.exp(values).sum(axis=1, keepdims=True)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(target * log_p).sum(axis=1), target


def test_clamped_target_crossentropy_by_hand():
    from branchzoo.losses import ClampedTargetCrossentropy, clamped_target

    labels = np.array([0, 2, 1, 2])
    logits = RNG.uniform(-3, 3, (4, 3))
    per_example, _ = _clamped_target_ce_reference(labels, logits, -2.0, 3.0)
    loss = ClampedTargetCrossentropy(logit_clamp=(-2, 3), dtype="float64")
    assert float(loss(labels, logits)) == pytest.approx(per_example.mean(), rel=1e-12)
    # 10 classes in [-5, 5]: 1 / (1 + 9 e^-10) on the labelled class, e^-5 / (e^5 + 9 e^-5) elsewhere
    target = np.asarray(clamped_target(np.array([[3]]), 10, 5.0, dtype="float64"))
    assert target[0, 3] == pytest.approx(1 / (1 + 9 * np.exp(-10.0)), rel=1e-12)
    assert target[0, 3] == pytest.approx(0.9995916, abs=1e-7)
    assert target[0, 0] == pytest.approx(np.exp(-5.0) / (np.exp(5.0) + 9 * np.exp(-5.0)), rel=1e-12)
    # float32, as in training
    logits32 = (RNG.standard_normal((6, 10)) * 4).astype("float32")
    labels32 = RNG.integers(0, 10, 6)
    expected, _ = _clamped_target_ce_reference(labels32, logits32, -5.0, 5.0)
    assert float(ClampedTargetCrossentropy(5.0)(labels32, logits32)) == pytest.approx(expected.mean(), rel=1e-5)


def test_clamped_target_crossentropy_gradient_vanishes_at_the_clamp_bounds():
    """Eq. 3: dL/dy = (softmax(y) - target) / batch, zero at y = (high at the label, low elsewhere)."""
    from branchzoo.losses import ClampedTargetCrossentropy

    labels = np.array([1, 0])
    loss = ClampedTargetCrossentropy(logit_clamp=5.0, dtype="float64")
    logits = tf.Variable(RNG.uniform(-5, 5, (2, 4)))
    with tf.GradientTape() as tape:
        value = loss(labels, logits)
    _, target = _clamped_target_ce_reference(labels, logits.numpy(), -5.0, 5.0)
    softmax = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(tape.gradient(value, logits).numpy(), (softmax - target) / 2, atol=1e-12)
    best = tf.Variable(np.where(np.arange(4)[None, :] == labels[:, None], 5.0, -5.0))
    with tf.GradientTape() as tape:
        value = loss(labels, best)
    assert np.abs(tape.gradient(value, best).numpy()).max() < 1e-15
    entropy = -(target * np.log(target)).sum(axis=1).mean()  # the minimum is the target's entropy
    assert float(value) == pytest.approx(entropy, rel=1e-9)


def test_clamped_target_crossentropy_serialises_and_refuses_bad_input():
    from branchzoo.losses import ClampedTargetCrossentropy

    loss = ClampedTargetCrossentropy(logit_clamp=4, name="ce")
    config = loss.get_config()
    assert config["logit_clamp"] == [-4.0, 4.0]
    assert json.dumps(ClampedTargetCrossentropy.from_config(config).get_config()) == json.dumps(config)
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(loss))))
    assert isinstance(again, ClampedTargetCrossentropy) and again.logit_clamp == [-4.0, 4.0]
    with pytest.raises(ValueError, match="Received: logit_clamp=None"):
        ClampedTargetCrossentropy(logit_clamp=None)
    with pytest.raises(ValueError, match=r"shape \[batch, num_classes\]"):
        loss(np.array([0]), np.zeros((1, 2, 3), "float32"))


def test_paper_entries_train_on_the_clamped_target_and_the_published_one_on_one_hot():
    from branchzoo import tasks, zoo
    from branchzoo.losses import ClampedTargetCrossentropy

    for n in (2, 4, 8, 16):
        card = zoo.model_card(f"branched_resnet18_{n}x16_cifar10")
        loss = tasks.deserialize(card["recipe"]["loss"], "loss")
        assert isinstance(loss, ClampedTargetCrossentropy)
        clamp = card["config"]["logit_clamp"]
        assert loss.logit_clamp == [-clamp, clamp]  # the same range as the model's BranchSum
        assert "not a one-hot vector" in card["recipe"]["notes"]
    published = zoo.model_card("branched_resnet18_8x4_cifar10")
    assert published["weights"] is not None and "loss" not in published["recipe"]
    assert "plain one-hot cross-entropy" in published["recipe"]["notes"]
