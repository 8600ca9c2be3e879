"""Keras callbacks: crash-safe backups for resumable training, TensorBoard.

TensorFlow-only (summaries). `AnalysisCallback` logs any registered
branchzoo.analysis to TensorBoard; `DecompositionImages` logs a
BranchedGenerator's decomposition grid every N steps.
"""

import glob
import json
import os

import keras
import numpy as np

from branchzoo._io import temp_path, write_json_atomic

_METADATA = "training_metadata.json"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups survive a kill at any moment.

    Keras writes the weights and then the epoch counter in place, so a kill
    between the two (or during the weights write) resumes from a corrupt or
    mismatched state. Here each epoch's weights (model and optimizer state)
    go to a new file that is renamed into place, then the metadata naming
    that file is replaced atomically, and only then is the older file
    removed: the metadata always points at a complete checkpoint of the
    epoch it names.

    Training in phases (`branchzoo.tasks.resolve_phases`) sets `phase`
    before each phase's `fit`; the metadata records the phase whose optimizer
    the checkpoint holds. Restoring into the same phase restores everything;
    restoring into a later phase (a resume right at a phase boundary)
    restores the model's weights only, since that phase starts with a fresh
    optimizer of its own.

    Args:
        backup_dir: folder for the backup; deleted after training finishes
            (``delete_checkpoint=True``; with several `fit` calls, pass False
            and call `delete()` after the last).
        delete_checkpoint: as in Keras.
        prepare: ``fn(model)`` creating every optimizer variable before a
            checkpoint is loaded into them (default: builds
            ``model.optimizer``); models with several optimizers pass theirs.
        keep_previous: also keep the checkpoint before the last one (named
            in the metadata's ``"previous"``): a multi-worker run whose
            workers stopped one epoch apart resumes from the older one
            (`branchzoo.distributed.agree_on_restore_epoch`).

    Attributes:
        restore_epoch: the epoch the next ``fit`` restores: None for the
            last checkpoint, 0 for none (a fresh start), else the epoch of
            the last or the kept previous checkpoint. Used once.
    """

    def __init__(self, backup_dir, delete_checkpoint=True, prepare=None, keep_previous=False):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self.phase = 0
        self.restore_epoch = None
        self._prepare = prepare
        self._keep_previous = keep_previous
        self._last = None  # the checkpoint this process restored or wrote last

    def delete(self):
        """Removes the backup folder (after the last phase finished)."""
        import shutil

        shutil.rmtree(self.backup_dir, ignore_errors=True)

    @property
    def metadata_path(self):
        return os.path.join(self.backup_dir, _METADATA)

    def read_metadata(self):
        """The last completed backup's metadata, or None when there is none."""
        if not os.path.exists(self.metadata_path):
            return None
        with open(self.metadata_path) as f:
            return json.load(f)

    def _load_model(self):
        restore, self.restore_epoch = self.restore_epoch, None
        metadata = self.read_metadata()
        if metadata is None or restore == 0:
            return
        if restore is not None and restore != metadata["epoch"]:
            previous = metadata.get("previous") or {}
            if previous.get("epoch") != restore:
                raise ValueError(f"{self.backup_dir} holds no checkpoint of epoch {restore} "
                                 f"(its last is epoch {metadata['epoch']}).")
            metadata = previous
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model before fit().")
        weights = os.path.join(self.backup_dir, metadata["weights"])
        self._last = {k: metadata[k] for k in ("epoch", "weights", "phase") if k in metadata}
        if metadata.get("phase", 0) == self.phase:
            if self._prepare is not None:
                self._prepare(self.model)
            elif self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(weights)
        else:  # the checkpoint's optimizer belongs to an earlier phase
            from keras.src.saving import saving_lib

            saving_lib.load_weights_only(self.model, weights, objects_to_skip=_optimizers(self.model))
        self.model._initial_epoch = metadata["epoch"]

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch = self._current_epoch
        name = f"epoch-{epoch:04d}.weights.h5"
        tmp = temp_path(self.backup_dir, suffix=f"-{name}")  # Keras insists on the suffix
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, os.path.join(self.backup_dir, name))
        entry = {"epoch": epoch, "weights": name, "phase": self.phase}
        metadata = {**entry, "batch": 0}
        keep = {name}
        if self._keep_previous and self._last and self._last["epoch"] < epoch:
            metadata["previous"] = self._last
            keep.add(self._last["weights"])
        write_json_atomic(self.metadata_path, metadata)
        self._last = entry
        for old in glob.glob(os.path.join(self.backup_dir, "*.weights.h5")):
            if os.path.basename(old) not in keep:
                os.remove(old)


def _specs_from_built_shapes(model):
    """Input specs of a built subclassed model, from Keras' build config; None if unknown."""
    import tensorflow as tf

    shape = (model.get_build_config() or {}).get("input_shape") if model.built else None
    if shape is None:
        return None
    is_nested = isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple))
    shapes = shape if is_nested else [shape]
    return [tf.TensorSpec([None, *s[1:]], "float32") for s in shapes]


def _optimizers(model):
    """Every optimizer a model holds (``optimizer`` and any other attribute)."""
    found = []
    for value in vars(model).values():
        if isinstance(value, keras.optimizers.Optimizer) and all(value is not f for f in found):
            found.append(value)
    return found


class TensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` that also writes the op graph.

    Keras 3 (checked on 3.15) only writes the train-function graph when that
    function is itself a `tf.function`, which in Keras 3 it is not, so the
    Graphs dashboard would show nothing but the conceptual Keras model. This writes the
    graph of a forward pass instead, once, at the first batch: of
    `graph_model` when given (e.g. the generator of a GAN, a functional
    model inside a subclassed one), else of the model being fitted. A model
    with no symbolic inputs (subclassed) is traced on the first batch's
    input shapes.
    """

    def __init__(self, *args, graph_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._graph_model = graph_model

    def _write_keras_model_train_graph(self):
        import tensorflow as tf

        model = self._graph_model if self._graph_model is not None else self.model
        inputs = getattr(model, "inputs", None)
        if inputs:
            specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in inputs]
        else:
            specs = _specs_from_built_shapes(model)
            if specs is None:
                return  # nothing known to trace with; the scalars are written regardless
        forward = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False))
        with self._train_writer.as_default():
            tf.summary.graph(forward.get_concrete_function(*specs).graph)


# -----------------------------------------------------------------------------
# Analysis callback: runs analyses registered in branchzoo.analysis.registry every
# N epochs and logs their figures and top-level scalars to TensorBoard.
# -----------------------------------------------------------------------------


class AnalysisCallback(keras.callbacks.Callback):
    """Runs registered analyses every N epochs and logs them to TensorBoard.

    Generic over ``branchzoo.analysis.registry``: each analysis
    ``fn(model, data, **options) -> AnalysisResult`` is run on the model being
    trained; every figure is logged as an image ``<analysis>/<figure>`` and
    every top-level scalar number as ``<analysis>/<key>`` (plus
    ``<analysis>/seconds``, the time it took), at step = epoch index, like
    Keras' epoch summaries. ``train.py --analysis saturation,probes
    --analysis-every N`` is this callback. (After Richter et al. 2022:
    probes, saturation, CKA and gradient flow during training.) An analysis
    with a ``recorder`` attribute (gradient flow) gets it created at the start
    of training, attached to the model's optimizer, and passed back as
    ``recorded=`` each time it runs.

    Args:
        names: analysis names, ``"saturation,probes"`` or a list.
        data: a `branchzoo.analysis.registry.AnalysisData` (train / test
            batches without augmentation, num_classes, seed).
        every: period in epochs: an int for every analysis, a dict
            ``{name: int}``, or None for each analysis' own default
            (its ``default_every`` attribute: saturation and gradients 1,
            cka 5, probes 10; 1 for analyses that set none).
        logdir: TensorBoard folder; summaries go to ``<logdir>/analysis``.
            None: nothing is written (results stay in `results`/`history`).
        options: ``{name: {keyword: value}}`` passed to each analysis.
        max_train_examples, max_test_examples: at the start of training
            the train / test data are drawn once (uniform, seeded) into
            arrays of at most this many examples, so every run reuses them
            (None: pass the data through as given, read again each time).
        run_on_train_end: after the last epoch, also run each analysis whose
            period did not fall on it.
        dpi: resolution of the logged images.

    Attributes:
        results: ``{name: numbers}`` of the latest run of each analysis.
        history: list of ``{"epoch", "analysis", "seconds", "scalars"}``.

    Example:

    >>> from branchzoo.analysis.registry import AnalysisData
    >>> cb = AnalysisCallback("saturation", AnalysisData(test=None), every=2)
    >>> cb.periods
    {'saturation': 2}
    """

    def __init__(self, names, data, every=None, logdir=None, options=None, max_train_examples=5000,
                 max_test_examples=2000, run_on_train_end=True, dpi=80):
        super().__init__()
        from branchzoo._validation import check_int
        from branchzoo.analysis.registry import get_analysis, parse_analysis_names

        self.names = parse_analysis_names(names)
        self.data = data
        self.logdir = logdir
        self.options = dict(options or {})
        for name in self.options:
            if name not in self.names:
                raise ValueError(
                    f"`options` must be keyed by the analyses run ({self.names}). Received: options key {name!r}"
                )
        self.periods = {}
        for name in self.names:
            if every is None:
                period = getattr(get_analysis(name), "default_every", 1)
            elif isinstance(every, dict):
                period = every.get(name, getattr(get_analysis(name), "default_every", 1))
            else:
                period = every
            self.periods[name] = check_int(period, f"every ({name})", minimum=1)
        self.max_train_examples = max_train_examples
        self.max_test_examples = max_test_examples
        self.run_on_train_end = bool(run_on_train_end)
        self.dpi = dpi
        self.results = {}
        self.history = []
        self._writer = None
        self._prepared = None
        self._last_run = {}
        self._last_epoch = None
        self._recorders = {}

    def _prepared_data(self):
        if self._prepared is None:
            import dataclasses

            from branchzoo.analysis.extraction import as_arrays

            def draw(source, limit, offset, batch=128):
                if source is None or limit is None:
                    return source
                x, y = as_arrays(source, limit, self.data.seed + offset)
                # A list of batches: the form AnalysisData documents, which every
                # analysis reads (the arrays are drawn once, reused every period).
                return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]

            self._prepared = dataclasses.replace(
                self.data,
                train=draw(self.data.train, self.max_train_examples, 0),
                test=draw(self.data.test, self.max_test_examples, 1),
            )
        return self._prepared

    def on_train_begin(self, logs=None):
        self._prepared_data()
        # An analysis may record something during training (its ``recorder`` attribute,
        # e.g. gradient flow): created once, attached to each phase's optimizer.
        from branchzoo.analysis.registry import get_analysis

        for name in self.names:
            factory = getattr(get_analysis(name), "recorder", None)
            if factory is None:
                continue
            if name not in self._recorders:
                self._recorders[name] = factory(self.model)
            if getattr(self.model, "optimizer", None) is not None:
                self._recorders[name].attach(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        due = [n for n in self.names if (epoch + 1) % self.periods[n] == 0]
        self.run(due, epoch)

    def on_train_end(self, logs=None):
        if self.run_on_train_end and self._last_epoch is not None:
            missed = [n for n in self.names if self._last_run.get(n) != self._last_epoch]
            self.run(missed, self._last_epoch)
        if self._writer is not None:
            self._writer.flush()

    def run(self, names, step):
        """Runs `names` now and logs them at `step`; returns ``{name: AnalysisResult}``."""
        import time

        from branchzoo.analysis.registry import AnalysisResult, get_analysis

        out = {}
        for name in names:
            start = time.perf_counter()
            options = dict(self.options.get(name, {}))
            if name in self._recorders:
                options["recorded"] = self._recorders[name]
            result = get_analysis(name)(self.model, self._prepared_data(), **options)
            seconds = time.perf_counter() - start
            if not isinstance(result, AnalysisResult):
                raise TypeError(f"Analysis {name!r} must return an AnalysisResult. Received: {type(result)}")
            scalars = {k: float(v) for k, v in result.numbers.items() if _is_scalar(v)}
            self.results[name] = result.numbers
            self.history.append({"epoch": step, "analysis": name, "seconds": seconds, "scalars": scalars})
            self._last_run[name] = step
            if self.logdir is not None:
                self._log(name, result, scalars, seconds, step)
            out[name] = result
        return out

    def _log(self, name, result, scalars, seconds, step):
        import io
        import os

        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.logdir, "analysis"))
        with self._writer.as_default():
            for key, value in scalars.items():
                tf.summary.scalar(f"{name}/{key}", value, step=step)
            tf.summary.scalar(f"{name}/seconds", seconds, step=step)
            for fig_name, fig in result.figures.items():
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png", dpi=self.dpi)
                image = tf.image.decode_png(buffer.getvalue(), channels=4)
                tf.summary.image(f"{name}/{fig_name}", image[None], step=step)
        self._writer.flush()


def _is_scalar(value):
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # not NaN


class DecompositionImages(keras.callbacks.Callback):
    """Logs a decomposition grid (inputs, S(x), each branch, translations) to TensorBoard.

    Every `every` training steps (and once before the first), the model's
    `BranchedGenerator` translates the same held-out `images` to
    `target_classes`; the figure of
    `branchzoo.analysis.decomposition.decomposition_figure` goes to
    ``<logdir>/images`` as the image summary ``decomposition``.

    Args:
        logdir: TensorBoard folder of the run.
        images: ``[rows, H, W, C]`` in [-1, 1].
        source_classes, target_classes: ``[rows]`` ints.
        every: steps between two grids.
        class_names: names of the classes, for the row labels.
        step: ``fn(model) -> int``, the steps taken so far, counting those
            before a resume (default: ``model.optimizer.iterations``; a
            model with several optimizers passes its task's
            ``optimizer_iterations``).
    """

    def __init__(self, logdir, images, source_classes, target_classes, every=200, class_names=None, step=None):
        super().__init__()
        self.logdir = logdir
        self.images = np.asarray(images, "float32")
        self.source_classes = np.asarray(source_classes, "int32")
        self.target_classes = np.asarray(target_classes, "int32")
        self.every = int(every)
        self.class_names = list(class_names or [])
        self._step_of = step or _optimizer_steps
        self._writer = None
        self._last = None

    def _step(self):
        return int(self._step_of(self.model) or 0)

    def _name(self, c):
        return self.class_names[c] if c < len(self.class_names) else str(c)

    def log(self, step):
        """Writes the grid of the current generator at `step`."""
        import tensorflow as tf

        from branchzoo.analysis.decomposition import decomposition_figure, figure_to_array
        from branchzoo.layers.branched_generator import find_generator

        out = find_generator(self.model)([self.images, self.target_classes], return_branches=True)
        branches = np.asarray(out["branches"])
        fig = decomposition_figure(
            self.images, np.asarray(out["image"]), branches, np.asarray(out["smooth"]),
            source_names=[self._name(int(c)) for c in self.source_classes],
            target_names=[self._name(int(c)) for c in self.target_classes],
            energies=np.mean(np.square(branches.astype("float64")), axis=(0, 2, 3, 4)),
            title=f"step {step}",
        )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.logdir, "images"))
        with self._writer.as_default():
            tf.summary.image("decomposition", figure_to_array(fig)[None], step=step)
        self._writer.flush()
        self._last = step

    def on_train_begin(self, logs=None):
        if self._step() == 0:
            self.log(0)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if self.every > 0 and step % self.every == 0 and step != self._last:
            self.log(step)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _optimizer_steps(model):
    optimizer = getattr(model, "optimizer", None)
    return int(optimizer.iterations.numpy()) if optimizer is not None else 0
