"""Gradient flow: how large the gradient each layer receives is, by pathway.

After Richter et al. (2022), Sec. 4.1.1 and Fig. 6b: the paper
accumulates the gradients during training and reports "the average over the
absolute mean of all gradients" per layer, i.e. ``|mean(dL/dW)|`` of each
conv and Dense kernel at every training step, averaged over the steps, and
reads a partial vanishing gradient in the longer, non-dominant pathway from
it.

- `GradientFlowRecorder` is that quantity: attached to the optimizer of a
  model in training, it adds each step's ``|mean(g)|`` per kernel (the loss
  gradient, before weight decay or momentum) to float32 accumulators.
  ``train.py --analysis gradients`` records it through the analysis
  callback (see ``gradients_analysis.recorder``).
- `gradient_flow` is the same statistic at fixed weights (a trained model
  without its training history): ``|mean(g)|`` per batch, averaged over
  batches. Its reports say which of the two they show.

The forward pass of `gradient_flow` runs in training mode, as training sees
it (BatchNormalization on batch statistics, dropout on), through
``model.stateless_call``: nothing in the model changes, BatchNormalization's
moving statistics included.

TensorFlow backend only (``tf.GradientTape``, ``tf.Variable``); other
backends raise.
"""

import weakref

import numpy as np

from branchzoo._validation import check_int
from branchzoo.analysis import extraction, plots
from branchzoo.analysis.registry import AnalysisResult, register_analysis


def _kernels(model, infos):
    """``{name: kernel variable}`` for each conv/Dense output in `infos`."""
    kernels = {}
    for info in infos:
        if info.block is not None:
            block = model.get_layer(info.block)
            sub = info.name.split("/", 1)[1]
            layer = next(conv for path in block.paths for conv, _, _ in path if conv.name == sub)
        else:
            layer = model.get_layer(info.name)
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is not None and kernel.trainable:
            kernels[info.name] = kernel
    return kernels


_DEFAULT_LOSS = []


def _default_loss(model):
    """The model's compiled loss when it is a Keras loss object, else cross-entropy from logits."""
    import keras

    loss = getattr(model, "loss", None)
    if isinstance(loss, keras.losses.Loss) or (callable(loss) and not isinstance(loss, str)):
        return loss
    if not _DEFAULT_LOSS:
        _DEFAULT_LOSS.append(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return _DEFAULT_LOSS[0]


_STEPS = weakref.WeakKeyDictionary()


def _gradient_step(model, wanted, loss_fn, training):
    """A compiled ``(values, non_trainable, x, y) -> [|mean(dL/dW_k)| for k in wanted]``.

    Cached per model, kernels, mode and loss object, so a callback running
    every epoch traces it once.
    """
    import tensorflow as tf

    key = (wanted, training)
    cached = _STEPS.get(model, {}).get(key)
    if cached is not None and cached[0] is loss_fn:
        return cached[1]

    @tf.function(reduce_retracing=True)
    def step(values, non_trainable, x, y):
        with tf.GradientTape() as tape:
            tape.watch(values)
            y_pred, _ = model.stateless_call(values, non_trainable, x, training=training)
            value = loss_fn(y, y_pred)
        grads = tape.gradient(value, [values[k] for k in wanted])
        return [tf.abs(tf.reduce_mean(g)) if g is not None else tf.constant(float("nan")) for g in grads]

    _STEPS.setdefault(model, {})[key] = (loss_fn, step)
    return step


def _check_backend(what):
    import keras

    if keras.config.backend() != "tensorflow":
        raise ValueError(
            f"{what} needs the TensorFlow backend. Received: KERAS_BACKEND={keras.config.backend()!r}"
        )


def _analysed_kernels(model, layers):
    """The LayerInfos of every conv and Dense output with a trainable kernel, and the kernels."""
    infos = extraction.select_layers(model, layers, kinds=("conv", "dense"), include_output_layer=True)
    kernels = _kernels(model, infos)
    infos = [i for i in infos if i.name in kernels]
    if not infos:
        raise ValueError(f"Model '{model.name}' has no trainable conv or Dense kernels to take gradients of.")
    return infos, kernels


def gradient_flow(model, data, layers=None, max_batches=8, batch_size=64, loss=None, training=True, seed=0):
    """``|mean(dL/dW)|`` of every conv and Dense kernel at the model's current weights.

    The statistic of Richter et al. (2022), Sec. 4.1.1 (Fig. 6b) at one
    point of training, averaged over batches; the paper's figure averages it
    over the training steps instead (`GradientFlowRecorder`).

    Args:
        model: a functional `keras.Model` (any registered model).
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches (the
            training split: the gradients training would see).
        layers: None (every conv and Dense layer, the classifier included)
            or names / fnmatch patterns.
        max_batches: batches of `batch_size` examples drawn uniformly (seeded)
            from `data`; the result is their mean.
        batch_size: examples per batch.
        loss: ``loss(y_true, y_pred)``; default: the model's compiled loss
            when it is a Keras loss object, else sparse categorical
            cross-entropy from logits.
        training: forward pass in training mode (BatchNormalization on batch
            statistics), without changing any variable.
        seed: for the subset.

    Returns:
        ``(infos, {name: |mean(dL/dW)| averaged over batches})``.

    Example:

    >>> import numpy as np
    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [2, 3]], blocks_per_stage=1, widths=(4, 4, 4, 4), input_shape=(8, 8, 3))
    >>> x = np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype("float32")
    >>> infos, g = gradient_flow(m, (x, np.arange(8) % 10), max_batches=1, batch_size=8)
    >>> all(v >= 0 for v in g.values())
    True
    """
    _check_backend("gradient_flow")
    import tensorflow as tf

    max_batches = check_int(max_batches, "max_batches", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    infos, kernels = _analysed_kernels(model, layers)
    trainable = model.trainable_variables
    index = {id(v): k for k, v in enumerate(trainable)}
    wanted = tuple(index[id(kernels[i.name])] for i in infos)
    step = _gradient_step(model, wanted, loss or _default_loss(model), bool(training))
    non_trainable = [v.value for v in model.non_trainable_variables]
    x, y = extraction.as_arrays(data, max_batches * batch_size, seed)
    sums = np.zeros(len(infos))
    batches = 0
    for bx, by in extraction.iterate_batches((x, y), batch_size):
        values = [tf.convert_to_tensor(v.value) for v in trainable]
        sums += [float(g) for g in step(values, non_trainable, tf.constant(bx), tf.constant(by))]
        batches += 1
    return infos, {info.name: float(s / batches) for info, s in zip(infos, sums)}


class GradientFlowRecorder:
    """Accumulates ``|mean(dL/dW)|`` of every conv and Dense kernel over training steps (Fig. 6b).

    `attach` wraps the optimizer's ``apply`` (the inner optimizer under loss
    scaling), so every step of ``model.fit`` adds, inside the compiled step,
    each watched kernel's ``|mean(g)|`` of the loss gradient to a float32
    accumulator. `result` is the average over the steps recorded. Under a
    multi-replica strategy each replica adds the statistic of its own share
    of the batch and the accumulators average the replicas.

    Args:
        model: a functional `keras.Model`.
        layers: None (every conv and Dense layer, the classifier included)
            or names / fnmatch patterns.

    Example:

    >>> import numpy as np, keras
    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [2, 3]], blocks_per_stage=1, widths=(4, 4, 4, 4), input_shape=(8, 8, 3))
    >>> m.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> recorder = GradientFlowRecorder(m)
    >>> recorder.attach(m.optimizer)
    >>> x = np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype("float32")
    >>> _ = m.fit(x, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    >>> recorder.steps
    2
    """

    def __init__(self, model, layers=None):
        _check_backend("GradientFlowRecorder")
        import tensorflow as tf

        self.infos, kernels = _analysed_kernels(model, layers)
        self._index = {kernels[info.name].path: k for k, info in enumerate(self.infos)}
        with model.distribute_strategy.scope():
            def variable(shape):
                return tf.Variable(tf.zeros(shape), trainable=False,
                                   aggregation=tf.VariableAggregation.MEAN)

            self._sums = variable((len(self.infos),))
            self._steps = variable(())
        self._attached = None

    def attach(self, optimizer):
        """Records every step `optimizer` applies from now on (once per optimizer)."""
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        if inner is self._attached:
            return
        original = inner.apply

        def apply(grads, trainable_variables=None):
            variables = trainable_variables if trainable_variables is not None else inner._trainable_variables
            self._record(grads, variables)
            return original(grads, trainable_variables)

        inner.apply = apply
        self._attached = inner

    def _record(self, grads, variables):
        import tensorflow as tf

        updates = [tf.zeros(())] * len(self.infos)
        for g, v in zip(grads, variables):
            k = self._index.get(v.path)
            if k is not None and g is not None:
                updates[k] = tf.abs(tf.reduce_mean(tf.cast(g, tf.float32)))
        self._sums.assign_add(tf.stack(updates))
        self._steps.assign_add(1.0)

    @property
    def steps(self):
        """Training steps recorded."""
        return int(round(float(self._steps.numpy())))

    def result(self):
        """``{name: |mean(dL/dW)| averaged over the recorded steps}`` (None before any step)."""
        if not self.steps:
            return None
        sums = self._sums.numpy() / self.steps
        return {info.name: float(v) for info, v in zip(self.infos, sums)}


@register_analysis("gradients", "|mean(dL/dW)| per layer and pathway, accumulated over training (003, Fig. 6b)")
def gradients_analysis(model, data, layers=None, max_batches=8, batch_size=64, recorded=None, **kwargs):
    """Gradient flow per layer and pathway with its figure (Fig. 6b).

    With `recorded` (a `GradientFlowRecorder` that watched training: the
    analysis callback passes it, see ``gradients_analysis.recorder``), the
    paper's quantity: ``|mean(g)|`` averaged over the training steps so far.
    Without, or before any step, the same statistic at the current weights
    (`gradient_flow`) over `max_batches` batches of ``data.train`` (else
    ``data.test``); ``source`` in the numbers says which.
    """
    values = recorded.result() if recorded is not None else None
    if values is not None:
        infos = recorded.infos
        source = f"accumulated over {recorded.steps} training steps"
        split = "train"
    else:
        source_data = data.train if data.train is not None else data.test
        if source_data is None:
            raise ValueError("The 'gradients' analysis needs `data.train` (or `data.test`). Received: neither")
        seed = kwargs.pop("seed", data.seed)
        infos, values = gradient_flow(model, source_data, layers, max_batches, batch_size, seed=seed, **kwargs)
        split = "train" if data.train is not None else "test"
        source = f"current weights, {max_batches} {split} batches of {batch_size} (not accumulated over training)"
    numbers = {
        **extraction.pathway_means(infos, values, "abs_mean_gradient"),
        "source": source,
        "split": split,
        "layers": [i.name for i in infos],
        "pathway": {i.name: i.pathway for i in infos},
        "position": extraction.layer_positions(infos),
        "abs_mean_gradient": values,
    }
    figure = plots.plot_gradient_flow(values, infos, extraction.pathway_names(model), subtitle=source)
    return AnalysisResult(numbers=numbers, figures={"flow": figure})


gradients_analysis.default_every = 1
# What the analysis callback attaches to the model's optimizer at the start of training
# and passes back as `recorded`.
gradients_analysis.recorder = GradientFlowRecorder
