"""Every public layer serialises: config round-trip, .keras without custom_objects, SavedModel."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import branchzoo.layers as bzl
from branchzoo.export import export_saved_model

# One small instance per public layer, with an input shape (batch excluded), or a list of
# (shape, dtype) for a layer called on several inputs (integer inputs are class ids below 2).
SAMPLES = {
    "MultiPathBlock": (lambda: bzl.MultiPathBlock(4, [[1, 3], [2, 5]], strides=2), (8, 8, 3)),
    "GroupedConv2D": (lambda: bzl.GroupedConv2D(8, 3, padding="same", groups=4), (8, 8, 8)),
    "BatchedDense": (lambda: bzl.BatchedDense(4, activation="relu"), (3, 5)),
    # the DenseNet-BC module: grouped convs, BN and the per-module concatenation (MLP/CNN in test_modular.py)
    "ModularLossEnsemble": (
        lambda: bzl.ModularLossEnsemble(3, 4, module={"type": "densenet_bc", "depth": 10, "growth_rate": 2},
                                        active_modules=[0, 2]),
        (8, 8, 3),
    ),
    "GatedConnect": (lambda: bzl.GatedConnect(4, 2, seed=3), (6, 6, 4 * 3)),
    "ResNeXtModule": (lambda: bzl.ResNeXtModule(4, 2, 6, strides=2), (8, 8, 4 * 3)),
    "BranchSum": (lambda: bzl.BranchSum(3, logit_clamp=1.5), (3, 5)),
    "GaussianBlur": (lambda: bzl.GaussianBlur(1.0), (8, 8, 3)),
    "LearnedDiffusion": (lambda: bzl.LearnedDiffusion(3, filters=8, num_layers=4), (8, 8, 3)),
    "MultiDomainDiscriminator": (lambda: bzl.MultiDomainDiscriminator(3, dim_in=4, max_dim=8), (16, 16, 3)),
    "BranchedGenerator": (
        lambda: bzl.BranchedGenerator(2, 2, dim_in=4, max_dim=8, style_dim=4, num_downsamples=1,
                                      smoothing="learned", diffusion_filters=8, diffusion_layers=3),
        [((8, 8, 3), "float32"), ((), "int32")],
    ),
}


def test_every_public_layer_has_a_sample():
    assert sorted(SAMPLES) == sorted(bzl.__all__)


def _specs(shape):
    return shape if isinstance(shape, list) else [(shape, "float32")]


def _model(name):
    factory, shape = SAMPLES[name]
    inputs = [keras.Input(s, dtype=d) for s, d in _specs(shape)]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    return keras.Model(inputs, factory()(inputs)), shape


def _batch(shape, seed, size=2):
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, 2, (size, *s)).astype(d) if d.startswith("int")
             else rng.standard_normal((size, *s)).astype(d) for s, d in _specs(shape)]
    return parts if len(parts) > 1 else parts[0]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_config_round_trip(name):
    layer = SAMPLES[name][0]()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"branchzoo>{type(layer).__name__}"
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(layer)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_keras_file_round_trip_without_custom_objects(name, tmp_path):
    model, shape = _model(name)
    x = _batch(shape, 1)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_saved_model_export_reproduces_outputs(name, tmp_path):
    model, shape = _model(name)
    x = _batch(shape, 2)
    path = tmp_path / "exported"
    diff = export_saved_model(model, str(path), verify_batch=x)
    assert diff <= 1e-5
    reloaded = tf.saved_model.load(str(path))
    served = reloaded.serve([tf.constant(p) for p in x] if isinstance(x, list) else tf.constant(x))
    np.testing.assert_allclose(np.asarray(served), model.predict(x, verbose=0), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temp folders left


def test_export_refuses_to_write_a_mismatching_model(tmp_path, monkeypatch):
    model, shape = _model("MultiPathBlock")
    x = np.ones((1, *shape), "float32")
    real_call = model.__call__
    monkeypatch.setattr(model, "__call__", lambda *a, **k: real_call(*a, **k) + 1.0)
    with pytest.raises(ValueError, match="differs from the Keras model"):
        export_saved_model(model, str(tmp_path / "bad"), verify_batch=x)
    assert list(tmp_path.iterdir()) == []
