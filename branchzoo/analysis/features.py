"""Named intermediate outputs of a model: where probes, saturation and CKA look.

`feature_model` turns any functional model into one that returns a dict of
its intermediate tensors, descending into `MultiPathBlock`s so that every
pathway's conv/BN/ReLU output and every pathway sum has its own name, e.g.
``stage2_block1/path1_conv2`` or ``stage2_block1/sum`` (the block's output).
"""

import fnmatch

import keras

from branchzoo.layers import MultiPathBlock


def _first_input(layer):
    """The symbolic input tensor of `layer`'s first call in its functional model."""
    return layer._inbound_nodes[0].input_tensors[0]


class _BlockIntermediates(keras.layers.Layer):
    """Runs a block (sharing its weights) and returns its intermediate outputs.

    A wrapper rather than a second call of the block itself: Keras checks a
    functional graph against the output structure of a layer's FIRST call,
    which for a block is a single tensor.
    """

    def __init__(self, block, **kwargs):
        kwargs.setdefault("dtype", block.dtype_policy)  # the block's precision, not the global one
        super().__init__(name=f"{block.name}_intermediates", **kwargs)
        self.block = block

    def call(self, inputs, training=None):
        return self.block(inputs, training=training, return_intermediates=True)[1]


def feature_names(model):
    """Every name `feature_model(model)` can return, in forward order."""
    return list(_symbolic_features(model).keys())


def _symbolic_features(model):
    features = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, MultiPathBlock):
            inner = _BlockIntermediates(layer)(_first_input(layer))
            for key, tensor in inner.items():
                features[f"{layer.name}/{key}"] = tensor
        else:
            features[layer.name] = layer.output
    return features


def feature_model(model, patterns=("*",)):
    """A `keras.Model` mapping the inputs of `model` to a dict of named features.

    Args:
        model: a functional model (e.g. from `branchzoo.build`).
        patterns: fnmatch patterns selecting feature names, e.g.
            ``("*conv*", "*/sum")`` for every conv output and pathway sum.

    Returns:
        A `keras.Model` whose outputs are ``{name: tensor}``; run it with
        ``training=False`` (the default of `predict`) so BatchNormalization
        does not update.

    Example:

    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [1, 5]], blocks_per_stage=1, widths=(4, 4, 4, 4))
    >>> sorted(feature_model(m, ["stage1_block1/*conv*"]).output)
    ['stage1_block1/path1_conv1', 'stage1_block1/path2_conv1']
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    features = _symbolic_features(model)
    chosen = {
        name: tensor
        for name, tensor in features.items()
        if any(fnmatch.fnmatch(name, p) for p in patterns)
    }
    if not chosen:
        raise ValueError(
            f"No feature matches `patterns`={list(patterns)}. "
            f"Available features: {list(features)[:12]}{' ...' if len(features) > 12 else ''}"
        )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, chosen, name=f"{model.name}_features")
