"""Tasks: how a zoo recipe trains, evaluates and exports one kind of model.

`branchzoo.training` runs whatever a recipe describes; a task supplies the
parts that differ between kinds of model: the builder arguments taken from
the dataset, the data streams, how to compile (loss, metrics, one or several
optimizers), extra callbacks, how evaluation results become metrics and
which (sub-)model is saved for serving. The plain classifier is one task;
families that need more (a loss on [batch, modules, classes], a GAN's own
``train_step``) name their task in the recipe (``"task": ...``) or register
it with their builder (`register_builder(..., task=...)`), never a special
case in training.py or the CLIs. A task kept in a module of its own
(`branchzoo.gan_task`) is declared in `TASKS` with that module, which is
imported on the task's first lookup.

The recipe itself (a zoo entry's ``"recipe"``) may hold:

- ``"loss"`` / ``"metrics"``: Keras-serialised objects (``"loss"`` a dict
  from `keras.saving.serialize_keras_object` or a Keras loss name;
  ``"metrics"`` a list of those); default: cross-entropy on logits with
  top-1 / top-5 accuracy;
- ``"phases"``: training phases run one after the other, each
  ``{"name", "epochs", ...optimizer settings..., "layer_attrs": {pattern:
  {attribute: value}}, "trainable": {pattern: bool}}``; see `resolve_phases`;
- ``"precision"``: the dtype policy the model is built and trained under
  (`branchzoo.precision.PRECISIONS`; default ``"float32"``).

    >>> from branchzoo.tasks import get_task
    >>> get_task("classification").name
    'classification'
"""

import copy
import fnmatch

from branchzoo import registry

# Tasks by name; a task that lives outside this module is declared with the module that registers it.
TASKS = registry.Registry("task", modules={"class_transfer_gan": "branchzoo.gan_task"})

# Optimizer settings a recipe (or one of its phases) may give.
OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay",
                  "decoupled_weight_decay", "plain_step", "beta_1", "beta_2",
                  "lr_decay_epochs", "lr_decay_factor")


# Recipe keys every task reads (a task adds its own in `Task.recipe_keys`).
RECIPE_KEYS = ("task", "dataset", "dataset_options", "epochs", "batch_size", "augment", "phases",
               "loss", "metrics", "headline_metric", "jit_compile", "precision", "command", "notes",
               *OPTIMIZER_KEYS)


def check_recipe(recipe, task, name):
    """Rejects recipe keys no code reads, an ``augment`` the pipeline lacks and an unknown ``precision``.

    A typo in a recipe must not silently train something else.
    """
    from branchzoo.data.pipeline import AUGMENTS

    unknown = sorted(set(recipe) - set(RECIPE_KEYS) - set(task.recipe_keys))
    if unknown:
        raise ValueError(
            f"Recipe of '{name}' has keys that nothing reads: {unknown}. A recipe of the "
            f"{task.name!r} task may set {sorted(set(RECIPE_KEYS) | set(task.recipe_keys))}."
        )
    if "precision" in recipe:
        from branchzoo.precision import PRECISIONS

        if recipe["precision"] not in PRECISIONS:
            raise ValueError(f"Recipe of '{name}': `precision` must be one of {PRECISIONS}. "
                             f"Received: precision={recipe['precision']!r}")
    augment = recipe.get("augment", "pad_crop")
    if augment is not False and augment not in AUGMENTS:
        raise ValueError(
            f"Recipe of '{name}': `augment` must be false or one of {list(AUGMENTS)}. "
            f"Received: augment={augment!r}"
        )


def register_task(cls):
    """Registers a `Task` subclass under its ``name`` (class decorator)."""
    if not cls.name:
        raise ValueError(f"Task class {cls.__name__} needs a `name`.")
    return TASKS.register(cls.name, cls)


def get_task(name, where=None):
    """An instance of the task registered as `name` (`where`: what named it, for the error)."""
    return TASKS.get(name, where)()


def task_names():
    return TASKS.names()


def task_for(entry):
    """The task a zoo entry trains with: its recipe's ``"task"``, else its builder's."""
    where = f"zoo entry {entry.get('_path', entry.get('name'))}"
    name = entry["recipe"].get("task") or registry.get_builder(entry["builder"], where).get("task")
    return get_task(name or "classification", where)


# -- phases -------------------------------------------------------------------


def resolve_phases(recipe, epochs=None, lr=None):
    """The recipe's training phases with their epoch ranges and optimizer settings.

    A recipe without ``"phases"`` has one phase, ``"train"``, of
    ``recipe["epochs"]`` epochs. `epochs` (``--epochs``) scales every phase
    in proportion (largest remainders, each phase at least one epoch), and
    each phase's ``lr_decay_epochs`` with it; `lr` (``--lr``) scales every
    phase's learning rate by ``lr / recipe["lr"]``.

    Returns:
        A list of dicts ``{"name", "index", "start", "end", "epochs",
        "optimizer": {...}, "layer_attrs", "trainable"}``; epochs are global
        (phase 2 of 3 + 2 epochs runs epochs 3 and 4: start=3, end=5).
    """
    from branchzoo._validation import check_int

    base = {k: recipe[k] for k in OPTIMIZER_KEYS if k in recipe}
    raw = recipe.get("phases") or [{"name": "train", "epochs": recipe["epochs"]}]
    if not isinstance(raw, list):
        raise ValueError(f"Recipe `phases` must be a list of phases. Received: phases={raw!r}")
    names = set()
    for p in raw:
        unknown = set(p) - {"name", "epochs", "layer_attrs", "trainable", *OPTIMIZER_KEYS}
        if unknown or "name" not in p or "epochs" not in p:
            raise ValueError(
                "Each recipe phase needs `name` and `epochs` and may set "
                f"{list(OPTIMIZER_KEYS)}, `layer_attrs`, `trainable`. Received: {p!r}"
            )
        if p["name"] in names:
            raise ValueError(f"Recipe phase names must be unique. Received two named {p['name']!r}.")
        names.add(p["name"])
        check_int(p["epochs"], f"phases[{p['name']}].epochs", minimum=1)
    planned = [p["epochs"] for p in raw]
    counts = _apportion(planned, epochs) if epochs is not None else planned
    recipe_lr = float(recipe.get("lr", 1.0))
    phases, start = [], 0
    for i, (p, n) in enumerate(zip(raw, counts)):
        settings = {**base, **{k: p[k] for k in OPTIMIZER_KEYS if k in p}}
        if lr is not None and "lr" in settings:
            settings["lr"] = float(settings["lr"]) * float(lr) / recipe_lr
        if settings.get("lr_decay_epochs"):
            settings["lr_decay_epochs"] = [d * n / p["epochs"] for d in settings["lr_decay_epochs"]]
        phases.append({
            "name": p["name"], "index": i, "start": start, "end": start + n, "epochs": n,
            "optimizer": settings,
            "layer_attrs": copy.deepcopy(p.get("layer_attrs", {})),
            "trainable": copy.deepcopy(p.get("trainable", {})),
        })
        start += n
    return phases


def _apportion(planned, total):
    """Splits `total` epochs over phases in proportion to `planned` (each >= 1)."""
    if total < len(planned):
        raise ValueError(
            f"`epochs` must be at least the number of training phases ({len(planned)}) "
            f"of this recipe. Received: epochs={total}"
        )
    whole = sum(planned)
    exact = [total * p / whole for p in planned]
    counts = [max(1, int(e)) for e in exact]
    by_remainder = sorted(range(len(planned)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    i = 0
    while sum(counts) < total:
        counts[by_remainder[i % len(planned)]] += 1
        i += 1
    while sum(counts) > total:  # the minimum of one epoch overshot: take from the largest
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts


def apply_phase(model, phases, index):
    """Sets the layer attributes and trainable flags of phases 0..`index` on `model`.

    Cumulative, so a run resumed in phase 3 has what phases 1 and 2 set.
    A pattern that matches no layer, or an attribute a matched layer does not
    have, is an error: a recipe typo must not silently train the wrong thing.
    """
    layers = [l for l in model._flatten_layers(include_self=False, recursive=True)]
    for phase in phases[: index + 1]:
        for pattern, attrs in phase["layer_attrs"].items():
            matched = _match(layers, pattern, phase, "layer_attrs", model)
            for layer in matched:
                for attr, value in attrs.items():
                    if not hasattr(layer, attr):
                        raise ValueError(
                            f"Recipe phase {phase['name']!r}: layer {layer.name!r} (matched by "
                            f"{pattern!r}) has no attribute {attr!r} to set."
                        )
                    setattr(layer, attr, value)
        for pattern, flag in phase["trainable"].items():
            for layer in _match(layers, pattern, phase, "trainable", model):
                layer.trainable = bool(flag)


def _match(layers, pattern, phase, key, model):
    matched = [l for l in layers if fnmatch.fnmatch(l.name, pattern)]
    if not matched:
        raise ValueError(
            f"Recipe phase {phase['name']!r}: the {key} pattern {pattern!r} matches no layer "
            f"of model {model.name!r}."
        )
    return matched


# -- optimizers, losses, metrics from recipe data -------------------------------


def learning_rate_schedule(settings, steps_per_epoch):
    """The rate of recipe settings: ``lr``, or a piecewise-constant schedule.

    ``lr_decay_epochs`` (epochs from the start of the phase) become step
    boundaries, each multiplying the rate by ``lr_decay_factor`` (default 0.1).
    """
    import keras

    lr = float(settings["lr"])
    boundaries = [int(round(e * steps_per_epoch)) for e in settings.get("lr_decay_epochs") or []]
    if not boundaries:
        return lr
    factor = settings.get("lr_decay_factor", 0.1)
    values = [lr * factor**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_optimizer(settings, steps_per_epoch):
    """An optimizer from recipe settings (`OPTIMIZER_KEYS`) with its step schedule.

    - ``weight_decay``: COUPLED L2, ``wd * w`` added to the gradient before
      momentum, as PyTorch's ``SGD(weight_decay=...)`` in the papers'
      reference code (`branchzoo.optimizers`); ``decoupled_weight_decay``:
      Keras' own decoupled decay (``w -= lr * wd * w`` after the step;
      AdamW's only kind). A recipe sets one of the two.
    - ``plain_step``: ``{variable path pattern: rate}``: those variables take
      ``v -= rate * dL/dv`` with no momentum, decay or schedule (GatedConnect's
      gates, Algorithm 1 of Ahmed & Torresani 2017).
    - ``lr_decay_epochs`` / ``lr_decay_factor``: see `learning_rate_schedule`;
      ``beta_1`` / ``beta_2``: Adam's.
    """
    import keras

    from branchzoo import optimizers

    schedule = learning_rate_schedule(settings, steps_per_epoch)
    name = settings.get("optimizer", "sgd")
    coupled = settings.get("weight_decay") or 0.0
    decoupled = settings.get("decoupled_weight_decay")
    if coupled and decoupled:
        raise ValueError(
            "A recipe sets either `weight_decay` (coupled L2) or `decoupled_weight_decay`, not both. "
            f"Received: weight_decay={coupled!r}, decoupled_weight_decay={decoupled!r}"
        )
    plain_step = optimizers.check_plain_step(settings.get("plain_step"))
    betas = {k: settings[k] for k in ("beta_1", "beta_2") if k in settings}
    if betas and name not in ("adam", "adamw"):
        raise ValueError(f"`beta_1` / `beta_2` are Adam's settings. Received them with optimizer={name!r}")
    if name == "sgd":
        return optimizers.SGD(
            learning_rate=schedule,
            momentum=settings.get("momentum", 0.9),
            nesterov=settings.get("nesterov", False),
            l2=coupled, plain_step=plain_step, weight_decay=decoupled,
        )
    if name == "adam":
        return optimizers.Adam(learning_rate=schedule, l2=coupled, plain_step=plain_step,
                               weight_decay=decoupled, **betas)
    if name == "adamw":
        if coupled or plain_step:
            raise ValueError(
                "AdamW's decay is decoupled: set `decoupled_weight_decay` (and no `plain_step`). "
                f"Received: weight_decay={coupled!r}, plain_step={plain_step!r}"
            )
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=decoupled or 0.004, **betas)
    raise ValueError(f"Recipe `optimizer` must be 'sgd', 'adam' or 'adamw'. Received: optimizer={name!r}")


def check_plain_step_matches(model, settings):
    """Every ``plain_step`` pattern of `settings` matches a variable of `model` (a recipe typo is an error)."""
    from branchzoo import optimizers

    paths = [v.path for v in model.variables]
    for pattern in optimizers.check_plain_step(settings.get("plain_step")):
        if not any(optimizers.plain_step_rate({pattern: 0.0}, p) is not None for p in paths):
            raise ValueError(
                f"Recipe `plain_step` pattern {pattern!r} matches no variable of model {model.name!r} "
                f"(variable paths look like {paths[0]!r})."
            )


def jit_compile_arg(run):
    """`compile`'s ``jit_compile`` for the run's ``--jit-compile``.

    ``on`` / ``off`` decide. ``auto`` takes the recipe's ``"jit_compile"``
    (``"on"`` / ``"off"``: the route `benchmarks/train_step.py` measured fastest
    for that model) and, when the recipe has none, Keras' choice (XLA off on CPU,
    where it measured 2.5-3x slower for mpnet_tiny_digits; benchmarks/README.md).
    """
    choice = run.get("jit_compile") or "auto"
    if choice == "auto":
        choice = (run.get("recipe") or {}).get("jit_compile", "auto")
    return {"on": True, "off": False}.get(choice, "auto")


def deserialize(obj, what):
    """A Keras object (loss, metric) from recipe data: a name or a serialised dict."""
    import keras

    from branchzoo import losses  # noqa: F401  (registers the losses and metrics a recipe names)

    try:
        if isinstance(obj, dict):
            return keras.saving.deserialize_keras_object(obj)
        if what == "loss":
            return keras.losses.get(obj)
        return keras.metrics.get(obj)
    except (ValueError, TypeError) as e:
        raise ValueError(f"Recipe `{what}` {obj!r} is not a Keras {what} that can be built: {e}") from None


# -- tasks ----------------------------------------------------------------------


class Task:
    """The parts of a training run that depend on the kind of model.

    Subclass, set `name`, override what differs and decorate with
    `register_task`. Every method gets the resolved run config (`run`,
    from `branchzoo.training.resolve_run_config`).
    """

    name = None
    # Recipe keys this task reads besides `RECIPE_KEYS`.
    recipe_keys = ()
    # Plain words for a metric a reader could take for something else (README's table).
    metric_descriptions = {}

    def builder_kwargs(self, run, info):
        """Builder arguments taken from the dataset (`DatasetInfo`)."""
        return {}

    def build(self, run, builder_kwargs):
        """The model, built inside the strategy's scope."""
        from branchzoo import zoo

        return zoo.build(run["model"], **builder_kwargs)

    def train_data(self, run, initial_epoch, epochs):
        """The training stream of `epochs` epochs starting at `initial_epoch`."""
        raise NotImplementedError

    def test_data(self, run, steps=None):
        """The test split, once (at most `steps` batches)."""
        raise NotImplementedError

    def compile(self, model, run, phase, steps_per_epoch):
        """Compiles `model` for `phase` (a dict of `resolve_phases`)."""
        raise NotImplementedError

    def compile_for_evaluation(self, model, recipe):
        """Compiles a loaded model so that `evaluate` returns the task's metrics."""
        raise NotImplementedError

    def build_optimizer_state(self, model):
        """Creates every optimizer variable before a backup is loaded into them."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    def callbacks(self, run, model):
        """Extra callbacks for `fit`."""
        return []

    def optimizer_iterations(self, model):
        """Training steps the optimizer has taken (``metrics.json``), None without one."""
        return int(model.optimizer.iterations.numpy()) if model.optimizer is not None else None

    def analysis_sample(self, data, max_batches, batch_size, seed):
        """At most `max_batches` batches of a split (`train_data` / `test_data`) for analyses.

        A uniform sample of examples drawn with `seed`, not the first
        batches: image folders come sorted by class.
        """
        from branchzoo.analysis.extraction import as_arrays

        x, y = as_arrays(data, max_batches * batch_size, seed)
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]

    def summarize(self, results):
        """Evaluation results (``evaluate(return_dict=True)``) as metrics: every key, as floats."""
        return {k: float(v) for k, v in results.items()}

    def export_model(self, model):
        """The model written as ``model.keras`` and exported as a SavedModel."""
        return model

    def example_inputs(self, batch):
        """The model inputs of one batch of `test_data` (to check an export with)."""
        return batch[0]


@register_task
class ClassificationTask(Task):
    """Images to logits with integer labels: the default task.

    The recipe's ``"loss"`` and ``"metrics"`` replace the default
    cross-entropy and top-1 / top-5 accuracy, so a model whose output is
    [batch, modules, classes] trains with, e.g., `branchzoo.losses.ModularLoss`.
    """

    name = "classification"

    def builder_kwargs(self, run, info):
        if info.kind != "classification":
            raise ValueError(
                f"Model '{run.get('model')}' trains with the classification task, which needs a "
                f"dataset of labelled images; {info.name!r} is of kind {info.kind!r}. "
                "Pick a classification dataset with --dataset."
            )
        return {"input_shape": list(info.image_shape), "num_classes": info.num_classes}

    def train_data(self, run, initial_epoch, epochs):
        from branchzoo import data

        return data.load_dataset(
            run["dataset"], "train", run["batch_size"], augment=run["augment"],
            data_dir=run["data_dir"], seed=run["seed"], epochs=epochs,
            initial_epoch=initial_epoch, steps_per_epoch=run["steps_per_epoch"],
            **run.get("dataset_options", {}),
        )

    def test_data(self, run, steps=None):
        from branchzoo import data

        return data.load_dataset(run["dataset"], "test", run["batch_size"],
                                 data_dir=run["data_dir"], steps_per_epoch=steps,
                                 **run.get("dataset_options", {}))

    def _loss_and_metrics(self, recipe):
        import keras

        if "loss" in recipe:
            loss = deserialize(recipe["loss"], "loss")
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if "metrics" in recipe:
            metrics = [deserialize(m, "metric") for m in recipe["metrics"]]
        else:
            metrics = [
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
            ]
        return loss, metrics

    def compile(self, model, run, phase, steps_per_epoch):
        loss, metrics = self._loss_and_metrics(run["recipe"])
        check_plain_step_matches(model, phase["optimizer"])
        model.compile(optimizer=make_optimizer(phase["optimizer"], steps_per_epoch),
                      loss=loss, metrics=metrics, jit_compile=jit_compile_arg(run))

    def compile_for_evaluation(self, model, recipe):
        loss, metrics = self._loss_and_metrics(recipe)
        model.compile(loss=loss, metrics=metrics)
