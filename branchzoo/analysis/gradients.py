"""Gradient flow: how large the gradient each layer receives is, by pathway.

After 003_4bdb2e82324dbf00.txt, Sec. 4.1.1 and Fig. 6b: "the average over the
absolute mean of all gradients" per layer, which the paper reads as a partial
vanishing gradient in the longer, non-dominant pathway. Here: for every conv
and Dense kernel, the mean absolute entry of dL/dW, averaged over batches.

The forward pass runs in training mode, as training sees it (BatchNormalization
on batch statistics, dropout on), through ``model.stateless_call``: nothing in
the model changes, BatchNormalization's moving statistics included.

TensorFlow backend only (``tf.GradientTape``); other backends raise.
"""

import weakref

import numpy as np

from branchzoo._validation import check_int
from branchzoo.analysis import extraction
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
    """A compiled ``(values, non_trainable, x, y) -> [mean |dL/dW_k| for k in wanted]``.

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
        return [tf.reduce_mean(tf.abs(g)) if g is not None else tf.constant(float("nan")) for g in grads]

    _STEPS.setdefault(model, {})[key] = (loss_fn, step)
    return step


def gradient_flow(model, data, layers=None, max_batches=8, batch_size=64, loss=None, training=True, seed=0):
    """Mean absolute kernel gradient of every conv and Dense layer (Fig. 6b).

    After 003_4bdb2e82324dbf00.txt, Sec. 4.1.1.

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
        ``(infos, {name: mean |dL/dW|})``.

    Example:

    >>> import numpy as np
    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [2, 3]], blocks_per_stage=1, widths=(4, 4, 4, 4), input_shape=(8, 8, 3))
    >>> x = np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype("float32")
    >>> infos, g = gradient_flow(m, (x, np.arange(8) % 10), max_batches=1, batch_size=8)
    >>> all(v > 0 for v in g.values())
    True
    """
    import keras

    if keras.config.backend() != "tensorflow":
        raise ValueError(
            "gradient_flow needs the TensorFlow backend (tf.GradientTape). "
            f"Received: KERAS_BACKEND={keras.config.backend()!r}"
        )
    import tensorflow as tf

    max_batches = check_int(max_batches, "max_batches", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    infos = extraction.select_layers(model, layers, kinds=("conv", "dense"), include_output_layer=True)
    kernels = _kernels(model, infos)
    infos = [i for i in infos if i.name in kernels]
    if not infos:
        raise ValueError(f"Model '{model.name}' has no trainable conv or Dense kernels to take gradients of.")
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


@register_analysis("gradients", "Mean absolute kernel gradient per layer and pathway (003, Fig. 6b)")
def gradients_analysis(model, data, layers=None, max_batches=8, batch_size=64, **kwargs):
    """Gradient flow per layer and pathway with its figure; reads ``data.train`` (else ``data.test``)."""
    from branchzoo.analysis import plots
    from branchzoo.analysis.probes import pathway_means

    source = data.train if data.train is not None else data.test
    if source is None:
        raise ValueError("The 'gradients' analysis needs `data.train` (or `data.test`). Received: neither")
    seed = kwargs.pop("seed", data.seed)
    infos, values = gradient_flow(model, source, layers, max_batches, batch_size, seed=seed, **kwargs)
    numbers = {
        **pathway_means(infos, values, "mean_abs_gradient"),
        "split": "train" if data.train is not None else "test",
        "layers": [i.name for i in infos],
        "pathway": {i.name: i.pathway for i in infos},
        "position": extraction.layer_positions(infos),
        "mean_abs_gradient": values,
    }
    figure = plots.plot_gradient_flow(values, infos, extraction.pathway_names(model))
    return AnalysisResult(numbers=numbers, figures={"flow": figure})


gradients_analysis.default_every = 1
