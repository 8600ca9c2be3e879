"""Training by recipe: phases, recipe losses on [batch, M, K], a task with its own train_step.

Each mechanism is exercised on tiny models registered here, in a zoo folder of
their own (BRANCHZOO_ZOO_DIR), so nothing depends on a particular family.
"""

import hashlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from branchzoo import data, publish, registry, tasks, training, zoo
from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.tasks import ClassificationTask, Task, apply_phase, register_task, resolve_phases

# -- resolve_phases: expected values by hand -------------------------------------

RECIPE = {"epochs": 30, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
          "lr_decay_epochs": [15, 25], "batch_size": 8}


def test_one_phase_by_default_with_scaled_steps():
    (phase,) = resolve_phases(RECIPE)
    assert (phase["name"], phase["start"], phase["end"]) == ("train", 0, 30)
    assert phase["optimizer"]["lr_decay_epochs"] == [15, 25]
    (short,) = resolve_phases(RECIPE, epochs=6)
    assert short["end"] == 6
    assert short["optimizer"]["lr_decay_epochs"] == pytest.approx([3.0, 5.0])  # 15/30*6, 25/30*6
    (faster,) = resolve_phases(RECIPE, lr=0.05)
    assert faster["optimizer"]["lr"] == pytest.approx(0.05)


def test_phases_scale_in_proportion_and_keep_their_own_settings():
    recipe = dict(RECIPE, phases=[
        {"name": "joint", "epochs": 6},
        {"name": "finetune", "epochs": 2, "lr": 0.01, "layer_attrs": {"g*": {"frozen": True}}},
    ])
    joint, finetune = resolve_phases(recipe)
    assert (joint["start"], joint["end"], finetune["start"], finetune["end"]) == (0, 6, 6, 8)
    assert joint["optimizer"]["lr"] == 0.1 and finetune["optimizer"]["lr"] == 0.01
    assert finetune["layer_attrs"] == {"g*": {"frozen": True}}
    # --epochs 4: 6:2 -> 3:1; --epochs 3: exact 2.25:0.75 -> 2:1 (largest remainder)
    assert [p["epochs"] for p in resolve_phases(recipe, epochs=4)] == [3, 1]
    assert [p["epochs"] for p in resolve_phases(recipe, epochs=3)] == [2, 1]
    # --lr scales every phase by lr / recipe lr: 0.2 / 0.1 = 2
    assert [p["optimizer"]["lr"] for p in resolve_phases(recipe, lr=0.2)] == pytest.approx([0.2, 0.02])
    with pytest.raises(ValueError, match="at least the number of training phases"):
        resolve_phases(recipe, epochs=1)


@pytest.mark.parametrize("phases, words", [
    ([{"name": "a"}], "needs `name` and `epochs`"),
    ([{"name": "a", "epochs": 1, "lr_schedule": "cos"}], "lr_schedule"),
    ([{"name": "a", "epochs": 1}, {"name": "a", "epochs": 1}], "unique"),
    ([{"name": "a", "epochs": 0}], "phases\\[a\\].epochs"),
])
def test_bad_phases_are_named(phases, words):
    with pytest.raises(ValueError, match=words):
        resolve_phases(dict(RECIPE, phases=phases))


def _dense_model(num_classes=3, input_shape=(4,), name="tiny", dropout=0.5):
    x = keras.Input(input_shape)
    h = keras.layers.Dense(5, activation="relu", name="body")(keras.layers.Flatten()(x))
    h = keras.layers.Dropout(dropout, name="drop")(h)
    return keras.Model(x, keras.layers.Dense(num_classes, name="head")(h), name=name)


def test_apply_phase_is_cumulative_and_rejects_typos():
    model = _dense_model()
    phases = resolve_phases(dict(RECIPE, phases=[
        {"name": "a", "epochs": 1, "layer_attrs": {"dr*": {"rate": 0.0}}},
        {"name": "b", "epochs": 1, "trainable": {"body": False}},
    ]))
    apply_phase(model, phases, 0)
    assert model.get_layer("drop").rate == 0.0 and model.get_layer("body").trainable
    model.get_layer("drop").rate = 0.5
    apply_phase(model, phases, 1)  # phase b also has what phase a set
    assert model.get_layer("drop").rate == 0.0 and not model.get_layer("body").trainable
    typo = resolve_phases(dict(RECIPE, phases=[{"name": "a", "epochs": 1, "trainable": {"bdy": False}}]))
    with pytest.raises(ValueError, match="'bdy' matches no layer"):
        apply_phase(model, typo, 0)
    no_attr = resolve_phases(dict(RECIPE, phases=[{"name": "a", "epochs": 1, "layer_attrs": {"body": {"frozen": 1}}}]))
    with pytest.raises(ValueError, match="no attribute 'frozen'"):
        apply_phase(model, no_attr, 0)


# -- runs through training.train on tiny registered models ------------------------


@registry.register_builder("test_dense")
def tiny_dense(num_classes=10, input_shape=(32, 32, 3), name="test_dense"):
    return _dense_model(num_classes, input_shape, name, dropout=0.0)


@registry.register_builder("test_members")
def tiny_members(num_classes=10, input_shape=(32, 32, 3), members=3, name="test_members"):
    """[batch, members, classes] logits: the output shape of an ensemble."""
    x = keras.Input(input_shape)
    h = keras.layers.Dense(members * num_classes, name="heads")(keras.layers.Flatten()(x))
    return keras.Model(x, keras.layers.Reshape((members, num_classes))(h), name=name)


@keras.saving.register_keras_serializable(package="branchzoo_test")
class MeanMemberCrossEntropy(keras.losses.Loss):
    """Mean over members of each member's cross-entropy (a loss on [batch, M, K])."""

    def call(self, y_true, y_pred):
        members = keras.ops.shape(y_pred)[1]
        labels = keras.ops.repeat(keras.ops.expand_dims(y_true, 1), members, axis=1)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True), axis=1)


@keras.saving.register_keras_serializable(package="branchzoo_test")
class MeanLogitAccuracy(keras.metrics.MeanMetricWrapper):
    def __init__(self, name="ensemble_top1", dtype=None):
        super().__init__(
            lambda y, p: keras.metrics.sparse_categorical_accuracy(y, keras.ops.mean(p, axis=1)),
            name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _entry(name, builder, recipe, config=None):
    base = {"epochs": 2, "batch_size": 64, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9,
            "dataset": "digits"}
    return {"name": name, "builder": builder, "config": config or {}, "dataset": "digits",
            "recipe": {**base, **recipe}}


@pytest.fixture
def test_zoo(tmp_path, monkeypatch):
    folder = tmp_path / "zoo"
    folder.mkdir()
    entries = [
        _entry("two_phase", "test_dense", {"phases": [
            {"name": "joint", "epochs": 1},
            {"name": "head_only", "epochs": 2, "lr": 0.005, "trainable": {"body": False}},
        ]}),
        _entry("members", "test_members", {
            "loss": keras.saving.serialize_keras_object(MeanMemberCrossEntropy()),
            "metrics": [keras.saving.serialize_keras_object(MeanLogitAccuracy())],
        }),
        _entry("two_optimizers", "test_dense", {"task": "test_two_optimizers"}),
        _entry("xla_recipe", "test_dense", {"jit_compile": "on"}),
        _entry("bad_jit", "test_dense", {"jit_compile": "yes"}),
        _entry("typo_key", "test_dense", {"weigth_decay": 5e-4}),
        _entry("free_text_augment", "test_dense", {"augment": "random crops (8%-100% area), flip"}),
    ]
    for e in entries:
        (folder / f"{e['name']}.json").write_text(json.dumps(e))
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(folder))
    zoo.clear_cache()
    yield tmp_path
    zoo.clear_cache()


class StopAfterEpoch(keras.callbacks.Callback):
    """Interrupts training (like Ctrl-C) once `epoch` epochs have finished and been backed up."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.body = []

    def on_epoch_end(self, epoch, logs=None):
        self.body.append(self.model.get_layer("body").get_weights()[0].copy())


def _run(name, out, **kw):
    return training.resolve_run_config(name, output=str(out), deterministic=True,
                                       steps_per_epoch=3, **kw)


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_phases_freeze_what_the_recipe_says(test_zoo):
    record = RecordWeights()
    metrics = training.train(_run("two_phase", test_zoo / "run", validate=False),
                             verbose=0, callbacks=[record])
    assert metrics["history"]["phase"] == ["joint", "head_only", "head_only"]
    assert metrics["phases"] == [{"name": "joint", "epochs": 1}, {"name": "head_only", "epochs": 2}]
    assert not np.allclose(record.body[0], 0)
    np.testing.assert_array_equal(record.body[1], record.body[0])  # body frozen in phase 2
    np.testing.assert_array_equal(record.body[2], record.body[0])
    # The second phase's optimizer is its own: it counted only its own 2 x 3 steps.
    assert metrics["optimizer_iterations"] == 6
    config = _read(test_zoo / "run" / "config.json")
    assert [p["optimizer"]["lr"] for p in config["phases"]] == [0.01, 0.005]


@pytest.mark.parametrize("stop_after", [1, 2])  # at the phase boundary; inside phase 2
def test_resume_in_any_phase_equals_an_uninterrupted_run(test_zoo, stop_after):
    straight = training.train(_run("two_phase", test_zoo / "straight"), verbose=0)
    out = test_zoo / "run"
    with pytest.raises(KeyboardInterrupt):
        training.train(_run("two_phase", out), verbose=0, callbacks=[StopAfterEpoch(stop_after)])
    metadata = _read(out / "backup" / "training_metadata.json")
    assert metadata["epoch"] == stop_after
    assert metadata["phase"] == (0 if stop_after == 1 else 1)
    resumed = training.train(_run("two_phase", out), resume=True, verbose=0)
    assert resumed["first_epoch_in_this_process"] == stop_after + 1
    assert resumed["optimizer_iterations"] == straight["optimizer_iterations"]
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-5)
    a = keras.models.load_model(out / "model.keras")
    b = keras.models.load_model(test_zoo / "straight" / "model.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert not (out / "backup").exists()


def test_resume_settings_that_change_batches_are_refused(test_zoo):
    out = test_zoo / "run"
    with pytest.raises(KeyboardInterrupt):
        training.train(_run("two_phase", out), verbose=0, callbacks=[StopAfterEpoch(1)])
    for change in ({"augment": False}, {"deterministic": False}):
        run = dict(_run("two_phase", out), **change)
        with pytest.raises(ValueError, match=list(change)[0]):
            training.prepare(run, resume=True)
    with pytest.raises(ValueError, match="--resume"):  # not silently overwritten
        training.prepare(_run("two_phase", out), resume=False)


def test_resume_with_nothing_to_resume_is_an_error(test_zoo):
    with pytest.raises(ValueError, match="nothing to resume"):
        training.prepare(_run("two_phase", test_zoo / "empty"), resume=True)
    assert not (test_zoo / "empty").exists()


def test_publish_after_an_interruption_says_the_run_was_resumed(test_zoo):
    # publish trains by the recipe (no step limit), so the interrupted run uses the same settings.
    run_dir = test_zoo / "publish-run"
    with pytest.raises(KeyboardInterrupt):
        training.train(training.resolve_run_config("two_phase", seed=0, output=str(run_dir)),
                       verbose=0, callbacks=[StopAfterEpoch(1)])
    fname = publish.publish_weights("two_phase", run_dir=str(run_dir))
    card = _read(test_zoo / "zoo" / "two_phase.json")
    budget = card["metrics"]["training_budget"]
    assert budget["resumed"] is True and budget["epochs"] == 3  # 1 joint + 2 head_only epochs
    path = test_zoo / "zoo" / fname
    assert card["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fname == f"two_phase-{card['weights']['sha256'][:8]}.weights.h5"
    published = zoo.load("two_phase")
    trained = keras.models.load_model(run_dir / "model.keras", compile=False)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(published(x), trained(x), rtol=1e-6, atol=1e-6)


def test_recipe_loss_and_metrics_on_member_outputs(test_zoo):
    metrics = training.train(_run("members", test_zoo / "run"), verbose=0)
    assert {"loss", "ensemble_top1"} <= set(metrics) and "top1" not in metrics
    assert "val_ensemble_top1" in metrics["history"]
    # evaluate() rebuilds the same loss and metric from the checkpoint's run config.
    evaluated = training.evaluate(checkpoint=str(test_zoo / "run" / "model.keras"),
                                  output=str(test_zoo / "eval.json"), verbose=0)
    assert evaluated["ensemble_top1"] == pytest.approx(metrics["ensemble_top1"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


# A model with its own train_step and two optimizers, a sub-model to export.


@keras.saving.register_keras_serializable(package="branchzoo_test")
class TwoPlayer(keras.Model):
    """A subclassed model: `player` and `critic` each trained by their own optimizer."""

    def __init__(self, player, critic, **kwargs):
        super().__init__(**kwargs)
        self.player, self.critic = player, critic

    def call(self, x, training=False):
        return self.player(x, training=training)

    def compile(self, player_optimizer, critic_optimizer, **kwargs):
        super().compile(**kwargs)
        self.player_optimizer, self.critic_optimizer = player_optimizer, critic_optimizer

    def _pair_losses(self, x, y, training):
        ce = keras.losses.sparse_categorical_crossentropy
        return (keras.ops.mean(ce(y, self.player(x, training=training), from_logits=True)),
                keras.ops.mean(ce(y, self.critic(x, training=training), from_logits=True)))

    def train_step(self, data):
        import tensorflow as tf

        x, y = data
        with tf.GradientTape(persistent=True) as tape:
            player_loss, critic_loss = self._pair_losses(x, y, True)
        self.player_optimizer.apply_gradients(zip(tape.gradient(player_loss, self.player.trainable_variables),
                                                  self.player.trainable_variables))
        self.critic_optimizer.apply_gradients(zip(tape.gradient(critic_loss, self.critic.trainable_variables),
                                                  self.critic.trainable_variables))
        return {"player_loss": player_loss, "critic_loss": critic_loss}

    def test_step(self, data):
        player_loss, critic_loss = self._pair_losses(*data, False)
        return {"player_loss": player_loss, "critic_loss": critic_loss}

    def get_config(self):
        return {"player": keras.saving.serialize_keras_object(self.player),
                "critic": keras.saving.serialize_keras_object(self.critic), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config.pop("player")),
                   keras.saving.deserialize_keras_object(config.pop("critic")), **config)


@register_task
class TwoOptimizerTask(ClassificationTask):
    name = "test_two_optimizers"

    def build(self, run, builder_kwargs):
        player = zoo.build(run["model"], **builder_kwargs)
        critic = tiny_dense(**builder_kwargs, name="critic")
        model = TwoPlayer(player, critic, name="two_player")
        model(np.zeros((1, *builder_kwargs["input_shape"]), "float32"))
        return model

    def compile(self, model, run, phase, steps_per_epoch):
        model.compile(tasks.make_optimizer(phase["optimizer"], steps_per_epoch),
                      tasks.make_optimizer(dict(phase["optimizer"], optimizer="adam", lr=1e-3), steps_per_epoch))

    def build_optimizer_state(self, model):
        model.player_optimizer.build(model.player.trainable_variables)
        model.critic_optimizer.build(model.critic.trainable_variables)

    def compile_for_evaluation(self, model, recipe):
        model.compile(keras.optimizers.SGD(), keras.optimizers.SGD())

    def export_model(self, model):
        return model.player


def test_task_with_its_own_train_step_resumes_both_optimizers_and_exports_a_submodel(test_zoo):
    from test_train import scalar_tags

    out = test_zoo / "run"
    straight = training.train(_run("two_optimizers", test_zoo / "straight"), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        training.train(_run("two_optimizers", out), verbose=0, callbacks=[StopAfterEpoch(1)])
    resumed = training.train(_run("two_optimizers", out, export=str(test_zoo / "sm")), resume=True, verbose=0)
    assert {"player_loss", "critic_loss"} <= set(resumed)  # every key evaluate returned
    assert resumed["critic_loss"] == pytest.approx(straight["critic_loss"], rel=1e-5)  # Adam state restored
    assert resumed["player_loss"] == pytest.approx(straight["player_loss"], rel=1e-5)
    whole = keras.models.load_model(out / "model.keras")  # the whole two-player model
    assert isinstance(whole, TwoPlayer)
    assert resumed["export_max_abs_diff"] <= 1e-5  # the exported sub-model serves the player
    assert resumed["parameters"]["trainable"] == zoo.count_parameters(whole.player)["trainable"]
    _, has_graph = scalar_tags(str(out / "logs"))
    assert has_graph  # the graph of the exported functional sub-model


def test_graph_of_a_subclassed_model_without_a_functional_part(tmp_path):
    from test_train import scalar_tags

    from branchzoo.callbacks import TensorBoard

    class Plain(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Plain()
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 3)), np.ones((8, 2)), epochs=1, verbose=0,
              callbacks=[TensorBoard(str(tmp_path), write_graph=True)])
    assert scalar_tags(str(tmp_path))[1]


@register_analysis("test_mean_output")
def _mean_output(model, data):
    x, _ = next(iter(data.test))
    return AnalysisResult(numbers={"mean_output": float(np.mean(model.predict(x, verbose=0)))})


def test_evaluate_writes_an_analysis_report(test_zoo):
    training.train(_run("two_phase", test_zoo / "run", epochs=2), verbose=0)
    metrics = training.evaluate(checkpoint=str(test_zoo / "run" / "model.keras"), analysis="test_mean_output",
                                report=str(test_zoo / "report"), output=str(test_zoo / "e.json"), verbose=0)
    report = _read(test_zoo / "report" / "report.json")
    assert np.isfinite(report["test_mean_output"]["mean_output"])
    assert metrics["report"] == str(test_zoo / "report")
    with pytest.raises(ValueError, match="Unknown analysis"):
        training.evaluate(checkpoint=str(test_zoo / "run" / "model.keras"), analysis="nope")


# -- optimizers and augmentation as the recipe and flags say -----------------------


def test_recipe_optimizer_schedule_by_hand():
    opt = tasks.make_optimizer({"optimizer": "sgd", "lr": 0.1, "momentum": 0.8, "nesterov": True,
                                "weight_decay": 5e-4, "lr_decay_epochs": [1.5, 3],
                                "lr_decay_factor": 0.5}, steps_per_epoch=10)
    assert isinstance(opt, keras.optimizers.SGD)
    # the recipe's weight_decay is coupled L2 (the papers' PyTorch SGD), not Keras' decoupled decay
    assert (opt.momentum, opt.nesterov, opt.l2, opt.weight_decay) == (0.8, True, 5e-4, None)
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    # boundaries at steps 15 and 30: 0.1 up to 15, then 0.05, then 0.025
    for step, lr in ((0, 0.1), (15, 0.1), (16, 0.05), (30, 0.05), (31, 0.025), (100, 0.025)):
        assert float(schedule(step)) == pytest.approx(lr), step
    adam = tasks.make_optimizer({"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4}, 10)
    assert isinstance(adam, keras.optimizers.Adam) and (adam.l2, adam.weight_decay) == (1e-4, None)
    decoupled = tasks.make_optimizer({"optimizer": "sgd", "lr": 0.1, "decoupled_weight_decay": 5e-4}, 10)
    assert (decoupled.l2, decoupled.weight_decay) == (0.0, 5e-4)
    with pytest.raises(ValueError, match="either `weight_decay`.*or `decoupled_weight_decay`"):
        tasks.make_optimizer({"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4,
                              "decoupled_weight_decay": 1e-4}, 10)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        tasks.make_optimizer({"optimizer": "rmsprop", "lr": 1.0}, 10)


def test_no_augment_gives_the_same_images_every_epoch():
    task = tasks.get_task("classification")
    run = {"dataset": "digits", "data_dir": None, "batch_size": 2000, "seed": 0,
           "steps_per_epoch": None}

    def epoch_images(augment, epoch):
        (x, _), = task.train_data(dict(run, augment=augment), epoch, 1).take(1)
        return {np.asarray(img).round(5).tobytes() for img in x}

    assert epoch_images(False, 0) == epoch_images(False, 1)  # reshuffled, never altered
    assert epoch_images(None, 0) != epoch_images(None, 1)  # the recipe's pad-crop


def test_recipe_keys_and_augment_values_are_checked(test_zoo):
    with pytest.raises(ValueError, match=r"Recipe of 'typo_key' has keys that nothing reads: \['weigth_decay'\]"):
        training.resolve_run_config("typo_key")
    with pytest.raises(ValueError, match=r"Recipe of 'free_text_augment': `augment` must be false or one of "
                                         r"\['pad_crop', 'random_resized_crop'\]"):
        training.resolve_run_config("free_text_augment")


def test_every_zoo_recipe_is_valid(monkeypatch):
    monkeypatch.delenv("BRANCHZOO_ZOO_DIR", raising=False)
    zoo.clear_cache()
    for name in zoo.list_models():
        run = training.resolve_run_config(name)
        assert run["augment"] in (False, "pad_crop", "random_resized_crop"), name
    # the ImageNette entries cite He et al.'s preprocessing: random-resized crops, not CIFAR's pad-crop
    assert training.resolve_run_config("mpnet2_1x3_4x7_imagenette")["augment"] == "random_resized_crop"


def test_random_resized_crop_keeps_a_crop_of_8_to_100_percent_of_the_area():
    from branchzoo.data.pipeline import augmenter

    # an image whose red channel is the column and green the row (in [0, 1]): a crop resized
    # back spans a share of each that is at least sqrt(0.08 * 3/4) of the side
    side = 32
    cols, rows = np.meshgrid(np.arange(side) / (side - 1), np.arange(side) / (side - 1))
    image = np.stack([cols, rows, np.zeros_like(cols)], axis=-1).astype("float32")
    crop = augmenter((side, side, 3), flip=False, kind="random_resized_crop")
    spans = []
    for k in range(200):
        out = np.asarray(crop(tf.constant(image), tf.constant([7, k], tf.int64)))
        assert out.shape == (side, side, 3)
        width = out[..., 0].max() - out[..., 0].min()
        height = out[..., 1].max() - out[..., 1].min()
        spans.append(width * height)
        assert width >= np.sqrt(0.08 * 3 / 4) - 0.05 and height >= np.sqrt(0.08 * 3 / 4) - 0.05
    assert min(spans) < 0.5 < max(spans)  # crops of many sizes, not the whole image every time
    again = np.asarray(crop(tf.constant(image), tf.constant([7, 3], tf.int64)))
    first = np.asarray(crop(tf.constant(image), tf.constant([7, 3], tf.int64)))
    np.testing.assert_array_equal(again, first)  # stateless: the same key, the same crop
    with pytest.raises(ValueError, match=r"`augment` must be None, True, False or one of"):
        data.load_dataset("digits", "train", 8, augment="flip")


def test_recipe_dataset_options_reach_the_run_only_for_its_dataset(monkeypatch):
    monkeypatch.delenv("BRANCHZOO_ZOO_DIR", raising=False)
    zoo.clear_cache()
    run = training.resolve_run_config("mpnet2_1x3_4x7_imagenette")
    assert run["dataset"] == "imagenette" and run["dataset_options"] == {"image_size": 250}
    assert training.resolve_run_config("mpnet2_1x3_4x7_imagenette", dataset="digits")["dataset_options"] == {}
    given = training.resolve_run_config("mpnet", dataset_options={"image_size": 48})
    assert given["dataset_options"] == {"image_size": 48}


def test_classification_task_refuses_data_that_is_not_labelled_images(test_zoo):
    run = _run("two_phase", test_zoo / "run", dataset="toy_xor1d")
    with pytest.raises(ValueError, match="kind 'synthetic'"):
        training.prepare(run)
    assert not (test_zoo / "run").exists()


def test_train_logs_named_analyses_to_tensorboard(test_zoo):
    from test_train import scalar_tags

    run = _run("two_phase", test_zoo / "run", epochs=2, analysis="test_mean_output", analysis_every=1)
    training.train(run, verbose=0)
    tags, _ = scalar_tags(str(test_zoo / "run" / "logs" / "analysis"))
    assert "test_mean_output/mean_output" in tags


def test_recipe_without_augmentation_trains_without_it(monkeypatch):
    monkeypatch.delenv("BRANCHZOO_ZOO_DIR", raising=False)
    zoo.clear_cache()
    assert zoo.get_entry("modular_mlp_256x4")["recipe"]["augment"] is False
    assert training.resolve_run_config("modular_mlp_256x4")["augment"] is False
    assert training.resolve_run_config("mpnet")["augment"] == "pad_crop"  # the recipe's, by name
    assert training.resolve_run_config("mpnet", augment=False)["augment"] is False  # --no-augment


def test_jit_compile_auto_takes_the_recipes_measured_choice(test_zoo):
    # --jit-compile auto: the recipe's "jit_compile" (what benchmarks/train_step.py measured fastest)
    assert tasks.jit_compile_arg(training.resolve_run_config("xla_recipe")) is True
    assert tasks.jit_compile_arg(training.resolve_run_config("xla_recipe", jit_compile="off")) is False
    assert tasks.jit_compile_arg(training.resolve_run_config("two_phase")) == "auto"  # none: Keras' choice
    assert tasks.jit_compile_arg(training.resolve_run_config("two_phase", jit_compile="on")) is True
    built = training.prepare(training.resolve_run_config("xla_recipe", validate=False)).model
    seen = {}
    built.compile = lambda **kwargs: seen.update(kwargs)  # what the task hands Keras (which may still
    tasks.get_task("classification").compile(  # turn XLA off, e.g. under op determinism)
        built, training.resolve_run_config("xla_recipe"), {"optimizer": {"optimizer": "sgd", "lr": 0.1}}, 3)
    assert seen["jit_compile"] is True
    with pytest.raises(ValueError, match=r"Recipe of 'bad_jit': `jit_compile` must be one of .*'yes'"):
        training.resolve_run_config("bad_jit")
