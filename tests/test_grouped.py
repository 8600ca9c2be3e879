"""GroupedConv2D equals keras Conv2D(groups) on every route; BatchedDense equals M Dense layers.

The module imports no backend at the top level: `_check_equivalence` and
`_check_batched_dense` also run in a subprocess under KERAS_BACKEND=jax /
torch (tests at the bottom).
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from branchzoo.layers import BatchedDense, GroupedConv2D
from branchzoo.layers.grouped import choose_implementation

RTOL = 1e-5  # relative to the largest magnitude of the reference tensor

# (kernel, stride, padding, groups); channels 32 in, 64 out (groups=C means 32).
FULL_GRID = list(itertools.product((1, 3, 5, 7), (1, 2), ("same", "valid"), (1, 2, 8, 32)))
FULL_GRID_64 = list(itertools.product((1, 3, 5, 7), (1, 2), ("same", "valid"), (1, 2, 8, 32, 64)))
# Default run: every kernel, stride, padding and groups value, in 8 configurations.
FAST_GRID = [
    (1, 1, "same", 8),
    (3, 1, "same", 8),
    (3, 2, "valid", 2),
    (3, 1, "same", 32),
    (5, 2, "same", 32),
    (5, 1, "valid", 1),
    (7, 1, "same", 2),
    (7, 2, "valid", 8),
]


def _implementations(cin, groups):
    """Every explicit route valid for this case: (implementation, groups_per_conv)."""
    routes = [("auto", None), ("native", None), ("split", 1)]
    routes += [("split", m) for m in (2, groups) if 1 < m <= groups and groups % m == 0]
    if cin == groups:
        routes.append(("depthwise", None))
    return sorted(set(routes), key=str)


def _rel_err(ref, got):
    ref, got = np.asarray(ref, "float64"), np.asarray(got, "float64")
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-12))


def _outputs_and_grads(layer, weights, x, probe):
    """(outputs, d<outputs*probe>/d[x, *weights]) on the current backend."""
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tx, tws = tf.constant(x), [tf.constant(w) for w in weights]
        with tf.GradientTape() as tape:
            tape.watch([tx] + tws)
            y = layer.stateless_call(tws, [], tx)[0]
            loss = tf.reduce_sum(y * probe)
        grads = tape.gradient(loss, [tx] + tws)
        return np.asarray(y), [np.asarray(g) for g in grads]
    if backend == "jax":
        import jax

        y, vjp = jax.vjp(lambda a, ws: layer.stateless_call(ws, [], a)[0], x, list(weights))
        gx, gws = vjp(probe.astype(y.dtype))
        return np.asarray(y), [np.asarray(gx)] + [np.asarray(g) for g in gws]
    if backend == "torch":
        import torch

        tx = torch.tensor(x, requires_grad=True)
        tws = [torch.tensor(w, requires_grad=True) for w in weights]
        y = layer.stateless_call(tws, [], tx)[0]
        (y * torch.tensor(probe)).sum().backward()
        return y.detach().cpu().numpy(), [t.grad.cpu().numpy() for t in [tx] + tws]
    raise NotImplementedError(backend)


def _check_equivalence(grid, cin=32, cout=64, data_format="channels_last", dilation=1, spatial=9, routes=None):
    """Compares every route with keras Conv2D(groups) on the same weights; returns the checked count."""
    rng = np.random.default_rng(0)
    checked = 0
    # The reference is channels_last on transposed data: TensorFlow's CPU Conv2D has no NCHW
    # without oneDNN (CPUs without AVX-512, TF_ENABLE_ONEDNN_OPTS=0), Keras' groups=1 Conv2D included.
    to_last = (0, 2, 3, 1) if data_format == "channels_first" else (0, 1, 2, 3)
    to_layer = tuple(np.argsort(to_last))
    for k, stride, padding, groups in grid:
        if dilation > 1 and stride > 1:
            continue
        shape = (2, spatial, spatial, cin) if data_format == "channels_last" else (2, cin, spatial, spatial)
        x = rng.standard_normal(shape).astype("float32")
        kwargs = dict(strides=stride, padding=padding, dilation_rate=dilation)
        ref = keras.layers.Conv2D(cout, k, groups=groups, data_format="channels_last", **kwargs)
        ref.build((2, spatial, spatial, cin))
        weights = [rng.standard_normal(tuple(w.shape)).astype("float32") for w in ref.weights]
        probe = rng.standard_normal(ref.compute_output_shape((2, spatial, spatial, cin))).astype("float32")
        y_ref, g_ref = _outputs_and_grads(ref, weights, x.transpose(to_last), probe)
        y_ref, g_ref[0], probe = y_ref.transpose(to_layer), g_ref[0].transpose(to_layer), probe.transpose(to_layer)
        kwargs["data_format"] = data_format
        for implementation, per_conv in routes or _implementations(cin, groups):
            layer = GroupedConv2D(
                cout, k, groups=groups, implementation=implementation, groups_per_conv=per_conv, **kwargs
            )
            layer.build(shape)
            assert [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in ref.weights]
            y, g = _outputs_and_grads(layer, weights, x, probe)
            where = f"k={k} s={stride} {padding} G={groups} {data_format} d={dilation} {layer.resolved_implementation}"
            assert _rel_err(y_ref, y) <= RTOL, f"outputs differ: {where}: {_rel_err(y_ref, y)}"
            for name, a, b in zip(("input", "kernel", "bias"), g_ref, g):
                assert _rel_err(a, b) <= RTOL, f"grad w.r.t. {name} differs: {where}: {_rel_err(a, b)}"
            checked += 1
    return checked


def _check_batched_dense(num_modules=3, features=5, units=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, num_modules, features)).astype("float32")
    layer = BatchedDense(units, activation="tanh")
    layer.build(x.shape)
    kernel = rng.standard_normal((num_modules, features, units)).astype("float32")
    bias = rng.standard_normal((num_modules, units)).astype("float32")
    probe = rng.standard_normal((2, 7, num_modules, units)).astype("float32")
    y, (gx, gk, gb) = _outputs_and_grads(layer, [kernel, bias], x, probe)
    for m in range(num_modules):
        dense = keras.layers.Dense(units, activation="tanh")
        dense.build((None, features))
        ym, (gxm, gkm, gbm) = _outputs_and_grads(dense, [kernel[m], bias[m]], x[:, :, m], probe[:, :, m])
        assert _rel_err(ym, y[:, :, m]) <= RTOL
        assert _rel_err(gxm, gx[:, :, m]) <= RTOL
        assert _rel_err(gkm, gk[m]) <= RTOL
        assert _rel_err(gbm, gb[m]) <= RTOL
    return num_modules


# ----------------------------------------------------------------------------- equivalence


def test_equivalence_fast_grid():
    assert _check_equivalence(FAST_GRID) >= 30


@pytest.mark.slow
def test_equivalence_full_grid():
    _check_equivalence(FULL_GRID)
    _check_equivalence(FULL_GRID_64, cin=64, cout=64, spatial=11)


def test_groups_equal_to_channels_with_multiplier():
    # depthwise with channel multiplier 2 and plain depthwise (multiplier 1)
    _check_equivalence([(3, 1, "same", 32), (3, 2, "same", 32)], cin=32, cout=64)
    _check_equivalence([(3, 1, "valid", 16), (5, 2, "same", 16)], cin=16, cout=16)


def test_dilation():
    _check_equivalence([(3, 1, "same", 8), (3, 1, "valid", 32), (5, 1, "same", 2)], dilation=2, spatial=11)


CHANNELS_FIRST_GRID = [(3, 1, "same", 8), (3, 2, "valid", 32), (1, 1, "same", 2), (3, 1, "same", 1)]


def test_channels_first():
    # routes per case (see _implementations): 5 + 6 (depthwise too) + 4 + 3 (groups=1: no merge)
    assert _check_equivalence(CHANNELS_FIRST_GRID, data_format="channels_first") == 18


def test_weights_move_between_conv2d_and_grouped_conv2d():
    x = np.random.default_rng(3).standard_normal((2, 8, 8, 16)).astype("float32")
    ref = keras.layers.Conv2D(24, 3, padding="same", groups=4)
    layer = GroupedConv2D(24, 3, padding="same", groups=4, implementation="split")
    ref.build(x.shape)
    layer.build(x.shape)
    layer.set_weights(ref.get_weights())
    assert [tuple(w.shape) for w in layer.get_weights()] == [(3, 3, 4, 24), (24,)]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(ref(x)), rtol=1e-5, atol=1e-5
    )
    # And back: weights trained in the grouped layer serve Keras' Conv2D(groups).
    rng = np.random.default_rng(4)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") for w in layer.get_weights()])
    ref.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ref(x)), keras.ops.convert_to_numpy(layer(x)), rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(filters=10, groups=4), "`filters` must be divisible by `groups`"),
        (dict(filters=8, groups=0), "`groups` must be >= 1"),
        (dict(filters=8, groups=4, implementation="fast"), "`implementation` must be one of"),
        (dict(filters=8, groups=4, groups_per_conv=3), "`groups_per_conv` must divide `groups`"),
        (dict(filters=8, groups=4, groups_per_conv=8), "`groups_per_conv` must be <= 4"),
        (dict(filters=8, groups=4, groups_per_conv=2, implementation="native"), "applies to implementation"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupedConv2D(kernel_size=3, **kwargs)


def test_groups_must_divide_input_channels():
    layer = GroupedConv2D(8, 3, groups=4)
    with pytest.raises(ValueError, match=r"input channels must be divisible by `groups` \(4\).*6 input channels"):
        layer.build((None, 8, 8, 6))


def test_depthwise_needs_one_channel_per_group():
    layer = GroupedConv2D(16, 3, groups=4, implementation="depthwise")
    with pytest.raises(ValueError, match="needs `groups` equal to the input channels"):
        layer.build((None, 8, 8, 8))


def test_auto_rule():
    # accelerators and PyTorch: the native grouped kernel
    assert choose_implementation(8, 64, 64, backend="tensorflow", accelerator=True) == ("native", None)
    assert choose_implementation(8, 64, 64, backend="jax", accelerator=True) == ("native", None)
    assert choose_implementation(8, 64, 64, backend="torch", accelerator=False) == ("native", None)
    assert choose_implementation(1, 64, 64, backend="tensorflow", accelerator=False) == ("native", None)
    # TF CPU: depthwise when groups == channels, else split into convolutions of >= 16 x 16 channels
    assert choose_implementation(256, 256, 256, backend="tensorflow", accelerator=False) == ("depthwise", None)
    assert choose_implementation(8, 64, 64, backend="tensorflow", accelerator=False) == ("split", 2)
    assert choose_implementation(8, 32, 32, backend="tensorflow", accelerator=False) == ("split", 4)
    assert choose_implementation(8, 512, 512, backend="tensorflow", accelerator=False) == ("split", 1)
    assert choose_implementation(10, 30, 320, backend="tensorflow", accelerator=False) == ("split", 2)
    assert choose_implementation(10, 640, 640, backend="tensorflow", accelerator=False) == ("split", 1)
    # JAX CPU: split into convolutions of >= 8 x 8 channels (depthwise cases too)
    assert choose_implementation(8, 64, 64, backend="jax", accelerator=False) == ("split", 1)
    assert choose_implementation(256, 256, 256, backend="jax", accelerator=False) == ("split", 8)


def test_auto_on_this_machine_is_not_native_on_cpu():
    if keras.config.backend() != "tensorflow" or any(
        not d.startswith("cpu") for d in keras.distribution.list_devices()
    ):
        pytest.skip("the rule for a TensorFlow CPU-only process")
    layer = GroupedConv2D(64, 3, groups=8)
    layer.build((None, 8, 8, 64))
    assert layer.resolved_implementation == "split(groups_per_conv=2)"


# ----------------------------------------------------------------------------- BatchedDense


def test_batched_dense_equals_separate_dense_layers():
    _check_batched_dense()


def test_batched_dense_initializer_is_per_module():
    modules, features, units = 64, 20, 30
    layer = BatchedDense(units, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    layer.build((None, modules, features))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    limit = np.sqrt(6.0 / (features + units))  # a Dense(30) on 20 inputs
    assert np.abs(kernel).max() <= limit
    assert abs(kernel.std() - limit / np.sqrt(3.0)) < 0.05 * limit
    assert not np.allclose(kernel[0], kernel[1])  # modules differ
    ortho = BatchedDense(4, kernel_initializer=keras.initializers.Orthogonal(seed=2))
    ortho.build((None, 3, 4))
    k = keras.ops.convert_to_numpy(ortho.kernel)
    for m in range(3):
        np.testing.assert_allclose(k[m].T @ k[m], np.eye(4), atol=1e-5)
    assert not np.allclose(k[0], k[1])


def test_batched_dense_arguments():
    with pytest.raises(ValueError, match="`units` must be >= 1"):
        BatchedDense(0)
    layer = BatchedDense(3, num_modules=4)
    with pytest.raises(ValueError, match=r"must equal `num_modules` \(4\)"):
        layer.build((None, 5, 2))
    assert BatchedDense(3, use_bias=False)(np.zeros((2, 4, 5), "float32")).shape == (2, 4, 3)


# ----------------------------------------------------------------------------- serialisation


def _layers():
    return [
        GroupedConv2D(16, 3, padding="same", groups=4, implementation="split", groups_per_conv=2),
        GroupedConv2D(16, 3, strides=2, padding="same", groups=16, activation="relu", kernel_regularizer="l2"),
        BatchedDense(6, num_modules=4, activation="relu", kernel_initializer="he_normal"),
    ]


@pytest.mark.parametrize("index", range(3))
def test_config_round_trip(index):
    layer = _layers()[index]
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"branchzoo>{type(layer).__name__}"
    assert type(keras.saving.deserialize_keras_object(serialized)) is type(layer)


def test_config_is_conv2d_config_plus_implementation():
    config = GroupedConv2D(16, 3, groups=4, implementation="split", groups_per_conv=2).get_config()
    base = keras.layers.Conv2D(16, 3, groups=4).get_config()
    assert set(config) - set(base) == {"implementation", "groups_per_conv"}
    assert config["implementation"] == "split" and config["groups_per_conv"] == 2
    extra = ("implementation", "groups_per_conv")
    keras.layers.Conv2D.from_config({k: v for k, v in config.items() if k not in extra})


def _model():
    inputs = keras.Input((8, 8, 16))
    a, b, dense = _layers()
    x = b(a(inputs))  # (4, 4, 16)
    x = keras.layers.Reshape((4, 4, 4, 4))(x)  # 4 modules of 4 features per position
    return keras.Model(inputs, dense(x))


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = _model()
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 16)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    assert loaded.layers[1].get_config() == model.layers[1].get_config()


def test_saved_model_export_reproduces_outputs(tmp_path):
    if keras.config.backend() != "tensorflow":
        pytest.skip("SavedModel export needs the TensorFlow backend")
    import tensorflow as tf

    model = _model()
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 16)).astype("float32")
    path = str(tmp_path / "exported")
    model.export(path)
    reloaded = tf.saved_model.load(path)  # keep a reference: its variables die with it
    served = reloaded.serve(tf.constant(x))
    expected = model.predict(x, verbose=0)
    assert np.max(np.abs(np.asarray(served) - expected)) <= 1e-5 * max(1.0, np.abs(expected).max())


# ----------------------------------------------------------------------------- other backends

_OTHER_BACKEND_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{tests!r}, {repo!r}]
    import keras
    assert keras.config.backend() == {backend!r}, keras.config.backend()
    import test_grouped as t
    n = t._check_equivalence(t.FAST_GRID)
    n += t._check_equivalence([(3, 1, "same", 32), (3, 2, "valid", 8)], dilation=1, data_format={data_format!r})
    n += t._check_equivalence([(3, 1, "same", 8), (5, 1, "valid", 32)], dilation=2, spatial=11)
    t._check_batched_dense()
    print("checked", n)
    """
)


_NO_ONEDNN_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{tests!r}, {repo!r}]
    import test_grouped as t
    print("checked", t._check_equivalence(t.CHANNELS_FIRST_GRID, data_format="channels_first"))
    print("checked", t._check_equivalence([(3, 1, "same", 8), (3, 2, "same", 32)]))
    """
)


def test_every_route_trains_without_onednn(tmp_path):
    # What a CPU without AVX-512 gets: TensorFlow without oneDNN, whose CPU Conv2D has no NCHW
    # and no gradient for grouped kernels; every route, "auto" included, must still train
    here = os.path.dirname(os.path.abspath(__file__))
    script = _NO_ONEDNN_SCRIPT.format(tests=here, repo=os.path.dirname(here))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    # channels_first: 18 (test_channels_first); channels_last: 5 + 6 routes (depthwise for groups=32=channels)
    assert result.stdout.split() == ["checked", "18", "checked", "11"], result.stdout


@pytest.mark.parametrize(
    "backend, module, data_format",
    [("jax", "jax", "channels_first"), ("torch", "torch", "channels_first")],
)
def test_other_backend(backend, module, data_format, tmp_path):
    pytest.importorskip(module)
    here = os.path.dirname(os.path.abspath(__file__))
    script = _OTHER_BACKEND_SCRIPT.format(
        tests=here, repo=os.path.dirname(here), backend=backend, data_format=data_format
    )
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "checked" in result.stdout
