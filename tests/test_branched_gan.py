"""BranchedGenerator / BranchedGAN (paper 000, Sec. 7, App. D-E): identities, counts, training, analysis.

Expected values come from float64 NumPy references written here (convolution,
Gaussian blur, the diffusion recursion), from hand counts of StarGAN v2's
layers, or from the same step run another way (one device vs two).
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import branchzoo.layers as bzl
from branchzoo import training, zoo
from branchzoo.analysis import decomposition as dec
from branchzoo.export import export_saved_model
from branchzoo.models import BranchedGAN, branched_gan
from conftest import REPO

TINY = dict(num_branches=2, input_shape=(16, 16, 3), dim_in=4, max_dim=8, style_dim=4, num_downsamples=1,
            discriminator_dim_in=4, discriminator_max_dim=8)


def _images(n=4, size=16, seed=0, channels=3):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, channels)).astype("float32")


# -- float64 references -------------------------------------------------------------


def conv2d_same(x, kernel, bias):
    """'same' 2-D convolution (cross-correlation, Keras layout) in float64."""
    kh, kw = kernel.shape[:2]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    xp = np.pad(x, [(0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)])
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[3],))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
    return out + bias


def leaky(x):
    return np.where(x > 0, x, 0.2 * x)


def diffusion_reference(layer, x):
    """u_{t+1} = u_t + dt * CNN(u_t) in float64 from the layer's weights: residuals and u_T."""
    u = x.astype("float64")
    residuals = []
    for _ in range(layer.steps):
        v = u
        for k, conv in enumerate(layer.convs):
            kernel, bias = (np.asarray(w, "float64") for w in conv.get_weights())
            v = conv2d_same(v, kernel, bias)
            if k < len(layer.convs) - 1:
                v = leaky(v)
        nxt = u + layer.dt * v
        residuals.append(u - nxt)
        u = nxt
    return np.stack(residuals, axis=1), u


def test_learned_diffusion_follows_the_recursion_and_reconstructs_exactly():
    x = _images(3, 12)
    layer = bzl.LearnedDiffusion(steps=4, dt=0.3, filters=8, num_layers=4)
    residuals, smooth = layer.decompose(x)
    residuals, smooth = np.asarray(residuals, "float64"), np.asarray(smooth, "float64")
    assert residuals.shape == (3, 4, 12, 12, 3)
    # Eq. 17, discrete: the residuals and the final state add up to the input.
    np.testing.assert_allclose(residuals.sum(axis=1) + smooth, x, rtol=0, atol=1e-5)
    ref_residuals, ref_smooth = diffusion_reference(layer, x)
    np.testing.assert_allclose(smooth, ref_smooth, rtol=0, atol=1e-4)
    np.testing.assert_allclose(residuals, ref_residuals, rtol=0, atol=1e-4)
    assert np.abs(residuals).max() > 1e-3  # an untrained flow still moves the image
    np.testing.assert_allclose(np.asarray(layer(x)), smooth, atol=1e-6)  # call() is u_T


def test_bottleneck_widths_by_hand():
    assert bzl.LearnedDiffusion(1).filters == 16
    from branchzoo.layers.branched_generator import bottleneck_widths

    assert bottleneck_widths(16, 8) == [16, 8, 4, 4, 4, 8, 16]
    assert bottleneck_widths(32, 4) == [32, 16, 32]


def test_gaussian_blur_matches_a_reflect_padded_numpy_blur():
    x = _images(2, 10)
    sigma = 1.3
    radius = math.ceil(3 * sigma)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    xp = np.pad(x.astype("float64"), [(0, 0), (radius, radius), (radius, radius), (0, 0)], mode="reflect")
    rows = sum(k[i] * xp[:, i:i + 10, :, :] for i in range(2 * radius + 1))
    expected = sum(k[j] * rows[:, :, j:j + 10, :] for j in range(2 * radius + 1))
    np.testing.assert_allclose(np.asarray(bzl.GaussianBlur(sigma)(x)), expected, atol=1e-5)


@pytest.mark.parametrize("smoothing", ["gaussian", "learned"])
def test_output_is_the_sum_of_branch_images_plus_the_smoothing(smoothing):
    gen = bzl.BranchedGenerator(3, 2, dim_in=4, max_dim=8, style_dim=4, num_downsamples=2,
                                smoothing=smoothing, smoothing_sigma=1.0, diffusion_filters=8)
    x = _images(4, 16)
    classes = np.array([0, 1, 1, 0])
    out = gen([x, classes], return_branches=True)
    image, branches, smooth = (np.asarray(out[k], "float64") for k in ("image", "branches", "smooth"))
    assert branches.shape == (4, 3, 16, 16, 3) and image.shape == smooth.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(image, branches.sum(axis=1) + smooth, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gen([x, classes])), image, atol=1e-6)
    assert dec.reconstruction_error(image, branches, smooth) <= 1e-5
    if smoothing == "gaussian":  # S is the fixed blur and every branch reads x itself
        np.testing.assert_allclose(smooth, np.asarray(bzl.GaussianBlur(1.0)(x)), atol=1e-6)
        inputs, _ = gen.branch_inputs(x)
        np.testing.assert_array_equal(np.asarray(inputs)[:, 2], x)
    else:  # S is the diffusion's end state and branch i reads residual i
        residuals, final = gen.smoother.decompose(x)
        np.testing.assert_allclose(smooth, np.asarray(final), atol=1e-6)
        inputs, _ = gen.branch_inputs(x)
        np.testing.assert_allclose(np.asarray(inputs), np.asarray(residuals), atol=1e-6)


def test_class_conditioning_changes_the_output_and_branches_stay_separate():
    gen = bzl.BranchedGenerator(2, 3, dim_in=4, max_dim=8, style_dim=4, num_downsamples=1)
    x = _images(2, 8)
    a = gen([x, np.array([0, 0])], return_branches=True)
    b = gen([x, np.array([2, 2])], return_branches=True)
    again = gen([x, np.array([0, 0])], return_branches=True)
    assert np.abs(np.asarray(a["image"]) - np.asarray(b["image"])).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(again["image"]))
    np.testing.assert_array_equal(np.asarray(a["smooth"]), np.asarray(b["smooth"]))  # S(x) ignores c
    # Branch 2's own class embedding moves branch 2 only: the branches share nothing.
    emb = gen.class_embedding.numpy()
    emb[:, gen.style_dim:] += 1.0
    gen.class_embedding.assign(emb)
    moved = gen([x, np.array([0, 0])], return_branches=True)
    np.testing.assert_array_equal(np.asarray(moved["branches"])[:, 0], np.asarray(a["branches"])[:, 0])
    assert np.abs(np.asarray(moved["branches"])[:, 1] - np.asarray(a["branches"])[:, 1]).max() > 1e-3


OTHER_BACKEND_SCRIPT = r"""
import sys
import numpy as np
import keras
import branchzoo.layers as bzl
saved = np.load(sys.argv[1])
x, classes = saved["x"], saved["classes"]
gen = bzl.BranchedGenerator(2, 3, dim_in=4, max_dim=8, style_dim=4, num_downsamples=2, smoothing="learned",
                            diffusion_filters=8, diffusion_layers=4)
gen([x, classes])
gen.set_weights([saved[f"w{i}"] for i in range(len(gen.get_weights()))])
out = gen([x, classes], return_branches=True)
disc = bzl.MultiDomainDiscriminator(3, dim_in=4, max_dim=8)
disc(x)
disc.set_weights([saved[f"d{i}"] for i in range(len(disc.get_weights()))])
np.savez(sys.argv[2], backend=keras.config.backend(), logits=keras.ops.convert_to_numpy(disc(x)),
         **{k: keras.ops.convert_to_numpy(v) for k, v in out.items()})
"""


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_layers_give_the_same_outputs_on_another_backend(backend, tmp_path):
    pytest.importorskip(backend)
    x, classes = _images(2, 16), np.array([2, 0], "int32")
    gen = bzl.BranchedGenerator(2, 3, dim_in=4, max_dim=8, style_dim=4, num_downsamples=2, smoothing="learned",
                                diffusion_filters=8, diffusion_layers=4)
    expected = gen([x, classes], return_branches=True)
    disc = bzl.MultiDomainDiscriminator(3, dim_in=4, max_dim=8)
    logits = disc(x)
    np.savez(tmp_path / "in.npz", x=x, classes=classes, **{f"w{i}": w for i, w in enumerate(gen.get_weights())},
             **{f"d{i}": w for i, w in enumerate(disc.get_weights())})
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", OTHER_BACKEND_SCRIPT, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = np.load(tmp_path / "out.npz")
    assert str(got["backend"]) == backend
    for key in ("image", "branches", "smooth"):
        np.testing.assert_allclose(got[key], np.asarray(expected[key]), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["logits"], np.asarray(logits), rtol=0, atol=1e-4)


# -- parameter counts: StarGAN v2's layers, counted by hand ---------------------------


def _conv(i, o, k, bias=True):
    return i * o * k * k + (o if bias else 0)


def _resblk(i, o, norm):
    return _conv(i, i, 3) + _conv(i, o, 3) + (4 * i if norm else 0) + (_conv(i, o, 1, False) if i != o else 0)


def _adain_resblk(i, o, style):
    adain = lambda f: style * 2 * f + 2 * f  # noqa: E731  (Linear(style, 2f))
    return _conv(i, o, 3) + _conv(o, o, 3) + adain(i) + adain(o) + (_conv(i, o, 1, False) if i != o else 0)


def stargan_generator_count(size, dim_in, max_dim, style=64):
    """StarGAN v2's Generator (w_hpf=0): from_rgb, encoder/decoder blocks, to_rgb."""
    count = _conv(3, dim_in, 3) + 2 * dim_in + _conv(dim_in, 3, 1)
    d = dim_in
    for _ in range(int(math.log2(size)) - 4):
        o = min(2 * d, max_dim)
        count += _resblk(d, o, True) + _adain_resblk(o, d, style)
        d = o
    return count + 2 * (_resblk(d, d, True) + _adain_resblk(d, d, style))


def _trainable(layer):
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def test_stargan_generator_count_by_hand_is_the_papers():
    assert stargan_generator_count(256, 64, 512) == 33_892_995  # StarGAN v2 AFHQ: 33.9M
    assert stargan_generator_count(256, 8, 64) == 594_387  # a slim branch: 0.59M
    assert stargan_generator_count(256, 16, 128) == 2_229_411  # 2.2M


@pytest.mark.parametrize("branches", [1, 3])
def test_slim_branch_has_the_papers_parameter_count(branches):
    gen = bzl.BranchedGenerator(branches, 3, dim_in=8, max_dim=64)
    gen.build([(None, 256, 256, 3), (None,)])
    embedding = 3 * 64  # one 64-d style per class and branch
    assert _trainable(gen) == branches * (stargan_generator_count(256, 8, 64) + embedding)


@pytest.mark.slow
def test_full_width_generator_and_discriminator_counts():
    gen = bzl.BranchedGenerator(1, 3, dim_in=64, max_dim=512)
    gen.build([(None, 256, 256, 3), (None,)])
    assert _trainable(gen) == 33_892_995 + 3 * 64
    disc = bzl.MultiDomainDiscriminator(3, dim_in=64, max_dim=512)
    disc.build((None, 256, 256, 3))
    count, d = _conv(3, 64, 3), 64
    for _ in range(6):
        o = min(2 * d, 512)
        count += _resblk(d, o, False)
        d = o
    assert _trainable(disc) == count + _conv(512, 512, 4) + _conv(512, 3, 1) == 20_852_803


def test_learned_diffusion_count_by_hand():
    layer = bzl.LearnedDiffusion(4, filters=16, num_layers=8)
    layer.build((None, 8, 8, 3))
    widths = [3, 16, 8, 4, 4, 4, 8, 16, 3]
    assert _trainable(layer) == sum(_conv(a, b, 3) for a, b in zip(widths, widths[1:]))


@pytest.mark.parametrize("make, words", [
    (lambda: bzl.BranchedGenerator(0, 2), "num_branches"),
    (lambda: bzl.BranchedGenerator(2, 2, smoothing="median"), "smoothing='median'"),
    (lambda: bzl.BranchedGenerator(2, 2, dim_in=16, max_dim=8), "max_dim"),
    (lambda: bzl.BranchedGenerator(2, 2, smoothing_sigma=-1), "smoothing_sigma"),
    (lambda: bzl.GaussianBlur(0), "sigma"),
    (lambda: bzl.LearnedDiffusion(0), "steps"),
    (lambda: bzl.LearnedDiffusion(2, num_layers=1), "num_layers"),
    (lambda: bzl.MultiDomainDiscriminator(0), "num_classes"),
    (lambda: branched_gan(**dict(TINY, r1_weight=-1.0)), "r1_weight"),
    (lambda: branched_gan(**dict(TINY, input_shape=(16, 16))), "input_shape"),
])
def test_bad_arguments_are_named(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_sizes_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match="num_downsamples"):
        bzl.BranchedGenerator(2, 2, num_downsamples=3).build([(None, 12, 12, 3), (None,)])
    with pytest.raises(ValueError, match="radius"):
        bzl.GaussianBlur(3.0).build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="target_classes"):
        bzl.BranchedGenerator(2, 2).build((None, 16, 16, 3))


# -- the GAN as a Keras model -------------------------------------------------------------


def test_gan_keras_file_round_trip_without_custom_objects(tmp_path):
    gan = branched_gan(**dict(TINY, smoothing="learned"))
    x, classes = _images(3), np.array([1, 0, 1], "int32")
    gan.save(tmp_path / "gan.keras")
    loaded = keras.models.load_model(tmp_path / "gan.keras")
    assert isinstance(loaded, BranchedGAN) and loaded.r1_weight == gan.r1_weight
    np.testing.assert_allclose(np.asarray(loaded([x, classes])), np.asarray(gan([x, classes])), atol=1e-6)
    np.testing.assert_allclose(np.asarray(loaded.discriminator(x)), np.asarray(gan.discriminator(x)), atol=1e-6)
    parts = loaded.decompose(x, classes)
    np.testing.assert_allclose(np.asarray(parts["branches"]), np.asarray(gan.decompose(x, classes)["branches"]),
                               atol=1e-6)
    # The generator and the discriminator alone serialise too.
    gan.generator.save(tmp_path / "g.keras")
    np.testing.assert_allclose(np.asarray(keras.models.load_model(tmp_path / "g.keras")([x, classes])),
                               np.asarray(gan([x, classes])), atol=1e-6)


def test_generator_saved_model_has_an_image_class_signature(tmp_path):
    gan = branched_gan(**TINY)
    x, classes = _images(3), np.array([1, 0, 1], "int32")
    diff = export_saved_model(gan.generator, str(tmp_path / "sm"), verify_batch=[x, classes])
    assert diff <= 1e-5
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    signature = reloaded.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    assert specs["image"].shape.as_list() == [None, 16, 16, 3] and specs["image"].dtype == tf.float32
    assert specs["target_class"].shape.as_list() == [None] and specs["target_class"].dtype == tf.int32
    served = list(signature(image=tf.constant(x), target_class=tf.constant(classes)).values())[0]
    np.testing.assert_allclose(np.asarray(served), np.asarray(gan([x, classes])), atol=1e-5)


def test_decomposition_numbers_by_hand():
    branches = np.zeros((2, 3, 2, 2, 1))
    branches[:, 0] = 2.0 * np.arange(8).reshape(2, 2, 2, 1)  # branch 2 = -branch 1 / 2, branch 3 = 0
    branches[:, 1] = -0.5 * branches[:, 0]
    energy = dec.branch_energy(branches)
    values = 2.0 * np.arange(8)
    assert energy == pytest.approx([np.mean(values**2), np.mean(values**2) / 4, 0.0])
    corr = dec.branch_correlation(branches)
    assert corr[0, 1] == pytest.approx(-1.0) and corr[0, 0] == pytest.approx(1.0)
    assert np.isnan(corr[2]).all() and np.isnan(corr[:, 2]).all()  # a silent branch
    smooth = np.ones((2, 2, 2, 1))
    image = branches.sum(axis=1) + smooth
    assert dec.reconstruction_error(image, branches, smooth) == 0.0
    assert dec.reconstruction_error(image + 0.25, branches, smooth) == pytest.approx(0.25)
    assert dec.pick_rows(np.array([1, 0, 1, 1, 0, 1]), per_class=2) == [1, 4, 0, 2]


def test_decomposition_analysis_on_a_model_and_its_refusal():
    from matplotlib.figure import Figure

    from branchzoo.analysis.registry import AnalysisData, get_analysis

    gan = branched_gan(**dict(TINY, smoothing="learned"))
    x = _images(6)
    pairs = [((x[:4], np.array([0, 1, 0, 1])), np.array([1, 0, 1, 0])), ((x[4:], np.array([1, 0])), np.array([0, 1]))]
    result = get_analysis("decomposition")(gan, AnalysisData(test=pairs, num_classes=2, class_names=["cat", "dog"]))
    numbers = result.numbers
    expected = dec.branch_energy(np.concatenate([np.asarray(gan.decompose(*p)["branches"]) for p in
                                                 ((x[:4], [1, 0, 1, 0]), (x[4:], [0, 1]))]))
    assert [numbers["branch1_energy"], numbers["branch2_energy"]] == pytest.approx(expected.tolist(), rel=1e-5)
    assert numbers["identity_error"] <= 1e-5 and numbers["diffusion_identity_error"] <= 1e-5
    assert np.asarray(numbers["correlation"]).shape == (2, 2) and numbers["examples"] == 6
    assert sum(numbers["energy_share"]) == pytest.approx(1.0)
    assert set(result.figures) == {"grid", "correlation"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    pixels = dec.figure_to_array(result.figures["grid"])
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    with pytest.raises(ValueError, match="BranchedGenerator"):
        get_analysis("decomposition")(gan.discriminator, AnalysisData(test=pairs, num_classes=2))


# -- training ------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_step_losses_and_which_player_moves():
    """The first step's losses against a GradientTape computation of the paper's objective."""
    gan = branched_gan(**dict(TINY, smoothing="learned"))
    x = _images(4)
    source, target = np.array([0, 1, 0, 1], "int32"), np.array([1, 0, 1, 0], "int32")
    images = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(images)
        real = tf.gather(gan.discriminator(images), source, axis=1, batch_dims=1)
    grad = tape.gradient(real, images)
    fake = tf.gather(gan.discriminator(gan([x, target])), target, axis=1, batch_dims=1)
    r1 = 0.5 * np.sum(np.square(grad.numpy().astype("float64")), axis=(1, 2, 3))
    softplus = lambda v: np.logaddexp(0.0, np.asarray(v, "float64"))  # noqa: E731
    d_loss = np.mean(softplus(-real) + softplus(fake) + r1)
    g_before = [w.copy() for w in gan.generator.get_weights()]
    d_before = [w.copy() for w in gan.discriminator.get_weights()]
    gan.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(0.01))  # the generator stays put
    data = tf.data.Dataset.from_tensors(((x, source), target))
    logs = {k: v[0] for k, v in gan.fit(data, epochs=1, verbose=0, shuffle=False).history.items()}
    assert logs["d_loss"] == pytest.approx(d_loss, rel=1e-4)
    assert logs["r1"] == pytest.approx(np.mean(r1), rel=1e-4)
    assert logs["d_real_acc"] == np.mean(np.asarray(real) > 0)
    # the generator's loss is measured against the updated discriminator
    fake_after = tf.gather(gan.discriminator(gan([x, target])), target, axis=1, batch_dims=1)
    assert logs["g_loss"] == pytest.approx(np.mean(softplus(-fake_after)), rel=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(gan.generator.get_weights(), g_before))
    assert any(not np.allclose(a, b) for a, b in zip(gan.discriminator.get_weights(), d_before))


def test_r1_weight_zero_steps_on_the_adversarial_loss_alone():
    """The paper's objective (App. E): with r1_weight=0 the discriminator descends the adversarial loss alone."""
    gan = branched_gan(**dict(TINY, r1_weight=0.0))
    x = _images(4, seed=3)
    source, target = np.array([0, 1, 1, 0], "int32"), np.array([1, 0, 0, 1], "int32")
    d_vars = gan.discriminator.trainable_variables
    d_before = [np.asarray(v).copy() for v in d_vars]
    # the non-saturating adversarial loss, written out: softplus(-D(x)[source]) + softplus(D(G(x, target))[target])
    translated = gan.generator([x, target])
    with tf.GradientTape() as tape:
        real = tf.gather(gan.discriminator(x), source, axis=1, batch_dims=1)
        fake = tf.gather(gan.discriminator(translated), target, axis=1, batch_dims=1)
        adversarial = tf.reduce_mean(tf.math.softplus(-real) + tf.math.softplus(fake))
    grads = tape.gradient(adversarial, d_vars)
    softplus = lambda v: np.logaddexp(0.0, np.asarray(v, "float64"))  # noqa: E731
    expected_loss = np.mean(softplus(-real) + softplus(fake))
    lr = 0.01
    gan.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(lr))
    data = tf.data.Dataset.from_tensors(((x, source), target))
    logs = {k: v[0] for k, v in gan.fit(data, epochs=1, verbose=0, shuffle=False).history.items()}
    assert "r1" not in logs
    assert logs["d_loss"] == pytest.approx(expected_loss, rel=1e-5)
    for before, grad, after in zip(d_before, grads, gan.discriminator.get_weights()):
        np.testing.assert_allclose(after, before - lr * np.asarray(grad), rtol=0, atol=1e-6)
    # the same step with R1 on moves the discriminator elsewhere: the test above tells them apart
    with_r1 = branched_gan(**dict(TINY, r1_weight=1.0))
    with_r1.generator.set_weights(gan.generator.get_weights())
    with_r1.discriminator.set_weights(d_before)
    with_r1.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(lr))
    r1_logs = {k: v[0] for k, v in with_r1.fit(data, epochs=1, verbose=0, shuffle=False).history.items()}
    assert r1_logs["r1"] > 0
    assert max(np.abs(a - b).max() for a, b in zip(with_r1.discriminator.get_weights(),
                                                    gan.discriminator.get_weights())) > 1e-5


MIRRORED_SCRIPT = r"""
import sys
from branchzoo import training
training.configure_cpu_devices(2)
import keras, numpy as np, tensorflow as tf
from branchzoo.models import branched_gan
keras.utils.set_random_seed(0)
kw = dict(num_branches=2, input_shape=(16, 16, 3), dim_in=4, max_dim=8, style_dim=4, num_downsamples=1,
          discriminator_dim_in=4, discriminator_max_dim=8, smoothing="learned")
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
source = (np.arange(8) % 2).astype("int32")
data = tf.data.Dataset.from_tensors(((x, source), 1 - source))
weights = branched_gan(**kw).get_weights()
out = {}
for kind in ("default", "mirrored"):
    strategy = training.make_strategy(kind)
    with strategy.scope():
        gan = branched_gan(**kw)
        gan.set_weights(weights)
        # momentum: slot variables, which must exist before the per-replica step (first step = plain SGD)
        gan.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.SGD(0.05, momentum=0.9))
    logs = {k: float(v[0]) for k, v in gan.fit(data, epochs=1, verbose=0, shuffle=False).history.items()}
    out[kind] = logs
    out[kind + "_replicas"] = strategy.num_replicas_in_sync
    np.savez(sys.argv[1] + f"-{kind}.npz", *gan.get_weights())
import json
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_one_step_under_mirrored_strategy_on_two_cpus_equals_one_device(tmp_path):
    # Logical CPU devices must exist before TensorFlow starts: a fresh process.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "w")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert (out["default_replicas"], out["mirrored_replicas"]) == (1, 2)
    single, mirrored = out["default"], out["mirrored"]
    assert set(single) == {"d_loss", "g_loss", "r1", "d_real_acc", "d_fake_acc"}
    for key in single:
        assert mirrored[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    a, b = np.load(tmp_path / "w-default.npz"), np.load(tmp_path / "w-mirrored.npz")
    for key in a.files:  # the same update: gradients summed over replicas of loss / replicas
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_train_cli_under_mirrored_strategy_with_grids_and_export(tmp_path):
    from test_train import read_json, run_cli, scalar_tags

    out = tmp_path / "run"
    run_cli("train.py", "--model", "branched_gan_tiny_digits", "--epochs", "1", "--steps-per-epoch", "2",
            "--strategy", "mirrored", "--cpu-devices", "2", "--output", str(out), "--export", str(tmp_path / "sm"))
    metrics = read_json(out / "metrics.json")
    assert metrics["replicas"] == 2 and metrics["export_max_abs_diff"] <= 1e-5
    assert np.isfinite(metrics["d_loss"]) and len(metrics["history"]["d_loss"]) == 1
    assert "decomposition" in scalar_tags(str(out / "logs" / "images"))[0]


@pytest.fixture
def tiny_run(tmp_path):
    """A 2-epoch, 3-step run of branched_gan_tiny_digits (digits 3 <-> 8) through training.train."""
    zoo.clear_cache()
    run = training.resolve_run_config(
        "branched_gan_tiny_digits", output=str(tmp_path / "run"), steps_per_epoch=3, epochs=2,
        export=str(tmp_path / "sm"), deterministic=True)
    run["recipe"]["log_images_every"] = 2
    metrics = training.train(run, verbose=0)
    return tmp_path, run, metrics


@pytest.mark.slow
def test_train_evaluate_and_decomposition_report_by_recipe(tiny_run):
    from test_train import scalar_tags

    tmp_path, run, metrics = tiny_run
    assert run["task"] == "class_transfer_gan"
    assert run["dataset_options"] == {"classes": ["3", "8"], "normalization": "symmetric",
                                      "pairing": "target_class"}
    for key in ("d_acc", "d_real_acc", "d_fake_acc", "branch1_energy", "branch2_energy", "g_loss"):
        assert np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["d_acc"] <= 1.0
    assert metrics["history"]["d_loss"] and "val_d_acc" in metrics["history"]
    assert metrics["optimizer_iterations"] == 2 * 3  # generator updates: epochs x steps
    assert metrics["export_max_abs_diff"] <= 1e-5  # the generator, served with (image, class)
    assert metrics["parameters"]["trainable"] == zoo.count_parameters(
        keras.models.load_model(tmp_path / "run" / "model.keras").generator)["trainable"]
    tags, has_graph = scalar_tags(run["logdir"])
    assert {"epoch_d_loss", "epoch_g_loss"} <= tags and has_graph
    assert "decomposition" in tags  # the image grid, every 2 generator steps
    image_tags, _ = scalar_tags(os.path.join(run["logdir"], "images"))
    assert image_tags == {"decomposition"}

    evaluated = training.evaluate(checkpoint=str(tmp_path / "run" / "model.keras"), analysis="decomposition",
                                  report=str(tmp_path / "report"), output=str(tmp_path / "eval.json"), verbose=0)
    for key in ("d_acc", "branch1_energy", "g_loss"):  # the same held-out pairs as the final evaluation
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-6), key
    report = json.load(open(tmp_path / "report" / "report.json"))["decomposition"]
    assert report["identity_error"] <= 1e-5
    assert report["branch1_energy"] == pytest.approx(metrics["branch1_energy"], rel=1e-4)
    assert {os.path.basename(f) for f in evaluated["report_files"]} == {
        "decomposition-grid.png", "decomposition-correlation.png", "report.json"}


@pytest.mark.slow
def test_resume_restores_both_optimizers(tmp_path):
    from test_tasks import StopAfterEpoch

    def run(out):
        config = training.resolve_run_config("branched_gan_tiny_digits", output=str(out), steps_per_epoch=2,
                                             epochs=2, deterministic=True, validate=False)
        config["recipe"]["log_images_every"] = 0
        return config

    straight = training.train(run(tmp_path / "straight"), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        training.train(run(tmp_path / "run"), verbose=0, callbacks=[StopAfterEpoch(1)])
    resumed = training.train(run(tmp_path / "run"), resume=True, verbose=0)
    assert resumed["first_epoch_in_this_process"] == 2
    assert resumed["optimizer_iterations"] == straight["optimizer_iterations"] == 2 * 2
    for key in ("d_loss", "g_loss", "d_acc", "branch1_energy"):  # Adam moments of both players restored
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key
    a = keras.models.load_model(tmp_path / "run" / "model.keras")
    b = keras.models.load_model(tmp_path / "straight" / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_gan_task_refuses_unpaired_or_unlabelled_data(tmp_path):
    run = training.resolve_run_config("branched_gan_tiny_digits", dataset="toy_xor1d", output=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="class_transfer_gan"):
        training.prepare(run)
    run = training.resolve_run_config("branched_gan_tiny_digits", output=str(tmp_path / "b"),
                                      dataset_options={"pairing": "none"})
    with pytest.raises(ValueError, match="pairing"):
        training.prepare(run)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_any_class_folder_tree_trains_as_pairs_at_the_given_size(tmp_path, monkeypatch):
    """`--dataset image_folder --data-dir DIR` on an AFHQ-like tree (train/, val/), image size and branches given."""
    from data_helpers import make_image_folder

    from branchzoo import data

    monkeypatch.setenv("BRANCHZOO_HOME", str(tmp_path / "home"))
    data.clear_cache()
    root = tmp_path / "afhq_like"
    make_image_folder(root, classes=("cat", "dog", "wild"), per_class=3, size=(24, 24))
    os.rename(root / "test", root / "val")
    run = training.resolve_run_config(
        "branched_gan_tiny_digits", dataset="image_folder", data_dir=str(root), output=str(tmp_path / "run"),
        dataset_options={"image_size": 16}, model_kwargs={"num_branches": 3},
        batch_size=9)  # the whole training split: the recipe's 32 is more than it holds
    prepared = training.prepare(run)
    gan = prepared.model
    assert gan.generator.inputs[0].shape == (None, 16, 16, 3) and gan.num_branches == 3
    assert gan.discriminator.output.shape == (None, 3)  # one logit per class folder
    (images, source), target = next(iter(prepared.task.train_data(prepared.run, 0, 1)))
    images, source, target = np.asarray(images), np.asarray(source), np.asarray(target)
    assert images.shape == (9, 16, 16, 3) and images.min() >= -1.0 and images.max() <= 1.0
    assert np.all(source != target) and set(target) <= {0, 1, 2}
    assert not (tmp_path / "run").exists()  # prepare writes nothing
    data.clear_cache()


REAL_DATA = os.environ.get("BRANCHZOO_DATA_DIR")


@pytest.mark.slow  # 50-90 s of CIFAR-10 training: CI runs it in the slow step
@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA and os.path.exists(os.path.join(REAL_DATA, "cifar10-jpeg.tar.gz"))),
                    reason="needs BRANCHZOO_DATA_DIR holding cifar10-jpeg.tar.gz")
def test_cifar10_cat_dog_run_writes_a_decomposition_grid(tmp_path):
    from test_train import read_json, run_cli

    out = tmp_path / "run"
    run_cli("train.py", "--model", "branched_gan_cifar10_catdog", "--data-dir", REAL_DATA, "--epochs", "1",
            "--steps-per-epoch", "4", "--batch-size", "8", "--no-validate", "--output", str(out),
            "--model-kwargs", "smoothing=learned")  # the entry's Gaussian S is covered on digits
    metrics = read_json(out / "metrics.json")
    config = read_json(out / "config.json")
    assert config["dataset_info"]["options"]["classes"] == ["cat", "dog"]
    assert metrics["history"]["d_loss"][0] > 0 and 0.0 <= metrics["d_acc"] <= 1.0
    run_cli("evaluate.py", "--checkpoint", str(out / "model.keras"), "--analysis", "decomposition",
            "--report", str(tmp_path / "report"), "--analysis-batches", "2", "--output", str(tmp_path / "e.json"))
    report = read_json(tmp_path / "report" / "report.json")["decomposition"]
    assert report["identity_error"] <= 1e-5 and report["diffusion_identity_error"] <= 1e-5
    assert len(report["correlation"]) == 4
    grid = tmp_path / "report" / "decomposition-grid.png"
    assert grid.exists() and grid.stat().st_size > 10_000
