"""ResNeXtModule: the C residual blocks of one multi-branch module, run as grouped convolutions.

After Ahmed & Torresani (2017), Sec. 2.1 (Fig. 1) and the CIFAR ResNeXt of
Xie et al. (form C), in the layout of its reference code (docs/papers.md).
"""

import keras
from keras import layers, ops

from branchzoo._validation import check_int
from branchzoo.layers.grouped import GroupedConv2D
from branchzoo.precision import upcast_dtype

# layouts of the BN after the blocks' last 1x1 conv (ResNeXtModule's `output_bn`)
OUTPUT_BN = ("per_block", "shared")


@keras.saving.register_keras_serializable(package="branchzoo")
class ResNeXtModule(keras.layers.Layer):
    """``C`` residual blocks side by side, each with its own input (GatedConnect's module).

    After Ahmed & Torresani (2017), Sec. 2.1: block ``j`` computes ``y_j =
    s(x_j) + F_j(x_j)``, with ``F_j`` = 1x1 conv ``in -> w``, BN, ReLU, 3x3
    conv ``w -> w`` (the stride sits here), BN, ReLU, 1x1 conv ``w ->
    filters``, BN. The ``C`` blocks run together: every conv is one
    `GroupedConv2D` with ``groups = C`` over the blocks' channels side by
    side. The shortcut ``s`` is the identity, or, when the width or the
    resolution changes, ONE 1x1 projection (+ BN) shared by the ``C`` blocks.

    The BN after the last 1x1 conv (``bn3``) has two layouts (``output_bn``):

    - ``"per_block"``: each block has its own BN over its ``filters``
      outputs (``bn3`` has ``C * filters`` channels, block ``j`` at ``j *
      filters ..``). With it, ResNeXt-29 {29,8,8} (block outputs 64, 128,
      256) has the 0.86M parameters of the paper's Table 1.
    - ``"shared"``: one BN over ``filters`` channels (Xie et al.'s form C:
      ResNeXt-29 8x64d has 34.4M parameters). With ``aggregate`` it
      normalises the mean of the blocks' last convs (form C's one dense
      1x1 conv, then BN; normalising the mean rather than the sum changes
      a BN's output only through its epsilon); without, it normalises
      every block's output with one gamma and beta per channel and
      statistics POOLED over the blocks (batch, space and blocks are all
      samples, as for the shared projection's BN), so its moving
      statistics serve any subset of blocks (pruning).

    Computation: ``bn3`` (and the shortcut's BN) is applied through its
    1x1 conv, ``conv(h, k * scale) + shift``, with the batch statistics of
    the conv output computed from the mean and covariance of its
    (narrower) input (`linear_batchnorm`, in float32 under a mixed dtype
    policy, as Keras' BN computes): the same function and moving
    statistics as the BN layers, without a separate pass over the ``C *
    filters`` block outputs; with ``aggregate`` the mean over blocks is one
    dense 1x1 conv ``C * w -> filters`` (form C), and a shared ``bn3`` runs
    as a layer on its ``filters`` outputs. Under synchronized BN
    (``bn3.synchronized``, MirroredStrategy) the BN layers run as written
    (`_call_layers`).

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
        output_bn: layout of the BN after the blocks' last 1x1 conv:
            ``"per_block"`` (default: ``C * filters`` channels) or
            ``"shared"`` (``filters`` channels, form C; see above).
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
        output_bn="per_block",
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
        if output_bn not in OUTPUT_BN:
            raise ValueError(f"`output_bn` must be one of {OUTPUT_BN}. Received: output_bn={output_bn!r}")
        self.output_bn = output_bn
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)

    def _conv(self, filters, kernel_size, groups, strides, name):
        return GroupedConv2D(
            filters, kernel_size, strides=strides, padding="same", groups=groups, use_bias=False,
            kernel_initializer=self.kernel_initializer, kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy, name=name,
        )

    def _bn(self, name):
        return layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                         dtype=self.dtype_policy, name=name)

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
            if bn is self.bn3 and self.output_bn == "shared":
                # one BN over `filters`: on the blocks' mean, or on [..., C, filters] (pooled)
                blocks = () if self.aggregate else (C,)
                bn.build(tuple(shape[:-1]) + blocks + (self.filters,))
            else:
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

    def call(self, inputs, training=None):
        x = ops.relu(inputs)
        h = ops.relu(self.bn1(self.conv1(x), training=training))
        h = ops.relu(self.bn2(self.conv2(h), training=training))
        if getattr(self.bn3, "synchronized", False) or (
            self.projects and getattr(self.shortcut_bn, "synchronized", False)
        ):
            return self._call_layers(x, h, training)
        return self._call_folded(x, h, training)

    def _call_folded(self, x, h, training):
        """BN3 and the shortcut BN folded into their 1x1 convs, statistics from the conv inputs.

        The same function as `_call_layers` (BN in training mode normalises
        with the batch moments of the conv OUTPUT, which for a 1x1 conv follow
        from the mean and covariance of its input), without ever writing the
        C block outputs before normalising them; with ``aggregate`` the mean
        over blocks is folded into the conv too, so a Fixed-Full module is
        as cheap as ResNeXt's form C (one dense 1x1 conv ``C * w -> filters``).
        A shared ``bn3`` takes the moments pooled over the blocks
        (``pool_groups``), or, with ``aggregate``, runs as a layer on the
        dense conv's ``filters`` outputs (form C exactly; its moments from
        the ``C * w`` inputs would cost more than the conv).
        """
        C, w, f = self.cardinality, self.width, self.filters
        kernel = ops.transpose(ops.reshape(self.conv3.kernel, (w, C, f)), (1, 0, 2))  # [C, w, f]
        shared_bn = self.output_bn == "shared"
        if not (shared_bn and self.aggregate):
            scale, shift = linear_batchnorm(
                ops.reshape(h, (-1, C * w)), kernel, self.bn3, training, pool_groups=shared_bn
            )
        if self.projects:
            xs = x[:, :: self.strides, :: self.strides] if self.strides != 1 else x
            sc_kernel = ops.cast(self.shortcut_kernel, x.dtype)
            sc_scale, sc_shift = linear_batchnorm(
                ops.reshape(xs, (-1, self.in_channels)), sc_kernel[None], self.shortcut_bn, training
            )
            sc_kernel, sc_shift = sc_kernel * sc_scale, sc_shift[0]
        if self.aggregate:
            if shared_bn:
                # form C: the mean over blocks of conv3_j is one dense 1x1 conv C*w -> f, then BN
                dense = ops.reshape(kernel, (1, 1, C * w, f)) * (1.0 / C)
                residual = self.bn3(ops.conv(h, dense, padding="same"), training=training)
            else:
                # mean over blocks of (conv3_j * scale_j + shift_j): one dense 1x1 conv C*w -> f
                dense = ops.reshape(kernel * ops.expand_dims(scale, 1), (1, 1, C * w, f)) * (1.0 / C)
                residual = ops.conv(h, dense, padding="same") + ops.mean(shift, axis=0)
            if not self.shared_input:
                x = ops.mean(ops.reshape(x, tuple(ops.shape(x)[:-1]) + (C, self.in_channels)), axis=-2)
                if self.projects:
                    xs = x[:, :: self.strides, :: self.strides] if self.strides != 1 else x
            shortcut = _pointwise(xs, sc_kernel) + sc_shift if self.projects else x
            return residual + shortcut
        residual = self.conv3.convolution_op(h, self.conv3.kernel * ops.reshape(scale, (C * f,)))
        residual = residual + ops.reshape(shift, (C * f,))
        if not self.projects and not self.shared_input:
            return residual + x  # identity per block: same channel layout
        shape = ops.shape(residual)
        blocks = ops.reshape(residual, tuple(shape[:-1]) + (C, f))
        if self.shared_input:
            shortcut = _pointwise(xs, sc_kernel) + sc_shift if self.projects else x
            out = blocks + ops.expand_dims(shortcut, -2)
        else:
            xs = ops.reshape(xs, tuple(ops.shape(xs)[:-1]) + (C, self.in_channels))
            out = blocks + (_pointwise(xs, sc_kernel) + sc_shift)
        return ops.reshape(out, tuple(shape[:-1]) + (C * f,))

    def _call_layers(self, x, h, training):
        """The module as written: BN layers on the conv outputs (used with synchronized BN)."""
        C = self.cardinality
        h = self.conv3(h)
        shape = ops.shape(h)
        if self.output_bn == "per_block":
            h = self.bn3(h, training=training)
        residual = ops.reshape(h, tuple(shape[:-1]) + (C, self.filters))
        if self.output_bn == "shared":
            if self.aggregate:
                # form C: BN on the aggregated transform, then the (mean) shortcut
                residual = self.bn3(ops.mean(residual, axis=-2), training=training)
                if self.shared_input:
                    return residual + self._shortcut(x, training)
                xs = ops.reshape(x, tuple(ops.shape(x)[:-1]) + (C, self.in_channels))
                return residual + ops.mean(self._shortcut(xs, training), axis=-2)
            residual = self.bn3(residual, training=training)  # statistics pooled over the blocks
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

    def _shortcut(self, x, training):
        """The shortcut per block: [..., in] (shared) or [..., C, in] -> same rank with `filters`."""
        if not self.projects:
            return x
        if self.strides != 1:
            # a strided 1x1 conv ("same") reads pixels 0, s, 2s, ...
            x = x[:, :: self.strides, :: self.strides]
        x = ops.matmul(x, ops.cast(self.shortcut_kernel, x.dtype))
        return self.shortcut_bn(x, training=training)

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
                "output_bn": self.output_bn,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
            }
        )
        return config


def _pointwise(x, kernel):
    """``x @ kernel`` over the last axis as ONE 2-D matmul (a broadcast batched one is slower)."""
    shape = ops.shape(x)
    out = ops.matmul(ops.reshape(x, (-1, shape[-1])), kernel)
    return ops.reshape(out, tuple(shape[:-1]) + (kernel.shape[-1],))


def _pointwise_initializer(initializer):
    """Initialises an ``[in, out]`` kernel as the 1x1 conv kernel ``[1, 1, in, out]`` it is."""

    def init(shape, dtype=None):
        return ops.reshape(initializer((1, 1) + tuple(shape), dtype=dtype), shape)

    return init


# Up to this many input features the covariance is one GEMM over all groups (its off-diagonal
# blocks are wasted work, but a plain matmul beats a batched one here); above, per group.
_FULL_GRAM_MAX = 512


def linear_batchnorm(x, kernel, bn, training, pool_groups=False):
    """Scale and shift that make ``x @ kernel`` batch-normalised by `bn`, from the moments of `x`.

    For a linear map the batch mean of the output is ``mean(x) @ kernel`` and
    its variance ``k^T Cov(x) k`` per output channel, so BatchNormalization
    in training mode can be applied as ``(x @ kernel) * scale + shift``
    without a pass over the (wider) output. In training (and when `bn` is
    trainable) `bn`'s moving statistics are updated as Keras' layer does;
    otherwise they are used.

    Args:
        x: ``[N, G * d]``: N samples of G independent groups of d features.
        kernel: ``[G, d, o]``: one ``d -> o`` map per group.
        bn: a built ``keras.layers.BatchNormalization`` over ``G * o``
            channels, or over ``o`` with `pool_groups`.
        training: whether to use (and update) batch statistics.
        pool_groups: one BN shared by the groups, as `bn` applied to the
            outputs laid out ``[N, G, o]``: the groups' outputs are pooled
            as ``N * G`` samples (mean of the group means; variance = mean
            of the group variances + variance of the group means).

    The moments, scale and shift are computed in float32 when `x` is 16-bit
    (as Keras' BatchNormalization does under a mixed policy) and returned
    in `x`'s dtype.

    Returns:
        ``(scale, shift)``, each ``[G, o]`` (with `pool_groups`, the same
        ``o`` values in every row).
    """
    groups, features, outputs = kernel.shape
    out_dtype = x.dtype
    x = ops.cast(x, upcast_dtype(out_dtype))
    kernel = ops.cast(kernel, x.dtype)
    channels = (1 if pool_groups else groups, outputs)
    gamma = ops.reshape(ops.cast(bn.gamma, x.dtype), channels)
    beta = ops.reshape(ops.cast(bn.beta, x.dtype), channels)
    if training and bn.trainable:
        n = ops.cast(ops.shape(x)[0], x.dtype)
        mean_x = ops.mean(x, axis=0)
        centred = x - mean_x
        if groups == 1 or groups * features <= _FULL_GRAM_MAX:
            gram = ops.matmul(ops.transpose(centred), centred) / n  # 2.5x faster than the einsum on TF
            gram = ops.reshape(gram, (groups, features, groups, features))
            cov = ops.einsum("gigj->gij", gram) if groups > 1 else ops.reshape(gram, (1, features, features))
        else:
            blocks = ops.reshape(centred, (-1, groups, features))
            cov = ops.einsum("ngi,ngj->gij", blocks, blocks) / n
        mean = ops.einsum("gd,gdo->go", ops.reshape(mean_x, (groups, features)), kernel)
        var = ops.maximum(ops.sum(kernel * ops.matmul(cov, kernel), axis=1), 0.0)
        if pool_groups:
            pooled = ops.mean(mean, axis=0, keepdims=True)
            var = ops.mean(var + ops.square(mean - pooled), axis=0, keepdims=True)
            mean = pooled
        momentum = bn.momentum
        bn.moving_mean.assign(
            bn.moving_mean * momentum + ops.cast(ops.reshape(mean, (-1,)), bn.moving_mean.dtype) * (1.0 - momentum)
        )
        bn.moving_variance.assign(
            bn.moving_variance * momentum
            + ops.cast(ops.reshape(var, (-1,)), bn.moving_variance.dtype) * (1.0 - momentum)
        )
    else:
        mean = ops.reshape(ops.cast(bn.moving_mean, x.dtype), channels)
        var = ops.reshape(ops.cast(bn.moving_variance, x.dtype), channels)
    scale = gamma * ops.rsqrt(var + bn.epsilon)
    shift = beta - mean * scale
    scale, shift = ops.cast(scale, out_dtype), ops.cast(shift, out_dtype)
    if pool_groups:
        return ops.broadcast_to(scale, (groups, outputs)), ops.broadcast_to(shift, (groups, outputs))
    return scale, shift
