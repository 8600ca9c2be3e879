"""Argument checks and initialisers shared by the classic CNN families (VGG, ResNet, DenseNet)."""

import numbers

import keras

from branchzoo._validation import check_int


def check_input_shape(input_shape):
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


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
