"""Training and evaluation runs behind train.py and evaluate.py.

TensorFlow-only: tf.distribute strategies, tf.data input, TensorBoard and
SavedModel output. The model code itself (branchzoo.layers, branchzoo.models)
stays backend-agnostic.
"""

import copy
import datetime
import json
import math
import os
import platform

import numpy as np

from branchzoo import zoo
from branchzoo._io import write_json_atomic
from branchzoo._validation import check_int
from branchzoo.callbacks import AtomicBackupAndRestore, TensorBoard

STRATEGIES = ("auto", "mirrored", "default")

# Run settings that a --resume must keep (the rest may change freely).
_RESUME_KEYS = ("model", "dataset", "data_dir", "epochs", "batch_size", "lr", "seed",
                "model_kwargs", "strategy", "cpu_devices", "steps_per_epoch")


def parse_model_kwargs(items):
    """``key=value`` strings to a dict; values are JSON where they parse (numbers, lists)."""
    result = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--model-kwargs expects key=value pairs. Received: {item!r}")
        key, value = item.split("=", 1)
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def configure_cpu_devices(n):
    """Splits the physical CPU into `n` logical devices (before TF starts).

    Lets `tf.distribute.MirroredStrategy` run several replicas on a machine
    without GPUs, as tests and CPU-only users need.
    """
    import tensorflow as tf

    if n is None or n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"`cpu_devices={n}` must be set before TensorFlow initialises its devices: {e}"
        ) from None


def make_strategy(kind="auto"):
    """A `tf.distribute` strategy.

    Args:
        kind: ``"mirrored"``: MirroredStrategy over all GPUs, or over all
            logical CPU devices when there is no GPU (see
            `configure_cpu_devices`); ``"default"``: the default (single
            device) strategy; ``"auto"``: mirrored when more than one GPU is
            visible, else default.
    """
    import tensorflow as tf

    _check_strategy(kind)
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "auto":
        kind = "mirrored" if len(gpus) > 1 else "default"
    if kind == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)


def _check_strategy(kind):
    if kind not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={kind!r}")


def set_synchronized_batchnorm(model, synchronized):
    """Makes every BatchNormalization in `model` use global-batch statistics.

    Under a multi-replica strategy each replica otherwise normalises with its
    own share of the batch, so the run would differ from a single-device run
    on the same global batch. Set back to False before saving: the flag only
    exists on the TensorFlow backend and would stop the file loading elsewhere.
    """
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized


def make_optimizer(recipe, steps_per_epoch, lr):
    """The recipe's optimizer with its step learning-rate schedule."""
    import keras

    boundaries = [int(e * steps_per_epoch) for e in recipe.get("lr_decay_epochs", [])]
    if boundaries:
        factor = recipe.get("lr_decay_factor", 0.1)
        values = [lr * factor**i for i in range(len(boundaries) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        schedule = lr
    name = recipe.get("optimizer", "sgd")
    if name == "sgd":
        return keras.optimizers.SGD(
            learning_rate=schedule,
            momentum=recipe.get("momentum", 0.9),
            nesterov=recipe.get("nesterov", False),
            weight_decay=recipe.get("weight_decay"),
        )
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule, weight_decay=recipe.get("weight_decay"))
    raise ValueError(f"Recipe optimizer must be 'sgd' or 'adam'. Received: optimizer={name!r}")


def compile_classifier(model, optimizer=None):
    """Compiles `model` (logits out) with cross-entropy and top-1/top-5 accuracy."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
    )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def environment():
    """Versions that a result depends on, recorded with every run."""
    import keras
    import tensorflow as tf

    from branchzoo import __version__

    return {
        "branchzoo": __version__,
        "keras": keras.__version__,
        "keras_backend": keras.config.backend(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def resolve_run_config(
    model,
    dataset=None,
    data_dir=None,
    epochs=None,
    batch_size=None,
    lr=None,
    seed=0,
    model_kwargs=None,
    strategy="auto",
    cpu_devices=None,
    logdir=None,
    output=None,
    export=None,
    augment=None,
    deterministic=False,
    validate=True,
    steps_per_epoch=None,
):
    """The full run config: the zoo entry's recipe with the given overrides."""
    entry = zoo.get_entry(model)
    recipe = copy.deepcopy(entry["recipe"])
    name = entry["name"]
    dataset = dataset or _recipe_dataset(entry)
    output = output or os.path.join("runs", f"{name}-{dataset}")
    epochs = check_int(epochs if epochs is not None else recipe["epochs"], "epochs", minimum=1)
    batch_size = check_int(batch_size if batch_size is not None else recipe["batch_size"],
                           "batch_size", minimum=1)
    if steps_per_epoch is not None:
        steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
    lr = float(lr if lr is not None else recipe["lr"])
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive finite number. Received: lr={lr!r}")
    _check_strategy(strategy)
    return {
        "model": name,
        "dataset": dataset,
        "data_dir": data_dir,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": check_int(seed, "seed", minimum=0),
        "model_kwargs": dict(model_kwargs or {}),
        "strategy": strategy,
        "cpu_devices": cpu_devices,
        "augment": augment,
        "deterministic": bool(deterministic),
        "validate": bool(validate),
        "steps_per_epoch": steps_per_epoch,
        "output": output,
        "logdir": logdir or os.path.join(output, "logs"),
        "export": export,
        "recipe": recipe,
    }


def _recipe_dataset(entry):
    """The dataset a zoo entry trains and is evaluated on by default."""
    return entry["recipe"].get("dataset") or entry["dataset"]


def _check_resume(run, output):
    """On --resume, the stored run config wins; conflicting settings are an error."""
    path = os.path.join(output, "config.json")
    if not os.path.exists(path):
        return run
    with open(path) as f:
        stored = json.load(f)
    conflicts = {
        k: (stored.get(k), run[k])
        for k in _RESUME_KEYS
        if k in stored and _jsonable(run[k]) != stored[k]
    }
    if conflicts:
        details = "; ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in conflicts.items())
        raise ValueError(
            f"--resume must continue the run in {output} with its settings, but these "
            f"differ: {details}. Rerun with the stored settings or use another --output."
        )
    return run


def train(run, resume=False, verbose="auto"):
    """Trains as `run` (from `resolve_run_config`) says; returns the final metrics.

    Writes to ``run["output"]``: ``config.json`` (the resolved run config),
    ``model.keras`` and ``metrics.json`` when training finishes, and
    ``backup/`` while it runs (each finished epoch, atomically; a rerun with
    ``resume=True`` continues from it). TensorBoard logs go to
    ``run["logdir"]``; with ``run["export"]`` a SavedModel is written and
    checked against the Keras model.

    Args:
        run: the run config.
        resume: continue the interrupted run in ``run["output"]``.
        verbose: Keras progress-bar setting.
    """
    import keras
    import tensorflow as tf

    from branchzoo import data
    from branchzoo.export import export_saved_model, save_keras_atomic

    output = run["output"]
    backup_dir = os.path.join(output, "backup")
    if os.path.exists(os.path.join(backup_dir, "training_metadata.json")):
        if not resume:
            raise RuntimeError(
                f"{output} holds an interrupted run (its backup is in {backup_dir}). "
                "Pass --resume to continue it, or choose another --output."
            )
        run = _check_resume(run, output)

    keras.utils.set_random_seed(run["seed"])
    if run["deterministic"]:
        tf.config.experimental.enable_op_determinism()

    info = data.dataset_info(run["dataset"], data_dir=run["data_dir"])
    model_kwargs = {"input_shape": list(info.image_shape), "num_classes": info.num_classes}
    model_kwargs.update(run["model_kwargs"])
    run["resolved_model_config"] = zoo.resolved_config(run["model"], **model_kwargs)
    run["environment"] = environment()
    os.makedirs(output, exist_ok=True)  # only once the model and data are known to be there
    write_json_atomic(os.path.join(output, "config.json"), _jsonable(run))

    strategy = make_strategy(run["strategy"])
    replicas = strategy.num_replicas_in_sync
    backup = AtomicBackupAndRestore(backup_dir)
    initial_epoch = (backup.read_metadata() or {"epoch": 0})["epoch"]
    # The remaining epochs as one stream, each epoch a function of (seed, epoch):
    # a resumed run sees exactly the batches the interrupted one would have.
    train_ds = data.load_dataset(
        run["dataset"], "train", run["batch_size"], augment=run["augment"],
        data_dir=run["data_dir"], seed=run["seed"],
        epochs=max(run["epochs"] - initial_epoch, 1), initial_epoch=initial_epoch,
        steps_per_epoch=run["steps_per_epoch"],
    )
    test_ds = data.load_dataset(run["dataset"], "test", run["batch_size"], data_dir=run["data_dir"],
                                steps_per_epoch=run["steps_per_epoch"])
    steps_per_epoch = int(np.ceil(info.num_examples["train"] / run["batch_size"]))
    if run["steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, run["steps_per_epoch"])

    with strategy.scope():
        model = zoo.build(run["model"], **model_kwargs)
        if replicas > 1:
            set_synchronized_batchnorm(model, True)
        optimizer = make_optimizer(run["recipe"], steps_per_epoch, run["lr"])
        compile_classifier(model, optimizer)

    callbacks = [backup, TensorBoard(run["logdir"], write_graph=True, update_freq="epoch")]
    history = model.fit(
        train_ds,
        epochs=run["epochs"],
        steps_per_epoch=steps_per_epoch,
        validation_data=test_ds if run["validate"] else None,
        callbacks=callbacks,
        verbose=verbose,
    )

    if replicas > 1:
        set_synchronized_batchnorm(model, False)
    results = model.evaluate(test_ds, return_dict=True, verbose=0)
    metrics = {
        "dataset": run["dataset"],
        "split": "test",
        "loss": float(results["loss"]),
        "top1": float(results["top1"]),
        "top5": float(results["top5"]),
        "epochs": run["epochs"],
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "history": _jsonable({k: [float(v) for v in vs] for k, vs in history.history.items()}),
        "epochs_run_in_this_process": len(history.epoch),
        "first_epoch_in_this_process": (history.epoch[0] + 1) if history.epoch else None,
        "replicas": replicas,
        "parameters": zoo.count_parameters(model),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    save_keras_atomic(model, os.path.join(output, "model.keras"))
    if run["export"]:
        batch = next(iter(test_ds))[0].numpy()[:8]
        metrics["export"] = run["export"]
        metrics["export_max_abs_diff"] = export_saved_model(model, run["export"], verify_batch=batch)
    write_json_atomic(os.path.join(output, "metrics.json"), metrics)
    return metrics


def evaluate(model=None, checkpoint=None, weights="default", dataset=None, data_dir=None,
             batch_size=128, output=None, verbose="auto"):
    """Evaluates a zoo model or a ``.keras`` checkpoint; returns and writes metrics.

    Args:
        model: a zoo name (weights as in `branchzoo.load`), or None with
            `checkpoint`.
        checkpoint: a ``.keras`` file written by train.py.
        weights: for `model`: ``"default"`` or a weights file path.
        dataset: dataset name (default: the zoo entry's, or the one the
            checkpoint's run used).
        data_dir: local data, as for `branchzoo.data.load_dataset`.
        batch_size: evaluation batch size.
        output: JSON file to write (default ``eval-<name>-<dataset>.json``).

    Returns:
        dict with loss, top1, top5 and what was evaluated.
    """
    import keras

    import branchzoo  # noqa: F401  (registers the layers before load_model)
    from branchzoo import data

    if (model is None) == (checkpoint is None):
        raise ValueError(
            "Give exactly one of `model` (a zoo name) or `checkpoint` (a .keras file). "
            f"Received: model={model!r}, checkpoint={checkpoint!r}"
        )
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"`checkpoint` must be an existing .keras file. Received: {checkpoint!r}")
        net = keras.models.load_model(checkpoint, compile=False)
        stored = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.json")
        if dataset is None and os.path.exists(stored):
            with open(stored) as f:
                dataset = json.load(f)["dataset"]
        label = os.path.splitext(os.path.basename(checkpoint))[0]
        source = {"checkpoint": os.path.abspath(checkpoint)}
    else:
        entry = zoo.get_entry(model)
        dataset = dataset or _recipe_dataset(entry)
        info = data.dataset_info(dataset, data_dir=data_dir)
        net = zoo.load(model, weights=weights, input_shape=list(info.image_shape),
                       num_classes=info.num_classes)
        label = entry["name"]
        source = {"model": entry["name"], "weights": weights if weights != "default" else
                  (entry.get("weights") or {}).get("file")}
    if dataset is None:
        raise ValueError("`dataset` is needed: the checkpoint has no config.json beside it.")
    compile_classifier(net)
    test_ds = data.load_dataset(dataset, "test", batch_size, data_dir=data_dir)
    results = net.evaluate(test_ds, return_dict=True, verbose=verbose)
    metrics = {
        **source,
        "dataset": dataset,
        "split": "test",
        "loss": float(results["loss"]),
        "top1": float(results["top1"]),
        "top5": float(results["top5"]),
        "environment": environment(),
    }
    output = output or f"eval-{label}-{dataset}.json"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_json_atomic(output, metrics)
    metrics["output"] = output
    return metrics

