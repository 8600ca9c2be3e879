"""Probes, saturation, CKA and gradient flow on models; reports; the TensorBoard callback."""

import glob
import json
import os

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure

import branchzoo
from branchzoo import data as bzdata
from branchzoo.analysis import (
    analysis_layers, cka, cka_with_output, fit_probes, gradient_flow, layer_positions, layer_saturation, plots,
    saturation,
)
from branchzoo.analysis.extraction import as_arrays, curves, iterate_features
from branchzoo.analysis.registry import AnalysisData, run_analyses, write_report
from branchzoo.callbacks import AnalysisCallback
from branchzoo.models import mpnet, resnet

RNG = np.random.default_rng(3)


def tiny_mpnet(size=16, pathways=((1, 3), (2, 5))):
    return mpnet(pathways, blocks_per_stage=1, widths=(4, 4, 8, 8), input_shape=(size, size, 3))


def random_arrays(n, size=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, size, size, 3)).astype("float32"), rng.integers(0, classes, n)


def all_weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


@pytest.fixture(scope="module")
def trained_digits():
    """The published MPNet (trained by its zoo recipe on digits) and the digits splits as arrays."""
    model = branchzoo.load("mpnet_tiny_digits")
    train = as_arrays(bzdata.load_dataset("digits", "train", 256, augment=False, shuffle=False))
    test = as_arrays(bzdata.load_dataset("digits", "test", 256, augment=False, shuffle=False))
    return model, train, test


# --- layers, pathways and positions ---------------------------------------------


def test_layers_are_labelled_by_pathway_and_placed_per_block():
    model = tiny_mpnet(pathways=((1, 3), (3, 5)))
    infos = analysis_layers(model)
    names = [i.name for i in infos]
    assert names[:6] == ["stem_conv", "stage1_block1/path1_conv1", "stage1_block1/path2_conv1",
                         "stage1_block1/path2_conv2", "stage1_block1/path2_conv3", "stage1_block1/sum"]
    assert [i.pathway for i in infos[:6]] == ["shared", "path1", "path2", "path2", "path2", "shared"]
    pos = layer_positions(infos)
    # stem at 0; block 1 spans 3 steps from 1: path2's layers at 1, 2, 3, path1's single layer
    # lines up with path2's last at 3, the sum follows at 4; block 2 starts at 5.
    assert [pos[n] for n in names[:6]] == [0, 3, 1, 2, 3, 4]
    assert pos["stage2_block1/path2_conv1"] == 5 and pos["stage2_block1/sum"] == 8
    lines = curves(infos)
    assert list(lines) == ["path1", "path2"]
    assert lines["path1"][:3] == ["stem_conv", "stage1_block1/path1_conv1", "stage1_block1/sum"]
    assert all("path1_" not in n for n in lines["path2"])


def test_models_without_pathways_have_one_main_curve():
    model = resnet([1, 1], [4, 4], stem="cifar", input_shape=(16, 16, 3))
    infos = analysis_layers(model)
    assert {i.pathway for i in infos} == {"main"}
    assert list(curves(infos)) == ["main"]
    assert layer_positions(infos) == {i.name: float(k) for k, i in enumerate(infos)}


def test_models_without_analysable_layers_are_refused():
    inputs = keras.Input((4, 4, 3))
    flat = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="has no conv/sum/dense outputs to analyse"):
        analysis_layers(flat)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional keras.Model"):
        analysis_layers(Subclassed())
    with pytest.raises(ValueError, match=r"`layers` must name analysed outputs .* Received: layers=\['nope\*'\]"):
        fit_probes(tiny_mpnet(), random_arrays(8), random_arrays(8), layers="nope*")


def test_extracted_features_are_the_pooled_layer_outputs():
    model = tiny_mpnet()
    x, y = random_arrays(6)
    features, labels, outputs = next(iterate_features(model, (x, y), ["stage1_block1/sum"], batch_size=6))
    block = keras.Model(model.input, model.get_layer("stage1_block1").output)(x, training=False)
    expected = np.asarray(block).reshape(6, 4, 2, 4, 2, 4).mean(axis=(2, 4))  # 8x8 -> 4x4
    np.testing.assert_allclose(features["stage1_block1/sum"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, y)


def test_reservoir_sample_of_a_class_ordered_stream_is_uniform():
    x = np.arange(1000, dtype="float32")[:, None]
    y = np.repeat(np.arange(10), 100)  # sorted by class, like an image folder
    stream = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1000, 64)]
    sx, sy = as_arrays(stream, 200, seed=1)
    assert len(sy) == 200 and len(np.unique(sx)) == 200
    assert np.bincount(sy, minlength=10).min() >= 8  # every class drawn (expected 20 each)
    np.testing.assert_array_equal(sy, y[sx[:, 0].astype(int)])
    again = as_arrays(stream, 200, seed=1)
    np.testing.assert_array_equal(again[0], sx)
    import tensorflow as tf

    infinite = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).repeat()
    with pytest.raises(ValueError, match="`data` must be finite"):
        as_arrays(infinite, 10)


# --- probes ---------------------------------------------------------------------


def test_probes_on_a_trained_mpnet_beat_chance_and_shuffled_labels_do_not(trained_digits):
    model, train, test = trained_digits
    layers = ["stem_conv", "stage2_block2/sum", "stage4_block*/sum"]
    result = fit_probes(model, train, test, layers=layers, num_classes=10, max_train_examples=800)
    assert result.num_train == 800 and result.num_test == 360 and result.chance == 0.1
    predicted = np.argmax(model.predict(test[0], verbose=0), axis=1)
    assert result.model_test_accuracy == pytest.approx(np.mean(predicted == test[1]))
    assert len(result.accuracy) == 4
    assert min(result.accuracy.values()) > 0.5 and result.accuracy["stage4_block2/sum"] > 0.9
    shuffled = fit_probes(model, train, test, layers=layers, num_classes=10, max_train_examples=800,
                          shuffle_labels=True)
    accuracies = np.array(list(shuffled.accuracy.values()))
    assert accuracies.max() < 0.2 and abs(accuracies.mean() - 0.1) < 0.05


def test_extraction_and_gradients_leave_the_model_unchanged():
    model = tiny_mpnet()
    model.get_layer("stage1_block1").paths[0][0][1].moving_mean.assign(np.full(4, 0.5, "float32"))
    before = all_weights(model)
    small = random_arrays(32)
    fit_probes(model, small, small, layers="*/sum")
    layer_saturation(model, small, layers="*conv1")
    cka_with_output(model, small, layers="stage1*")
    gradient_flow(model, small, max_batches=1, batch_size=32)
    for a, b in zip(before, all_weights(model)):
        np.testing.assert_array_equal(a, b)  # BN moving statistics included


def test_gradient_flow_matches_a_plain_gradient_tape():
    import tensorflow as tf

    model = tiny_mpnet()
    x, y = random_arrays(16)
    infos, values = gradient_flow(model, (x, y), max_batches=1, batch_size=16)
    assert [i.name for i in infos][-1] == "predictions"  # the classifier is a layer with a gradient too
    assert {i.pathway for i in infos} == {"shared", "path1", "path2"}
    saved = all_weights(model)
    kernel = model.get_layer("stage2_block1").paths[1][1][0].kernel  # path2_conv2
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x, training=True))
    # the paper's statistic: |mean(g)| of the kernel's gradient, not mean(|g|)
    expected = abs(float(tf.reduce_mean(tape.gradient(loss, kernel))))
    model.set_weights(saved)  # the plain call updated the BN statistics
    assert values["stage2_block1/path2_conv2"] == pytest.approx(expected, rel=1e-4)


def test_recorder_averages_abs_mean_gradient_over_the_training_steps():
    import tensorflow as tf

    from branchzoo.analysis.gradients import GradientFlowRecorder

    model = tiny_mpnet()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss_fn)  # lr 0: the weights stay put
    x, y = random_arrays(48)
    kernel = model.get_layer("stage2_block1").paths[1][1][0].kernel
    expected = []
    for b in range(3):  # the steps fit will take, at the same (unchanging) weights
        with tf.GradientTape() as tape:
            loss = loss_fn(y[16 * b:16 * (b + 1)], model(x[16 * b:16 * (b + 1)], training=True))
        expected.append(abs(float(tf.reduce_mean(tape.gradient(loss, kernel)))))
    recorder = GradientFlowRecorder(model)
    recorder.attach(model.optimizer)
    recorder.attach(model.optimizer)  # attaching twice records once
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert recorder.steps == 3
    assert recorder.result()["stage2_block1/path2_conv2"] == pytest.approx(np.mean(expected), rel=1e-4)


# --- saturation and CKA on models --------------------------------------------------


def test_layer_saturation_streams_the_same_numbers_as_one_shot():
    model = tiny_mpnet()
    x, y = random_arrays(40)
    out = layer_saturation(model, (x, y), layers=["stem_conv", "stage2_block1/sum"], batch_size=7)
    assert out["samples"] == 40 and out["channels"] == {"stem_conv": 4, "stage2_block1/sum": 4}
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)(x, training=False)
    assert out["saturation"]["stem_conv"] == saturation(np.asarray(stem))


def test_cka_with_output_is_cka_of_pooled_features_and_logits():
    model = tiny_mpnet()
    x, y = random_arrays(30)
    infos, values = cka_with_output(model, (x, y), layers="stage3_block1/sum")
    block = keras.Model(model.input, model.get_layer("stage3_block1").output)(x, training=False)
    expected = cka(np.asarray(block).reshape(30, -1), model.predict(x, verbose=0))  # 4x4 maps: no pooling
    assert values["stage3_block1/sum"] == pytest.approx(expected, abs=1e-6)


# --- registered analyses, reports, figures ---------------------------------------------


def test_every_analysis_runs_on_an_mpnet_and_a_model_without_pathways(tmp_path):
    for model in (tiny_mpnet(), resnet([1, 1], [4, 4], stem="cifar", input_shape=(16, 16, 3))):
        # the layer-generic parts once per kind of model; saturation and gradients on the MPNet
        names = ["probes", "cka"] + (["saturation", "gradients"] if model.name.startswith("mpnet") else [])
        train, test = random_arrays(32, seed=1), random_arrays(24, seed=2)
        results = run_analyses(names, model, AnalysisData(train=train, test=test, num_classes=10))
        layers = [i.name for i in analysis_layers(model)]
        assert all(results[n].numbers["layers"] == layers for n in names if n != "gradients")
        assert all(isinstance(f, Figure) for r in results.values() for f in r.figures.values())
        folder = tmp_path / model.name
        written = write_report(str(folder), results)
        report = json.loads((folder / "report.json").read_text())
        assert set(report) == set(names)
        assert report["probes"]["accuracy"].keys() == set(layers)
        for path in written:
            assert os.path.getsize(path) < 400_000
        if model.name.startswith("mpnet"):
            assert {"mean_accuracy/path1", "mean_accuracy/path2"} <= set(report["probes"])
            assert sorted(results["cka"].figures) == ["heatmap", "output"]
            heat = report["cka"]["heatmaps"]["stage4_block1_path1_path2"]
            assert heat["rows"] == ["stage4_block1/path1_conv1"] and len(heat["cols"]) == 2
        else:
            assert "mean_accuracy/main" in report["probes"]
            assert np.allclose(np.diag(report["cka"]["heatmaps"]["layers"]["matrix"]), 1.0)


def test_analyses_say_what_data_they_need():
    data = AnalysisData(train=None, test=random_arrays(8))
    with pytest.raises(ValueError, match=r"'probes' analysis needs `data.train`"):
        run_analyses("probes", tiny_mpnet(), data)
    with pytest.raises(ValueError, match=r"'cka' analysis needs `data.test`"):
        run_analyses("cka", tiny_mpnet(), AnalysisData(train=random_arrays(8)))


def test_layer_curves_figure_draws_one_line_per_pathway_at_the_positions():
    model = tiny_mpnet(pathways=((1, 3), (3, 5)))
    infos = analysis_layers(model)
    values = {i.name: float(k) for k, i in enumerate(infos)}
    fig = plots.plot_layer_values(values, infos, "value", pathway_titles={"path1": "1:3x3"})
    lines = fig.axes[0].get_lines()
    assert [l.get_label() for l in lines] == ["path1 (1:3x3)", "path2"]
    pos = layer_positions(infos)
    np.testing.assert_allclose(lines[0].get_xdata(), [pos[n] for n in curves(infos)["path1"]])
    heat = plots.plot_cka_heatmap(np.eye(3), list("abc"), list("xyz"))
    assert len(heat.axes[0].texts) == 9


# --- the TensorBoard callback ---------------------------------------------------------


def _tags(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    tags = set()
    for events in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        acc = event_accumulator.EventAccumulator(events, size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags()["tensors"])
    return tags


def test_callback_logs_images_and_scalars_every_n_epochs(tmp_path):
    model = tiny_mpnet()
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = random_arrays(32)
    data = AnalysisData(train=(x, y), test=random_arrays(24, seed=5), num_classes=10)
    callback = AnalysisCallback("saturation,gradients", data, every={"gradients": 2}, logdir=str(tmp_path),
                                options={"gradients": {"max_batches": 1, "batch_size": 16}})
    assert callback.periods == {"saturation": 1, "gradients": 2}
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback])
    runs = [(h["epoch"], h["analysis"]) for h in callback.history]
    # saturation every epoch; gradients at epoch index 1, then once more at the end (index 2)
    assert runs == [(0, "saturation"), (1, "saturation"), (1, "gradients"), (2, "saturation"), (2, "gradients")]
    tags = _tags(str(tmp_path))
    assert {"saturation/mean_saturation", "saturation/seconds", "saturation/layers",
            "gradients/flow", "gradients/abs_mean_gradient/path1"} <= tags
    # gradient flow as the paper measures it: accumulated over the 2 steps of each of 3 epochs
    assert callback.results["gradients"]["source"] == "accumulated over 6 training steps"
    assert "saturation/saturation" not in tags  # only top-level scalars are logged
    with pytest.raises(ValueError, match=r"Unknown analysis 'probs'"):
        AnalysisCallback("probs", data)
    with pytest.raises(ValueError, match=r"`every \(saturation\)` must be >= 1. Received: every \(saturation\)=0"):
        AnalysisCallback("saturation", data, every=0)


def test_probes_fit_to_convergence_and_report_the_unfinished_ones():
    from branchzoo.analysis.probes import probes_analysis
    from branchzoo.analysis.registry import AnalysisData

    model = tiny_mpnet()
    x, y = random_arrays(120, classes=3)
    data = AnalysisData(train=(x, y), test=random_arrays(60, classes=3, seed=1), num_classes=3)
    # random labels on 128 features: separable, the hard case for L-BFGS; the default limit converges
    done = probes_analysis(model, data, layers="*/sum")
    assert done.numbers["not_converged"] == 0
    assert "not converged" not in done.figures["accuracy"].axes[0].get_title()
    unfinished = probes_analysis(model, data, layers="*/sum", max_iter=2)
    assert unfinished.numbers["not_converged"] == 4  # every one of the 4 block sums
    assert "4 probes not converged" in unfinished.figures["accuracy"].axes[0].get_title()
    # and the tail of the sequence is reported with the rule that found it (only the sums
    # were probed: one sequence)
    assert set(done.numbers["tail"]) == {"main"}
    assert done.numbers["tail"]["main"]["criteria"] == ["probes"]


def test_pathway_removal_zeroes_one_pathway_of_one_block_and_restores_it():
    from branchzoo.analysis import pathway_removal
    from branchzoo.analysis.pathways import _removed

    model = tiny_mpnet()
    x, y = random_arrays(40)
    block = model.get_layer("stage2_block1")
    before = all_weights(model)
    inputs = np.random.default_rng(3).standard_normal((4, 8, 8, 4)).astype("float32")
    _, parts = block(inputs, training=False, return_intermediates=True)
    with _removed([block], 2):
        removed = block(inputs, training=False)
    # the block's sum without path2 is path1's own last ReLU output (1:3x3 has one layer)
    np.testing.assert_allclose(np.asarray(removed), np.asarray(parts["path1_relu1"]), atol=1e-6)
    for a, b in zip(before, all_weights(model)):
        np.testing.assert_array_equal(a, b)  # restored exactly
    out = pathway_removal(model, (x, y), pathway=2)
    intact = np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y)
    assert out["intact_top1"] == pytest.approx(intact)
    assert set(out["drop"]) == {"stage1_block1", "stage2_block1", "stage3_block1", "stage4_block1"}
    assert out["mean_drop"] == pytest.approx(np.mean(list(out["drop"].values())))
    with pytest.raises(ValueError, match=r"`pathway` must be between 1 and 2. Received: pathway=3"):
        pathway_removal(model, (x, y), pathway=3)
