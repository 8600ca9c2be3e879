"""MultiPathBlock: parallel conv pathways whose outputs are summed (MPNet).

After Richter et al. (2022), Sec. 4 and Fig. 4, with the layout of its
reference code (docs/papers.md).
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_sequence


def normalize_pathways(pathways):
    """Checks `pathways` and returns it as a list of ``[num_layers, kernel_size]``."""
    pathways = check_sequence(pathways, "pathways",
                              "be a non-empty list of [num_layers, kernel_size] pairs, e.g. [[2, 3], [2, 7]]")
    result = []
    for i, p in enumerate(pathways):
        if not hasattr(p, "__len__") or len(p) != 2:
            raise ValueError(
                f"Each pathway must be a [num_layers, kernel_size] pair. "
                f"Received: pathways[{i}]={p!r}"
            )
        n = check_int(p[0], f"pathways[{i}][0] (num_layers)", minimum=1)
        k = check_int(p[1], f"pathways[{i}][1] (kernel_size)", minimum=1)
        result.append([n, k])
    return result


@keras.saving.register_keras_serializable(package="branchzoo")
class MultiPathBlock(keras.layers.Layer):
    """Parallel pathways of (conv, BN, ReLU) layers whose outputs are summed.

    Pathway ``p`` is ``n_p`` layers of ``Conv2D(filters, s_p, padding="same",
    use_bias=False)``, ``BatchNormalization`` and ``ReLU``; the block returns
    the element-wise sum of the pathway outputs (no skip connection). With
    ``strides=2`` the LAST layer of every pathway downsamples, as the
    reference code of Richter et al. (2022) does in the last block of each
    stage.

    Every sublayer is named ``path{p}_{conv,bn,relu}{l}`` (1-based), so
    analysis code can find each pathway's layers; ``call(...,
    return_intermediates=True)`` also returns their outputs and the ``"sum"``.
    The sublayers take the block's dtype policy (also when it is loaded
    from a file under another global policy).

    Args:
        filters: output channels of every conv in the block.
        pathways: list of ``[num_layers, kernel_size]``, one per pathway,
            e.g. ``[[2, 3], [2, 7]]`` for the block of MPNetK(2:3x3, 2:7x7).
        strides: 1 or 2, applied by the last layer of each pathway.
        kernel_initializer: conv kernel initializer (default ``"he_normal"``,
            the usual choice for ReLU networks).
        kernel_regularizer: optional conv kernel regularizer.
        bn_momentum: BatchNormalization momentum (0.9 = PyTorch's 0.1).
        bn_epsilon: BatchNormalization epsilon (PyTorch's 1e-5).

    Returns:
        ``(batch, H/strides, W/strides, filters)``; with
        ``return_intermediates=True`` a pair ``(output, dict)``.

    Example:

    >>> import numpy as np
    >>> block = MultiPathBlock(8, [[2, 3], [1, 7]], strides=2)
    >>> tuple(block(np.zeros((1, 16, 16, 3), "float32")).shape)
    (1, 8, 8, 8)
    """

    def __init__(
        self,
        filters,
        pathways,
        strides=1,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int(filters, "filters", minimum=1)
        self.pathways = normalize_pathways(pathways)
        self.strides = check_int(strides, "strides", minimum=1)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)

    def build(self, input_shape):
        self.paths = []
        for p, (num_layers, kernel_size) in enumerate(self.pathways, start=1):
            path = []
            shape = tuple(input_shape)
            for l in range(1, num_layers + 1):
                stride = self.strides if l == num_layers else 1
                conv = layers.Conv2D(
                    self.filters,
                    kernel_size,
                    strides=stride,
                    padding="same",
                    use_bias=False,
                    kernel_initializer=self.kernel_initializer,
                    kernel_regularizer=self.kernel_regularizer,
                    dtype=self.dtype_policy,
                    name=f"path{p}_conv{l}",
                )
                bn = layers.BatchNormalization(
                    momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype_policy,
                    name=f"path{p}_bn{l}",
                )
                relu = layers.ReLU(dtype=self.dtype_policy, name=f"path{p}_relu{l}")
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
                bn.build(shape)
                relu.build(shape)
                path.append((conv, bn, relu))
            self.paths.append(path)

    def call(self, inputs, training=None, return_intermediates=False):
        intermediates = {}
        total = None
        for path in self.paths:
            x = inputs
            for conv, bn, relu in path:
                x = conv(x)
                intermediates[conv.name] = x
                x = bn(x, training=training)
                intermediates[bn.name] = x
                x = relu(x)
                intermediates[relu.name] = x
            total = x if total is None else total + x
        intermediates["sum"] = total
        if return_intermediates:
            return total, intermediates
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "pathways": [list(p) for p in self.pathways],
                "strides": self.strides,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
                if self.kernel_regularizer
                else None,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
            }
        )
        return config
