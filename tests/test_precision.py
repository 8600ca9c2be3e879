"""Mixed precision (train.py --precision): every family trains, matches float32 and exports under
mixed_bfloat16 on the CPU; mixed_float16 scales the loss; float32 stays the default.

The forward tolerance: bfloat16 keeps 8 significant bits, so one rounding is off by at most
u = 2^-8 relative. Every layer rounds its output (and reads rounded weights) once; over the at
most 64 such stages of these models independent errors add up like a random walk, sqrt(64) u =
8u = 2^-5, which is what the tests allow for the RMS of the difference from float32 over the RMS
of the float32 output. The CPU-sized models measured at most 5 u here. A layer computing something
delicate in 16 bits (gates ranked in bfloat16, statistics summed in bfloat16) shows up below as
a different top-K or an identity off by more than float32 rounding, not as a tolerance breach.
"""

import json

import keras
import numpy as np
import pytest

import branchzoo
from branchzoo import precision, tasks, training, zoo
from branchzoo.layers import GatedConnect, LearnedDiffusion
from branchzoo.models.resnext import connectivity_masks

BF16 = "mixed_bfloat16"
U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
U_F32 = 2.0**-24
TOL = 8 * U_BF16
# A shallow tiny MPNet (as test_train.TINY): the end-to-end run's point is the precision, not the depth.
TINY_MPNET = {"widths": [4, 4, 8, 8], "pathways": [[1, 3], [1, 5]], "blocks_per_stage": 1}


def assert_rms_close(actual, reference, tol=TOL):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    error = np.sqrt(np.mean((actual - reference) ** 2))
    scale = np.sqrt(np.mean(reference**2))
    assert error <= tol * scale, f"RMS error {error:.3g} > {tol:.3g} x RMS {scale:.3g} ({error / scale / U_BF16:.1f} u)"


def test_relative_tolerance_is_eight_unit_roundoffs():
    assert precision.relative_tolerance(BF16) == TOL == 0.03125
    assert precision.relative_tolerance("mixed_float16") == 8 * 2.0**-11
    assert precision.relative_tolerance("float32") == 0.0


def test_dtype_policy_is_restored_and_bad_names_are_refused():
    before = keras.config.dtype_policy().name
    with precision.dtype_policy(BF16):
        assert keras.config.dtype_policy().name == BF16
        assert precision.head_policy() == "float32"
    assert keras.config.dtype_policy().name == before == "float32"
    assert precision.head_policy() is None  # float32 builds pass no dtype: nothing changes
    with pytest.raises(RuntimeError), precision.dtype_policy("mixed_float16"):
        raise RuntimeError("a failed build")
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match=r"`precision` must be one of .*mixed_bfloat16.*Received: precision='float16'"):
        training.resolve_run_config("mpnet", precision="float16")


def test_precision_comes_from_the_flag_then_the_recipe_then_float32(tmp_path, monkeypatch):
    assert training.resolve_run_config("mpnet")["precision"] == "float32"
    assert training.resolve_run_config("mpnet", precision=BF16)["precision"] == BF16
    folder = tmp_path / "zoo"
    folder.mkdir()
    entry = {"name": "tiny_mixed", "builder": "mpnet", "config": TINY_MPNET, "dataset": "digits",
             "recipe": {"dataset": "digits", "epochs": 1, "batch_size": 8, "lr": 0.1, "precision": BF16}}
    (folder / "tiny_mixed.json").write_text(json.dumps(entry))
    entry = dict(entry, name="tiny_bad", recipe=dict(entry["recipe"], precision="bfloat16"))
    (folder / "tiny_bad.json").write_text(json.dumps(entry))
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(folder))
    zoo.clear_cache()
    try:
        assert training.resolve_run_config("tiny_mixed")["precision"] == BF16
        assert training.resolve_run_config("tiny_mixed", precision="float32")["precision"] == "float32"
        with pytest.raises(ValueError, match=r"Recipe of 'tiny_bad': `precision` must be one of"):
            training.resolve_run_config("tiny_bad")
    finally:
        zoo.clear_cache()


# -- the forward pass: float32 weights, mixed_bfloat16 compute ---------------------------------

# One entry of every family; published weights where there are some (they must load unchanged).
FORWARD = [
    ("mpnet_tiny_digits", {}, (32, 32, 3)),
    ("resnext_gated_tiny_cifar10", {}, (32, 32, 3)),
    ("modular_mlp_256x4", {}, (28, 28, 1)),
    ("branched_resnet18_8x4_cifar10", {}, (32, 32, 3)),
    ("branched_stem_2x2_cifar10", {"branch_filters": 8, "trunk_widths": [32, 64]}, (32, 32, 3)),
    ("densenet18_cifar10", {"width_multiplier": 0.25}, (32, 32, 3)),
    ("vgg16_cifar10", {"width_multiplier": 0.125}, (32, 32, 3)),
]


def _pair(name, overrides):
    """The entry in float32 and under mixed_bfloat16 with the same weights (published ones if any)."""
    if zoo.get_entry(name).get("weights") and not overrides:
        reference = zoo.load(name)
        with precision.dtype_policy(BF16):
            mixed = zoo.load(name)  # the published file loads into the mixed model as it is
        return reference, mixed
    keras.utils.set_random_seed(0)
    reference = zoo.build(name, **overrides)
    with precision.dtype_policy(BF16):
        mixed = zoo.build(name, **overrides)
    mixed.set_weights(reference.get_weights())
    return reference, mixed


@pytest.mark.parametrize("name, overrides, shape", FORWARD, ids=[f[0] for f in FORWARD])
def test_mixed_bfloat16_forward_matches_float32(name, overrides, shape):
    reference, mixed = _pair(name, overrides)
    assert precision.model_precision(mixed) == BF16 and precision.model_precision(reference) == "float32"
    assert all(v.dtype == "float32" for v in mixed.weights)
    assert [v.path for v in mixed.weights] == [v.path for v in reference.weights]
    x = np.random.default_rng(0).standard_normal((16, *shape)).astype("float32")
    expected = np.asarray(reference(x, training=False))
    got = mixed(x, training=False)
    assert str(got.dtype) in ("float32", "<dtype: 'float32'>")  # the head outputs float32
    assert_rms_close(got, expected)
    if "gated" in name:  # the same blocks read at inference
        assert all(np.array_equal(a, b) for a, b in zip(connectivity_masks(mixed), connectivity_masks(reference)))


def test_mixed_bfloat16_generator_decomposes_exactly():
    reference, mixed = _pair("branched_gan_cifar10_catdog", {})
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    classes = np.array([0, 1] * 4, "int32")
    want = reference.decompose(x, classes)
    out = mixed.decompose(x, classes)
    assert {str(v.dtype) for v in out.values()} == {"<dtype: 'float32'>"}
    assert_rms_close(out["image"], want["image"])
    np.testing.assert_array_equal(out["smooth"], want["smooth"])  # S(x) is smoothed in float32
    # branches + S(x) = output to float32 rounding of the sum of its N + 1 terms
    branches, smooth, image = (np.asarray(out[k], np.float64) for k in ("branches", "smooth", "image"))
    bound = (branches.shape[1] + 1) * U_F32 * (np.abs(branches).sum(axis=1) + np.abs(smooth))
    assert np.all(np.abs(branches.sum(axis=1) + smooth - image) <= bound)


def test_mixed_bfloat16_learned_diffusion_telescopes_in_float32():
    with precision.dtype_policy(BF16):
        diffusion = LearnedDiffusion(steps=3, filters=8, num_layers=3)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    residuals, final = diffusion.decompose(x)
    assert str(residuals.dtype) == str(final.dtype) == "<dtype: 'float32'>"
    residuals, final = np.asarray(residuals, np.float64), np.asarray(final, np.float64)
    bound = 4 * U_F32 * (np.abs(residuals).sum(axis=1) + np.abs(final) + np.abs(x))
    assert np.all(np.abs(residuals.sum(axis=1) + final - x) <= bound)


def test_analyses_read_float32_features_from_a_mixed_model():
    from branchzoo.analysis import extraction
    from branchzoo.analysis.registry import AnalysisData, run_analyses

    reference, mixed = _pair("mpnet_tiny_digits", TINY_MPNET)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 32)
    names = [info.name for info in extraction.analysis_layers(mixed)][:4]
    got, _, out = extraction.collect_features(mixed, (x, y), names)
    want, _, _ = extraction.collect_features(reference, (x, y), names)
    assert out.dtype == np.float32
    for name in names:  # pooled in float32 from the 16-bit maps
        assert got[name].dtype == np.float32
        assert_rms_close(got[name], want[name])
    data = AnalysisData(train=[(x, y)], test=[(x, y)], num_classes=10)
    results = run_analyses(["saturation", "cka"], mixed, data)
    assert results


# -- GatedConnect: the gates, their top-K and their draw stay float32 ---------------------------

def _gate_pair(**kwargs):
    layers = []
    for policy in ("float32", BF16):
        with precision.dtype_policy(policy):
            layer = GatedConnect(**kwargs)
        layer.build((None, 4 * 2))
        layers.append(layer)
    return layers


def test_gated_top_k_under_mixed_precision_is_float32s():
    reference, mixed = _gate_pair(cardinality=2, fan_in=2, num_inputs=4, seed=0)
    # 0.5, 0.5 + 2^-10 and 0.5 + 2^-9 are one bfloat16 number (spacing 2^-8 there): ranked in
    # bfloat16, every row would tie and read blocks 0 and 1.
    gates = np.array([[0.5, 0.5 + 2**-10, 0.3, 0.5 + 2**-9],
                      [0.5 + 2**-9, 0.2, 0.5 + 2**-10, 0.5]], "float32")
    expected = np.array([[0, 1, 0, 1], [1, 0, 1, 0]], "float32")
    for layer in (reference, mixed):
        layer.gates.assign(gates)
        np.testing.assert_array_equal(layer.binary_gates(), expected)
    assert mixed.gates.dtype == "float32"
    # the routing itself: block k holds the value k + 1 (two channels each), so block j reads the
    # mean of the blocks its gates select: (2 + 4) / 2 and (1 + 3) / 2, exact in bfloat16
    x = np.repeat(np.arange(1.0, 5.0, dtype="float32"), 2)[None]
    np.testing.assert_array_equal(np.asarray(mixed(x), "float32"), [[3, 3, 2, 2]])
    np.testing.assert_array_equal(np.asarray(reference(x)), [[3, 3, 2, 2]])


def test_gated_sampling_under_mixed_precision_is_float32s():
    reference, mixed = _gate_pair(cardinality=8, fan_in=2, num_inputs=4, seed=3)
    # block k holds 2^k: the mean of the two blocks a block reads, (2^a + 2^b) / 2, names them
    x = np.repeat(2.0 ** np.arange(4, dtype="float32"), 2)[None]
    for _ in range(3):  # the same Gumbel-top-k draws from the same seed, step after step
        read = np.asarray(mixed(x, training=True), "float32")
        np.testing.assert_array_equal(read, np.asarray(reference(x, training=True)))
        picked = np.round(2 * read[0, ::2]).astype(int)
        assert all(bin(p).count("1") == 2 for p in picked)  # two distinct blocks each
    assert str(mixed.connection_gates(training=True).dtype) == "<dtype: 'float32'>"


# -- a few training steps of every family ---------------------------------------------------------

# Small configurations of one entry per family, at 16x16 (the recipes' losses, metrics and optimizers).
TRAIN = [
    ("mpnet_tiny_digits", TINY_MPNET),
    ("resnext_gated_tiny_cifar10", {"depth": 11, "width": 2, "cardinality": 4, "fan_in": 2,
                                    "stage_widths": [8, 8, 8], "stem_width": 8}),
    ("modular_mlp_256x4", {"num_modules": 16}),
    ("branched_resnet18_8x4_digits", {"num_branches": 2, "base_width": 2}),
    ("branched_stem_2x2_cifar10", {"branch_filters": 4, "trunk_widths": [8, 8]}),
    ("densenet18_cifar10", {"width_multiplier": 0.125, "blocks": [1, 1]}),
    ("branched_gan_tiny_digits", {"num_branches": 2, "dim_in": 4, "max_dim": 8, "style_dim": 8,
                                  "discriminator_dim_in": 4, "discriminator_max_dim": 8}),
]


def _train_steps(name, overrides, policy, steps=2):
    """`steps` steps of batch 8 on random 16x16 images, compiled by the entry's recipe; eager (the same
    train_step as a traced run, without minutes of tracing on 2 cores; train() below is traced)."""
    keras.utils.set_random_seed(0)
    overrides = dict(overrides, input_shape=[16, 16, 3])
    gan = "gan" in name
    run = training.resolve_run_config(name, dataset=None if gan else "digits", model_kwargs=overrides,
                                      epochs=2 if "gated" in name else 1, precision=policy)
    with precision.dtype_policy(policy):
        model = zoo.build(name, **overrides)
    tasks.get_task(run["task"]).compile(model, run, run["phases"][0], steps_per_epoch=steps)
    model.run_eagerly = True
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8 * steps, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 2 if gan else 10, 8 * steps)
    data = ([x, y], 1 - y) if gan else (x, y)
    history = model.fit(*data, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    return model, history


@pytest.mark.parametrize("name, overrides", TRAIN, ids=[t[0] for t in TRAIN])
def test_mixed_bfloat16_training_steps_give_finite_losses(name, overrides):
    model, history = _train_steps(name, overrides, BF16)
    assert precision.model_precision(model) == BF16
    assert history and all(np.isfinite(v[-1]) for v in history.values()), history
    assert all(v.dtype == "float32" and np.all(np.isfinite(np.asarray(v))) for v in model.weights)
    if "gated" in name:
        gates = [l for l in model.layers if isinstance(l, GatedConnect)]
        assert all(not np.all(g.gate_values() == 0.5) for g in gates)  # Algorithm 1's step reached them


@pytest.mark.parametrize("name, overrides", [TRAIN[1], TRAIN[-1]], ids=["resnext_gated", "branched_gan"])
def test_mixed_float16_trains_with_loss_scaling(name, overrides):
    model, history = _train_steps(name, overrides, "mixed_float16", steps=1)
    assert precision.model_precision(model) == "mixed_float16"
    optimizers = [model.g_optimizer, model.d_optimizer] if "gan" in name else [model.optimizer]
    for optimizer in optimizers:
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(optimizer.dynamic_scale.numpy()) > 1
    if "gated" in name:  # the paper's SGD (coupled L2, plain-step gates) under the loss scale
        assert isinstance(model.optimizer.inner_optimizer, branchzoo.optimizers.SGD)
        assert model.optimizer.inner_optimizer.plain_step
        # one plain step of rate 0.02 from 0.5: it moved them, by an unscaled gradient (a gradient
        # still multiplied by the loss scale, 2^15, would clip every gate to 0 or 1)
        moved = [np.abs(g.gate_values() - 0.5).max() for g in model.layers if isinstance(g, GatedConnect)]
        assert all(0 < m < 0.1 for m in moved), moved
    assert all(np.isfinite(v[-1]) for v in history.values()), history


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_mixed_float16_wraps_the_papers_optimizers(optimizer):
    with precision.dtype_policy("mixed_float16"):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, dtype=precision.head_policy())(hidden))
    model.compile(getattr(branchzoo.optimizers, optimizer)(0.01, l2=1e-4, plain_step={"*hidden/bias": 0.1}),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert type(model.optimizer.inner_optimizer) is getattr(branchzoo.optimizers, optimizer)
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    history = model.fit(x, np.arange(8) % 3, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0]) and int(model.optimizer.iterations.numpy()) == 1
    assert model.optimizer.inner_optimizer._plain_rates  # the plain-step bias was found under the wrapper


# -- a run by the recipe: config.json, the checkpoint, the export, evaluate.py, --resume ------------

def test_train_run_records_precision_exports_float32_and_resume_keeps_it(tmp_path):
    import tensorflow as tf

    out = tmp_path / "run"
    run = training.resolve_run_config("mpnet", model_kwargs=TINY_MPNET, epochs=1, batch_size=32,
                                      steps_per_epoch=2, validate=False, precision=BF16,
                                      output=str(out), export=str(tmp_path / "savedmodel"))
    metrics = training.train(run, verbose=0)
    assert keras.config.dtype_policy().name == "float32"  # nothing leaks out of the run
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["top1"] <= 1
    with open(out / "config.json") as f:
        assert json.load(f)["precision"] == BF16

    model = keras.models.load_model(str(out / "model.keras"))
    assert precision.model_precision(model) == BF16
    assert model.get_layer("predictions").dtype_policy.name == "float32"
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    reloaded = tf.saved_model.load(str(tmp_path / "savedmodel"))  # keep it: it owns the variables
    served = reloaded.serve(tf.constant(x))
    assert served.dtype == tf.float32
    assert_rms_close(served, model.predict(x, verbose=0))

    evaluated = training.evaluate(checkpoint=str(out / "model.keras"), verbose=0)
    assert evaluated["precision"] == BF16

    # An interrupted run (its backup is there) resumes only with the precision it started with.
    backup = out / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 1, "weights": "w", "phase": 0}))
    with pytest.raises(ValueError, match=r"precision: stored 'mixed_bfloat16', given 'float32'"):
        training.prepare(dict(run, precision="float32"), resume=True)
    prepared = training.prepare(run, resume=True)
    assert precision.model_precision(prepared.model) == BF16


def test_exported_mixed_generator_serves_float32(tmp_path):
    import tensorflow as tf

    from branchzoo.export import export_saved_model

    with precision.dtype_policy(BF16):
        gan = zoo.build("branched_gan_tiny_digits", input_shape=[16, 16, 3], num_branches=2, dim_in=4,
                        max_dim=8, style_dim=8, discriminator_dim_in=4, discriminator_max_dim=8,
                        output_initializer="he_normal")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    classes = np.array([0, 1, 1, 0], "int32")
    export_saved_model(gan.generator, str(tmp_path / "g"), verify_batch=[x, classes],
                       rtol=precision.relative_tolerance(BF16))
    reloaded = tf.saved_model.load(str(tmp_path / "g"))
    served = reloaded.serve([tf.constant(x), tf.constant(classes)])
    assert served.dtype == tf.float32
    assert_rms_close(served, gan.generator([x, classes]))
