"""Training and evaluation runs behind train.py and evaluate.py.

TensorFlow-only: tf.distribute strategies, tf.data input, TensorBoard and
SavedModel output. The model code itself (branchzoo.layers, branchzoo.models)
stays backend-agnostic.
"""

import copy
import dataclasses
import datetime
import json
import math
import os
import platform

import numpy as np

from branchzoo import _progress as progress
from branchzoo import distributed, precision as precisions, tasks, zoo
from branchzoo._io import check_writable, write_json_atomic
from branchzoo._validation import check_int
from branchzoo.callbacks import AtomicBackupAndRestore, TensorBoard
from branchzoo.data.pipeline import check_augment

STRATEGIES = ("auto", "mirrored", "default", "multiworker")

# Run settings that a --resume must keep (the rest may change freely).
_RESUME_KEYS = ("model", "dataset", "data_dir", "epochs", "batch_size", "lr", "seed",
                "model_kwargs", "strategy", "cpu_devices", "steps_per_epoch", "augment",
                "deterministic", "recipe", "task", "dataset_options", "precision")
JIT_COMPILE = ("auto", "on", "off")


def parse_model_kwargs(items):
    """``key=value`` strings to a dict; values are JSON where they parse (numbers, lists)."""
    result = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--model-kwargs expects key=value pairs. Received: {item!r}")
        key, value = item.split("=", 1)
        if not key.isidentifier():
            raise ValueError(f"--model-kwargs: {key!r} is not an argument name. Received: {item!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError as e:
            if value.strip()[:1] in "[{\"" and value.strip():  # meant as JSON, but is not
                raise ValueError(f"--model-kwargs {key}: {value!r} is not valid JSON ({e.msg}). "
                                 f"Example: {key}=[8,16,32,64]") from None
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


def make_strategy(kind="auto", cluster=None):
    """A `tf.distribute` strategy.

    Args:
        kind: ``"mirrored"``: MirroredStrategy over all GPUs, or over all
            logical CPU devices when there is no GPU (see
            `configure_cpu_devices`); ``"default"``: the default (single
            device) strategy; ``"auto"``: mirrored when more than one GPU is
            visible, else default; ``"multiworker"``:
            MultiWorkerMirroredStrategy over the TF_CONFIG cluster (create
            it before any other TensorFlow call; see `branchzoo.distributed`).
        cluster: for ``"multiworker"``: this process's
            `branchzoo.distributed.ClusterTask` (default: read TF_CONFIG).
    """
    _check_strategy(kind)
    if kind == "multiworker":
        return distributed.make_strategy(cluster or distributed.read_tf_config())
    import tensorflow as tf

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


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def cpu_name():
    """The CPU's model name (per-shape speed ratios move between CPUs: record it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    jit_compile="auto",
    analysis=None,
    analysis_every=None,
    dataset_options=None,
    precision=None,
):
    """The full run config: the zoo entry's recipe with the given overrides.

    ``dataset_options`` (`branchzoo.data` options: ``image_size``,
    ``classes``, ...) are the recipe's when the run uses the recipe's
    dataset, updated with the given ones. ``precision`` (one of
    `branchzoo.precision.PRECISIONS`) is the dtype policy the model is
    built and trained under: the recipe's ``"precision"`` when None, else
    ``"float32"``.

    Checks every value (ValueError naming the argument) but touches no file.
    """
    entry = zoo.get_entry(model)
    recipe = copy.deepcopy(entry["recipe"])
    name = entry["name"]
    task = tasks.task_for(entry)
    options = {}
    if dataset is None or dataset == _recipe_dataset(entry):
        options.update(recipe.get("dataset_options") or {})
    options.update(dataset_options or {})
    dataset = dataset or _recipe_dataset(entry)
    output = output or os.path.join("runs", f"{name}-{dataset}")
    planned = sum(p.get("epochs", 0) for p in recipe["phases"]) if recipe.get("phases") else recipe["epochs"]
    epochs = check_int(epochs if epochs is not None else planned, "epochs", minimum=1)
    batch_size = check_int(batch_size if batch_size is not None else recipe["batch_size"],
                           "batch_size", minimum=1)
    if steps_per_epoch is not None:
        steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
    lr = float(lr if lr is not None else recipe["lr"])
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive finite number. Received: lr={lr!r}")
    _check_strategy(strategy)
    tasks.check_recipe(recipe, task, name)
    if augment is None:
        augment = recipe.get("augment")
    augment = check_augment(augment)
    cluster = distributed.read_tf_config() if strategy == "multiworker" else None
    if cluster is not None and cpu_devices is not None and cpu_devices > 1:
        raise ValueError("`cpu_devices` applies to --strategy mirrored; a multi-worker run has one "
                         f"CPU replica per worker. Received: cpu_devices={cpu_devices}")
    if cluster is not None:
        _check_batch_split(batch_size, cluster.num_workers, "workers")
    if jit_compile not in JIT_COMPILE:
        raise ValueError(f"`jit_compile` must be one of {JIT_COMPILE}. Received: jit_compile={jit_compile!r}")
    if recipe.get("jit_compile", "auto") not in JIT_COMPILE:
        raise ValueError(f"Recipe of '{name}': `jit_compile` must be one of {JIT_COMPILE}. "
                         f"Received: jit_compile={recipe['jit_compile']!r}")
    precision = precisions.check_precision(
        precision if precision is not None else recipe.get("precision", precisions.DEFAULT))
    if analysis:
        from branchzoo.analysis.registry import parse_analysis_names

        analysis = parse_analysis_names(analysis)
    return {
        **({"cluster": cluster.as_dict()} if cluster else {}),
        "model": name,
        "task": task.name,
        "dataset": dataset,
        "dataset_options": options,
        "data_dir": data_dir,
        "epochs": epochs,
        "phases": tasks.resolve_phases(recipe, epochs, lr=lr if lr != float(recipe["lr"]) else None),
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
        "jit_compile": jit_compile,
        "precision": precision,
        "analysis": analysis or None,
        "analysis_every": (None if analysis_every is None
                           else check_int(analysis_every, "analysis_every", minimum=1)),
        "output": output,
        "logdir": logdir or os.path.join(output, "logs"),
        "export": export,
        "recipe": recipe,
    }


def _check_batch_split(batch_size, replicas, what="replicas"):
    # Keras reduces each fit's first batch over the replicas: unequal shares fail there.
    if batch_size % replicas:
        raise ValueError(f"`batch_size` is the global batch, split evenly over the {replicas} {what}: "
                         f"it must be a multiple of {replicas}. Received: batch_size={batch_size}")


def _recipe_dataset(entry):
    """The dataset a zoo entry trains and is evaluated on by default."""
    return entry["recipe"].get("dataset") or entry["dataset"]


def _check_resume(run, output, resume, cluster=None):
    """Checks the state of `output` against `resume`; returns the backup's metadata or None.

    An interrupted run is never silently overwritten, ``--resume`` with
    nothing to resume is an error, and a resumed run keeps its settings. In
    a multi-worker run the workers decide the first two together, once the
    strategy is up (`distributed.agree_on_restore_epoch`): one worker may
    have been killed before its first backup.
    """
    backup = AtomicBackupAndRestore(distributed.backup_dir(output, cluster))
    metadata = backup.read_metadata()
    if cluster is None:
        if metadata is None and resume:
            raise ValueError(_nothing_to_resume(output))
        if metadata is not None and not resume:
            raise ValueError(
                f"{output} holds an interrupted run (its backup is in {backup.backup_dir}). "
                "Pass --resume to continue it, or choose another --output."
            )
    if metadata is None or not resume:
        return metadata
    path = os.path.join(output, "config.json")
    if os.path.exists(path):
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
    return metadata


def _nothing_to_resume(output):
    done = os.path.exists(os.path.join(output, "metrics.json"))
    return (f"--resume: there is nothing to resume in {output}: "
            + ("that run already finished (its metrics.json is there)." if done else
               "it holds no backup of an interrupted run.")
            + " Drop --resume to start a new run, or choose another --output.")


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, made before any file is written."""

    run: dict
    task: object
    strategy: object
    info: object
    model: object
    initial_epoch: int
    steps_per_epoch: int
    cluster: object = None  # a distributed.ClusterTask in a multi-worker run
    paths: object = dataclasses.field(default_factory=distributed.OutputPaths)


def prepare(run, resume=False):
    """Checks the output folders, opens the data and builds the model; writes nothing.

    Every user error (an output folder that cannot be created, a bad builder
    argument, a model that does not fit the dataset, a batch larger than the
    training split, missing data, nothing to resume) is raised here as
    ValueError / FileNotFoundError, before anything touches ``run["output"]``.
    Each output location is tried with a scratch folder removed at once.
    """
    import keras
    import tensorflow as tf

    from branchzoo import data

    run = dict(run)
    cluster = distributed.parse_tf_config(json.dumps(run["cluster"])) if run.get("cluster") else None
    check_writable(run["output"], "output")
    if cluster is None or cluster.is_chief:  # other workers write their logs and export to a temp folder
        check_writable(run["logdir"], "logdir")
        if run["export"]:
            check_writable(run["export"], "export")
    metadata = _check_resume(run, run["output"], resume, cluster)
    initial_epoch = (metadata or {"epoch": 0})["epoch"]
    if cluster is not None:  # MultiWorkerMirroredStrategy comes before any other TF call
        strategy = make_strategy(run["strategy"], cluster)
        # Every worker resumes from an epoch all of them backed up (or all refuse together).
        initial_epoch = distributed.agree_on_restore_epoch(
            strategy, cluster, metadata, resume, nothing_to_resume=_nothing_to_resume(run["output"]))
    keras.utils.set_random_seed(run["seed"])
    if run["deterministic"]:
        tf.config.experimental.enable_op_determinism()

    task = tasks.get_task(run["task"])
    info = data.dataset_info(run["dataset"], data_dir=run["data_dir"], **run["dataset_options"])
    run["dataset_info"] = {"kind": info.kind, "options": info.options}
    from_data = task.builder_kwargs(run, info)
    check_model_fits_data(run["model"], run["model_kwargs"], from_data, info.name)
    check_batch_fits_data(run["batch_size"], info)
    builder_kwargs = {**from_data, **run["model_kwargs"]}
    run["resolved_model_config"] = zoo.resolved_config(run["model"], **builder_kwargs)
    run["environment"] = environment()
    if cluster is None:
        strategy = make_strategy(run["strategy"])
    # Layers take the policy when they are made; it is Keras' global one only while building.
    with strategy.scope(), precisions.dtype_policy(run.get("precision", precisions.DEFAULT)):
        model = build_checked(run["model"], lambda: task.build(run, builder_kwargs), run["model_kwargs"])
        if strategy.num_replicas_in_sync > 1:
            _check_batch_split(run["batch_size"], strategy.num_replicas_in_sync)
            set_synchronized_batchnorm(model, True)
    steps = int(np.ceil(info.num_examples["train"] / run["batch_size"]))
    if run["steps_per_epoch"]:
        steps = min(steps, run["steps_per_epoch"])
    return Prepared(run=run, task=task, strategy=strategy, info=info, model=model,
                    initial_epoch=initial_epoch, steps_per_epoch=steps, cluster=cluster,
                    paths=distributed.OutputPaths(cluster))


def check_model_fits_data(name, model_kwargs, from_data, dataset):
    """Refuses a builder override that contradicts what the dataset sets (classes, input shape).

    `from_data` is the task's ``builder_kwargs`` for the dataset; a ``None``
    dimension of a given ``input_shape`` fits any size.
    """
    for key, expected in from_data.items():
        if key not in model_kwargs or _fits(model_kwargs[key], expected):
            continue
        given = model_kwargs[key]
        if key == "num_classes":
            what = f"has {expected} classes (the model needs one output per class)"
        elif key == "input_shape":
            what = f"has inputs of shape {list(expected)} (height, width, channels)"
        else:
            what = f"sets {key}={expected!r}"
        raise ValueError(f"Model '{name}' with {key}={given!r} does not fit dataset '{dataset}', which "
                         f"{what}. Leave {key} out of --model-kwargs (the dataset sets it) or pick a "
                         f"dataset that fits. Received: {key}={given!r}")


def _fits(given, expected):
    if isinstance(expected, (list, tuple)):
        return (isinstance(given, (list, tuple)) and len(given) == len(expected)
                and all(g is None or g == e for g, e in zip(given, expected)))
    return given == expected


def check_batch_fits_data(batch_size, info):
    """Refuses a global batch larger than the training split (each epoch would be one smaller batch)."""
    size = info.num_examples.get("train", 0)
    if size and batch_size > size:
        raise ValueError(f"`batch_size` must be at most the size of the training split: '{info.name}' has "
                         f"{size} training examples, so every epoch would be one batch of {size}. "
                         f"Received: batch_size={batch_size}")


def build_checked(name, build, model_kwargs):
    """Runs `build`; a builder's complaint about the arguments becomes a ValueError naming them."""
    zoo.check_builder_arguments(name, model_kwargs)
    try:
        return build()
    except (TypeError, ValueError) as e:
        given = ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items()) or "the entry's config"
        raise ValueError(f"Building model '{name}' with {given} failed: {e}") from None


def train(run, resume=False, verbose="auto", callbacks=()):
    """Trains as `run` (from `resolve_run_config`) says; returns the final metrics.

    Runs the recipe's phases one after the other, each compiled by the task
    with its own optimizer, trainable set and learning-rate schedule. Writes
    to ``run["output"]``: ``config.json`` (the resolved run config),
    ``model.keras`` and ``metrics.json`` when training finishes, and
    ``backup/`` while it runs (each finished epoch and its phase,
    atomically; a rerun with ``resume=True`` continues from it, in the
    phase it was in). TensorBoard logs go to ``run["logdir"]``; with
    ``run["export"]`` the task's export model is written as a SavedModel and
    checked against the Keras model.

    Args:
        run: the run config.
        resume: continue the interrupted run in ``run["output"]``.
        verbose: Keras progress-bar setting.
        callbacks: extra Keras callbacks for every phase.
    """
    return run_prepared(prepare(run, resume=resume), verbose=verbose, callbacks=callbacks)


def run_prepared(p, verbose="auto", callbacks=()):
    """Trains what `prepare` made ready (see `train`); returns the final metrics.

    In a multi-worker run only the chief writes ``run["output"]``, the
    logs and the export; the other workers write to a temporary folder
    removed at the end, and keep their own backup (`branchzoo.distributed`).
    """
    try:
        if p.paths.is_chief:  # only once the model and data are known good
            os.makedirs(p.run["output"], exist_ok=True)
            write_json_atomic(os.path.join(p.run["output"], "config.json"), _jsonable(p.run))
        history = _fit_phases(p, verbose, list(callbacks))
        metrics = _finish(p, history)
        if p.cluster is not None:
            distributed.barrier(p.strategy)
        return metrics
    finally:
        p.paths.cleanup()


def _fit_phases(p, verbose, extra_callbacks):
    """Fits every phase not yet finished; returns the merged history."""
    run, model, task = p.run, p.model, p.task
    backup = AtomicBackupAndRestore(distributed.backup_dir(run["output"], p.cluster), delete_checkpoint=False,
                                    prepare=task.build_optimizer_state, keep_previous=p.cluster is not None)
    backup.restore_epoch = p.initial_epoch
    validation = _sharded(p, task.test_data(run, steps=run["steps_per_epoch"])) if run["validate"] else None
    logdir = p.paths.path(run["logdir"])
    history = {"epoch": [], "phase": []}
    first_fit = True
    for phase in run["phases"]:
        if phase["end"] <= p.initial_epoch:
            continue
        start = max(phase["start"], p.initial_epoch)
        tasks.apply_phase(model, run["phases"], phase["index"])
        with p.strategy.scope():
            task.compile(model, run, phase, p.steps_per_epoch)
        backup.phase = phase["index"]
        callbacks = [backup, TensorBoard(logdir, write_graph=first_fit, update_freq="epoch",
                                         graph_model=task.export_model(model))]
        callbacks += task.callbacks(run, model) + _analysis_callbacks(p) + extra_callbacks
        model._initial_epoch = None  # a previous phase's resume must not leak into this one
        fitted = model.fit(
            _sharded(p, task.train_data(run, start, phase["end"] - start)),
            epochs=phase["end"], initial_epoch=start, steps_per_epoch=p.steps_per_epoch,
            validation_data=validation, callbacks=callbacks, verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles (Keras would warn that it ignores True)
        )
        first_fit = False
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history["epoch"].extend(e + 1 for e in fitted.epoch)
        history["phase"].extend(phase["name"] for _ in fitted.epoch)
    backup.delete()
    return history


def _sharded(p, dataset):
    """In a multi-worker run, `dataset` sharded by the strategy (see `distributed.shard_by_data`)."""
    return distributed.shard_by_data(dataset) if p.cluster is not None else dataset


def _analysis_callbacks(p):
    run = p.run
    if not run.get("analysis"):
        return []
    from branchzoo.callbacks import AnalysisCallback

    return [AnalysisCallback(run["analysis"], analysis_data(p.task, run, p.info),
                             every=run["analysis_every"], logdir=p.paths.path(run["logdir"]))]


def analysis_data(task, run, info, max_batches=None):
    """What analyses read: the test split and an unaugmented train split.

    With `max_batches`, each split is the task's sample of at most that
    many batches (`Task.analysis_sample`).
    """
    from branchzoo.analysis.registry import AnalysisData

    plain = dict(run, augment=False, steps_per_epoch=None)
    train = task.train_data(plain, 0, 1) if info.num_examples.get("train") else None
    test = task.test_data(run)
    if max_batches:
        seed = run.get("seed", 0)
        if train is not None:
            train = task.analysis_sample(train, max_batches, run["batch_size"], seed)
        test = task.analysis_sample(test, max_batches, run["batch_size"], seed + 1)
    return AnalysisData(
        train=train,
        test=test,
        num_classes=info.num_classes,
        class_names=list(getattr(info, "class_names", None) or []) or None,
        seed=run.get("seed", 0),
    )


def _finish(p, history):
    """Evaluates on the whole test split, saves, exports; writes and returns metrics.json."""
    from branchzoo.export import export_saved_model, save_keras_atomic

    run, model, task = p.run, p.model, p.task
    replicas = p.strategy.num_replicas_in_sync
    if replicas > 1:
        set_synchronized_batchnorm(model, False)
    test_ds = _sharded(p, task.test_data(run))
    with progress.stage(f"Evaluating on the whole '{run['dataset']}' test split"):
        results = model.evaluate(test_ds, return_dict=True, verbose=0)
    epochs_here = history["epoch"]
    metrics = {
        "dataset": run["dataset"],
        "split": "test",
        **task.summarize(results),
        "epochs": run["epochs"],
        "phases": [{"name": ph["name"], "epochs": ph["epochs"]} for ph in run["phases"]],
        "optimizer_iterations": task.optimizer_iterations(model),
        "history": _jsonable(history),
        "epochs_run_in_this_process": len(epochs_here),
        "first_epoch_in_this_process": epochs_here[0] if epochs_here else None,
        "replicas": replicas,
        **({"workers": p.cluster.num_workers} if p.cluster else {}),
        "parameters": zoo.count_parameters(task.export_model(model)),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # Every worker saves (reading variables may take collective ops); only the chief's files stay.
    save_keras_atomic(model, p.paths.path(os.path.join(run["output"], "model.keras")))
    if run["export"]:
        batch = task.example_inputs(next(iter(task.test_data(run))))
        metrics["export"] = run["export"]
        with progress.stage(f"Exporting the SavedModel to {run['export']} and checking it"):
            metrics["export_max_abs_diff"] = export_saved_model(
                task.export_model(model), p.paths.path(run["export"]), verify_batch=_first(batch, 8),
                rtol=precisions.relative_tolerance(run.get("precision", precisions.DEFAULT)))
    write_json_atomic(p.paths.path(os.path.join(run["output"], "metrics.json")), _jsonable(metrics))
    return metrics


def _first(batch, n):
    """The first `n` examples of a (nested) batch, as numpy."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda t: np.asarray(t)[:n], batch)


def evaluate(model=None, checkpoint=None, weights="default", dataset=None, data_dir=None,
             batch_size=128, output=None, verbose="auto", analysis=None, report=None,
             analysis_batches=None):
    """Evaluates a zoo model or a ``.keras`` checkpoint; returns the metrics and writes them.

    The metrics are those of the model's task (top-1 / top-5 for
    classifiers; what the recipe's ``"metrics"`` name otherwise). With
    `analysis`, the named analyses (`branchzoo.analysis.registry`) run on the
    same model and `report` receives their PNGs and ``report.json``. Every
    output location is checked before anything is loaded.

    Args:
        model: a zoo name (weights as in `branchzoo.load`), or None with
            `checkpoint`.
        checkpoint: a ``.keras`` file written by train.py.
        weights: for `model`: ``"default"`` or a weights file path.
        dataset: dataset name (default: the zoo entry's, or the one the
            checkpoint's run used).
        data_dir: local data (default: the checkpoint run's, or
            ``$BRANCHZOO_DATA_DIR``).
        batch_size: evaluation batch size.
        output: JSON file to write. Default: with `checkpoint`,
            ``eval-<checkpoint name>-<dataset>.json`` beside it, in its run
            folder; with `model`, none (the metrics are only returned).
        verbose: Keras' progress setting for the evaluation.
        analysis: analysis names (a list or ``"a,b"``), or None.
        report: folder for the analysis report (default
            ``report-<name>-<dataset>``: beside the checkpoint, or in the
            current folder for `model`).
        analysis_batches: at most this many batches per split for analyses.

    Returns:
        dict with the task's metrics, what was evaluated, ``"precision"``
        (the dtype policy the model computes in: a checkpoint keeps the one
        it was trained under; `branchzoo.precision.model_precision`) and
        ``"output"`` (the JSON file written, or None).
    """
    import keras

    import branchzoo
    from branchzoo import data

    branchzoo.register_keras_objects()  # a checkpoint loads without custom_objects

    if (model is None) == (checkpoint is None):
        raise ValueError(
            "Give exactly one of `model` (a zoo name) or `checkpoint` (a .keras file). "
            f"Received: model={model!r}, checkpoint={checkpoint!r}"
        )
    if analysis:
        from branchzoo.analysis.registry import parse_analysis_names

        analysis = parse_analysis_names(analysis)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"`checkpoint` must be an existing .keras file. Received: {checkpoint!r}")
        stored = _stored_config(checkpoint)
        if dataset is None and stored is None:
            raise ValueError(
                f"`dataset` is needed: the checkpoint {checkpoint!r} has no config.json beside it "
                "(train.py writes one). Pass --dataset."
            )
        stored = stored or {}
        options = stored.get("dataset_options", {}) if dataset in (None, stored.get("dataset")) else {}
        dataset = dataset or stored["dataset"]
        data_dir = data_dir or stored.get("data_dir")
        entry = _entry_or_none(stored.get("model"))
        recipe = stored.get("recipe") or (entry or {}).get("recipe") or {}
        task = tasks.get_task(stored.get("task") or (tasks.task_for(entry).name if entry else "classification"))
        label = os.path.splitext(os.path.basename(checkpoint))[0]
        beside = os.path.dirname(os.path.abspath(checkpoint))
        output = output or os.path.join(beside, f"eval-{label}-{dataset}.json")
        source = {"checkpoint": os.path.abspath(checkpoint)}
    else:
        entry = zoo.get_entry(model)
        options = entry["recipe"].get("dataset_options", {}) if dataset in (None, _recipe_dataset(entry)) else {}
        dataset = dataset or _recipe_dataset(entry)
        recipe, task = entry["recipe"], tasks.task_for(entry)
        label, beside = entry["name"], ""
        source = {"model": entry["name"], "weights": weights if weights != "default" else
                  (entry.get("weights") or {}).get("file")}
    if analysis:
        report = report or os.path.join(beside, f"report-{label}-{dataset}")
        check_writable(report, "report")
    if output:
        check_writable(output, "output", folder=False)

    if checkpoint is not None:
        try:
            net = keras.models.load_model(checkpoint, compile=False)
        except Exception as e:  # a truncated or foreign file: say which
            raise ValueError(f"`checkpoint` {checkpoint!r} could not be loaded as a Keras model: {e}") from None
        info = data.dataset_info(dataset, data_dir=data_dir, **options)
    else:
        info = data.dataset_info(dataset, data_dir=data_dir, **options)
        kwargs = task.builder_kwargs({"dataset": dataset, "model": entry["name"]}, info)
        net = zoo.load(model, weights=weights, **kwargs)
    run = {"dataset": dataset, "dataset_options": options, "data_dir": data_dir,
           "batch_size": batch_size, "seed": 0, "augment": False, "steps_per_epoch": None}
    task.compile_for_evaluation(net, recipe)
    progress.say(f"Evaluating {label} on the '{dataset}' test split ({info.num_examples['test']} examples)")
    results = net.evaluate(task.test_data(run), return_dict=True, verbose=verbose)
    metrics = {**source, "dataset": dataset, "split": "test", **task.summarize(results),
               "precision": precisions.model_precision(net), "environment": environment()}
    if analysis:
        from branchzoo.analysis.registry import run_analyses, write_report

        inputs = analysis_data(task, run, info, analysis_batches)
        results = {}
        for name in analysis:
            with progress.stage(f"Analysis '{name}'"):
                results.update(run_analyses([name], net, inputs))
        metrics["report"] = report
        with progress.stage(f"Writing the report to {report}"):
            metrics["report_files"] = write_report(report, results, extra={"evaluated": dict(source, dataset=dataset)})
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        write_json_atomic(output, metrics)
    metrics["output"] = output
    return metrics


def _stored_config(checkpoint):
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _entry_or_none(name):
    try:
        return zoo.get_entry(name) if name else None
    except ValueError:
        return None
