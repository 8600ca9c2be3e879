"""Argument checks, initialisers and blocks shared by the model builders.

`conv_stem` is the stem of the ResNet, DenseNet, MPNet, ResNeXt and
BranchSum builders; `basic_block` the residual block of the ResNet and
BranchSum builders. Both take the layers' makers, so one code path gives
plain and grouped (branched) convolutions alike.
"""

import numbers

import keras
from keras import layers

from branchzoo._validation import check_int, check_sequence


def check_input_shape(input_shape):
    """`input_shape` as a tuple ``(height, width, channels)``, or ValueError."""
    return tuple(check_sequence(input_shape, "input_shape", "be (height, width, channels)", length=3))


def check_multiplier(width_multiplier):
    if (isinstance(width_multiplier, bool) or not isinstance(width_multiplier, numbers.Real)
            or not width_multiplier > 0):
        raise ValueError(
            f"`width_multiplier` must be a positive number. Received: width_multiplier={width_multiplier!r}"
        )
    return float(width_multiplier)


def scaled(width, multiplier, name):
    """``round(width * multiplier)``, at least 1, after checking `width`."""
    width = check_int(width, name, minimum=1)
    return max(1, int(round(width * multiplier)))


def check_stem(stem):
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"`stem` must be 'imagenet' or 'cifar'. Received: stem={stem!r}")
    return stem


def kaiming_normal(mode):
    """PyTorch's ``kaiming_normal_`` (untruncated normal, gain sqrt(2)) in `mode` ('fan_in'/'fan_out')."""
    return keras.initializers.VarianceScaling(scale=2.0, mode=mode, distribution="untruncated_normal")


def batch_norm(momentum, epsilon):
    """A maker of ``BatchNormalization(momentum, epsilon)`` layers: ``batch_norm(0.9, 1e-5)(name)``."""

    def make(name):
        return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=name)

    return make


def conv_stem(inputs, filters, bn, stem="cifar", kernel_initializer="he_normal"):
    """The stem of the ResNet-style builders: conv (no bias), BN, ReLU.

    ``"cifar"``: 3x3 conv, stride 1, "same" padding. ``"imagenet"`` (He et
    al. 2016, torchvision's layout): 7x7 conv stride 2 on 3 pixels of zero
    padding, and after the ReLU a 3x3 max-pool stride 2 on 1 pixel of zero
    padding.

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu``; with the
    ImageNet stem also ``stem_pad``, ``stem_pool_pad``, ``stem_pool``.

    Args:
        inputs: the image tensor.
        filters: output channels.
        bn: makes the BatchNormalization layer from its name (`batch_norm`).
        stem: ``"cifar"`` or ``"imagenet"``.
        kernel_initializer: the conv's initializer.

    Returns:
        The stem's output tensor.

    Example:

    >>> x = conv_stem(keras.Input((32, 32, 3)), 16, batch_norm(0.9, 1e-5), stem="imagenet")
    >>> tuple(x.shape)
    (None, 8, 8, 16)
    """
    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="stem_pad")(inputs)
        x = layers.Conv2D(filters, 7, strides=2, use_bias=False, kernel_initializer=kernel_initializer,
                          name="stem_conv")(x)
    else:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=kernel_initializer,
                          name="stem_conv")(inputs)
    x = bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if stem == "imagenet":
        # Zero padding equals PyTorch's -inf padding here: the inputs are >= 0 after the ReLU.
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    return x


def basic_block(x, filters, strides, prefix, conv, bn, last_relu="out"):
    """The basic residual block of ResNet18/34 (He et al. 2016).

    3x3 conv (`strides`), BN, ReLU, 3x3 conv, BN, plus the shortcut, ReLU.
    The shortcut is `x`, or a 1x1 conv with the stride and a BN when the
    stride or the number of channels changes.

    Layer names: ``{prefix}_{conv1,bn1,relu1,conv2,bn2,add}``,
    ``{prefix}_{shortcut_conv,shortcut_bn}`` (projection shortcuts) and
    ``{prefix}_{last_relu}``.

    Args:
        x: input tensor.
        filters: output channels of both convs (all branches together
            when `conv` makes grouped convs).
        strides: stride of the first conv and the shortcut.
        prefix: the layer names' prefix, e.g. ``stage2_block1``.
        conv: makes a conv layer: ``conv(filters, kernel_size, strides, name)``.
        bn: makes a BatchNormalization layer from its name (`batch_norm`).
        last_relu: name suffix of the final ReLU.

    Returns:
        The block's output tensor.

    Example:

    >>> def conv(filters, kernel_size, strides, name):
    ...     return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", name=name)
    >>> y = basic_block(keras.Input((8, 8, 4)), 6, 2, "b", conv, batch_norm(0.9, 1e-5))
    >>> tuple(y.shape)
    (None, 4, 4, 6)
    """
    y = conv(filters, 3, strides, f"{prefix}_conv1")(x)
    y = bn(f"{prefix}_bn1")(y)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = conv(filters, 3, 1, f"{prefix}_conv2")(y)
    y = bn(f"{prefix}_bn2")(y)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, strides, f"{prefix}_shortcut_conv")(x)
        shortcut = bn(f"{prefix}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_{last_relu}")(y)
