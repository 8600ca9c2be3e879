"""ResNeXtModule: the C residual blocks of one multi-branch module, run as grouped convolutions.

After 002_6ffcaba31e771062.txt, Sec. 2.1 (Fig. 1) and the CIFAR ResNeXt of
Xie et al. (form C), with the layout of ../shared/docs/SPEC-NOTES.md,
section 1.
"""

import keras
from keras import layers, ops

from branchzoo._validation import check_int
from branchzoo.layers.grouped import GroupedConv2D


@keras.saving.register_keras_serializable(package="branchzoo")
class ResNeXtModule(keras.layers.Layer):
    """``C`` residual blocks side by side, each with its own input (GatedConnect's module).

    After 002_6ffcaba31e771062.txt, Sec. 2.1: block ``j`` computes ``y_j =
    s(x_j) + F_j(x_j)``, with ``F_j`` = 1x1 conv ``in -> w``, BN, ReLU, 3x3
    conv ``w -> w`` (the stride sits here), BN, ReLU, 1x1 conv ``w ->
    filters``, BN. The ``C`` blocks run together: every conv is one
    `GroupedConv2D` with ``groups = C`` over the blocks' channels side by
    side, so each block has its own BN after its last conv (channels ``j *
    filters ..``). The shortcut ``s`` is the identity, or, when the width or
    the resolution changes, ONE 1x1 projection (+ BN) shared by the ``C``
    blocks. With these, ResNeXt-29 {29,8,8} has 0.86M parameters as in the
    paper's Table 1 (../shared/docs/SPEC-NOTES.md, section 1).

    ResNeXt's ReLU after the residual sum is applied to the module's INPUT
    (``x_j = relu(inputs_j)``), i.e. after the aggregation of the previous
    module's block outputs by `GatedConnect`; with full connectivity a chain
    of modules then is post-activation ResNeXt whose residual branch is
    scaled by ``1 / C`` (mean aggregation).

    Args:
        cardinality: C, number of blocks.
        width: w, bottleneck width of every block.
        filters: output width of every block.
        strides: stride of the 3x3 convs and of the shortcut (1 or 2).
        shared_input: all blocks read the same input ``[..., in]`` (the
            first module, and every module of a Fixed-Full network); else the
            input holds one tensor per block, ``[..., C * in]``.
        aggregate: return the mean of the ``C`` block outputs ``[..., filters]``
            (the last module, and Fixed-Full modules); else the block outputs
            side by side, ``[..., C * filters]``, for the next `GatedConnect`.
        kernel_initializer: conv initializer (default ``"he_normal"``).
        kernel_regularizer: optional conv kernel regularizer.
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's
            defaults: momentum 0.1 there is 0.9 here; epsilon 1e-5).

    Returns:
        ``[batch, H / strides, W / strides, filters]`` with ``aggregate``,
        else ``[batch, H / strides, W / strides, C * filters]``.

    Example:

    >>> import numpy as np
    >>> module = ResNeXtModule(cardinality=4, width=2, filters=16, strides=2)
    >>> tuple(module(np.zeros((1, 8, 8, 4 * 8), "float32")).shape)
    (1, 4, 4, 64)
    """

    def __init__(
        self,
        cardinality,
        width,
        filters,
        strides=1,
        shared_input=False,
        aggregate=False,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.cardinality = check_int(cardinality, "cardinality", minimum=1)
        self.width = check_int(width, "width", minimum=1)
        self.filters = check_int(filters, "filters", minimum=1)
        self.strides = check_int(strides, "strides", minimum=1)
        self.shared_input = bool(shared_input)
        self.aggregate = bool(aggregate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)

    def _conv(self, filters, kernel_size, groups, strides, name):
        return GroupedConv2D(
            filters, kernel_size, strides=strides, padding="same", groups=groups, use_bias=False,
            kernel_initializer=self.kernel_initializer, kernel_regularizer=self.kernel_regularizer,
            name=name,
        )

    def _bn(self, name):
        return layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)

    def build(self, input_shape):
        C, w = self.cardinality, self.width
        channels = input_shape[-1]
        if channels is None or (not self.shared_input and channels % C):
            raise ValueError(
                "The last axis of the inputs must hold `cardinality` "
                f"({C}) blocks of equal width (or one shared input with shared_input=True). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.in_channels = channels if self.shared_input else channels // C
        shape = tuple(input_shape)
        self.conv1 = self._conv(C * w, 1, 1 if self.shared_input else C, 1, "conv1")
        self.bn1 = self._bn("bn1")
        self.conv2 = self._conv(C * w, 3, C, self.strides, "conv2")
        self.bn2 = self._bn("bn2")
        self.conv3 = self._conv(C * self.filters, 1, C, 1, "conv3")
        self.bn3 = self._bn("bn3")
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
        self.projects = self.strides != 1 or self.in_channels != self.filters
        if self.projects:
            # one 1x1 projection shared by the C blocks: a [in, filters] kernel applied per block
            self.shortcut_kernel = self.add_weight(
                name="shortcut_kernel", shape=(self.in_channels, self.filters),
                initializer=_pointwise_initializer(self.kernel_initializer),
                regularizer=self.kernel_regularizer,
            )
            self.shortcut_bn = self._bn("shortcut_bn")
            blocks = () if self.shared_input else (C,)
            self.shortcut_bn.build(tuple(shape[:-1]) + blocks + (self.filters,))
        else:
            self.shortcut_kernel = None
            self.shortcut_bn = None

    def _shortcut(self, x, training):
        """The shortcut per block: [..., in] (shared) or [..., C, in] -> same rank with `filters`."""
        if not self.projects:
            return x
        if self.strides != 1:
            # a strided 1x1 conv ("same") reads pixels 0, s, 2s, ...
            x = x[:, :: self.strides, :: self.strides]
        x = ops.matmul(x, ops.cast(self.shortcut_kernel, x.dtype))
        return self.shortcut_bn(x, training=training)

    def call(self, inputs, training=None):
        C = self.cardinality
        x = ops.relu(inputs)
        h = ops.relu(self.bn1(self.conv1(x), training=training))
        h = ops.relu(self.bn2(self.conv2(h), training=training))
        h = self.bn3(self.conv3(h), training=training)
        shape = ops.shape(h)
        residual = ops.reshape(h, tuple(shape[:-1]) + (C, self.filters))
        if self.shared_input:
            shortcut = self._shortcut(x, training)
            if self.aggregate:
                return ops.mean(residual, axis=-2) + shortcut
            out = residual + ops.expand_dims(shortcut, -2)
        else:
            xs = ops.reshape(x, tuple(ops.shape(x)[:-1]) + (C, self.in_channels))
            out = residual + self._shortcut(xs, training)
            if self.aggregate:
                return ops.mean(out, axis=-2)
        return ops.reshape(out, tuple(shape[:-1]) + (C * self.filters,))

    def compute_output_shape(self, input_shape):
        def down(n):
            return None if n is None else -(-n // self.strides)

        spatial = tuple(down(n) for n in input_shape[1:-1])
        channels = self.filters if self.aggregate else self.cardinality * self.filters
        return (input_shape[0],) + spatial + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cardinality": self.cardinality,
                "width": self.width,
                "filters": self.filters,
                "strides": self.strides,
                "shared_input": self.shared_input,
                "aggregate": self.aggregate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
                if self.kernel_regularizer
                else None,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
            }
        )
        return config


def _pointwise_initializer(initializer):
    """Initialises an ``[in, out]`` kernel as the 1x1 conv kernel ``[1, 1, in, out]`` it is."""

    def init(shape, dtype=None):
        return ops.reshape(initializer((1, 1) + tuple(shape), dtype=dtype), shape)

    return init
