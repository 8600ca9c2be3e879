"""Branched first layers: AlexNet's two-branch block and small 32x32 analogues.

After Voss et al. (2021), "Branch Specialization" (Distill): AlexNet's first
two layers are split into two branches that cannot communicate until they
rejoin after the second layer, and the first layer's neurons organise into a
black-and-white Gabor branch and a colour branch (Fig. 1); a model with its
first layer split into four branches specialises in colour and frequency
(Fig. 7).

Branches are channel blocks, branch-major (as everywhere in branchzoo): the
first convolution reads the image for every branch at once (one
``Conv2D(N * f)`` is N independent convolutions of the same input), later
branched convolutions are `GroupedConv2D` with ``groups=N``. Channel ``c``
of a branched layer belongs to branch ``c // (channels / N)``;
`branch_channels` gives the ranges.
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_int_list
from branchzoo.layers import GroupedConv2D
from branchzoo.models._common import check_input_shape
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "001_54705f77118ebd52.txt"


def _scaled(filters, multiplier, divisor):
    """`filters` times `multiplier`, rounded to a positive multiple of `divisor`."""
    return max(divisor, int(round(filters * multiplier / divisor)) * divisor)


def _check_multiplier(width_multiplier):
    value = float(width_multiplier)
    if not value > 0:
        raise ValueError(f"`width_multiplier` must be > 0. Received: width_multiplier={width_multiplier!r}")
    return value


def branch_channels(channels, num_branches):
    """``[(start, stop), ...]``: the channel range of each branch of a branch-major layer.

    Example:

    >>> branch_channels(96, 2)
    [(0, 48), (48, 96)]
    """
    channels = check_int(channels, "channels", minimum=1)
    num_branches = check_int(num_branches, "num_branches", minimum=1)
    if channels % num_branches:
        raise ValueError(
            f"`channels` must be divisible by `num_branches` ({num_branches}). Received: channels={channels}"
        )
    width = channels // num_branches
    return [(b * width, (b + 1) * width) for b in range(num_branches)]


@register_builder("alexnet", family="branch_specialization", paper=PAPER)
def alexnet(
    num_branches=2,
    later_groups=2,
    width_multiplier=1.0,
    num_classes=1000,
    input_shape=(227, 227, 3),
    dropout=0.5,
    name=None,
):
    """AlexNet with its first block (conv1, conv2) split into `num_branches` branches.

    After Voss et al. (2021), Fig. 1 (Krizhevsky et al. 2012, the
    two-GPU layout; Caffe's ``bvlc_alexnet``). conv1 11x11/4 (96), max-pool
    3/2, conv2 5x5 (256, the branches), max-pool 3/2, conv3 3x3 (384, all
    channels), conv4 3x3 (384) and conv5 3x3 (256) in `later_groups` groups,
    max-pool 3/2, fc6 and fc7 (4096, dropout), fc8. Local response
    normalisation is left out (no parameters; not a Keras layer). With the
    defaults: 60,965,224 parameters, the original AlexNet's.

    Layer names: ``conv1`` ... ``conv5`` (each followed by ``relu{i}``),
    ``pool1``, ``pool2``, ``pool5``, ``flatten``, ``fc6``, ``fc7``,
    ``predictions``.

    Args:
        num_branches: branches of conv1 and conv2 (2 in AlexNet).
        later_groups: groups of conv4 and conv5 (2 in AlexNet, 1 to join
            the branches after the first block for good).
        width_multiplier: scales every layer's width (rounded to the groups).
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``; 227x227 gives AlexNet's 6x6 pool5.
        dropout: dropout rate before fc6 and fc7.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = alexnet(width_multiplier=1 / 16, num_classes=10, input_shape=(67, 67, 3))
    >>> model.get_layer("conv2").groups
    2
    """
    num_branches = check_int(num_branches, "num_branches", minimum=1)
    later_groups = check_int(later_groups, "later_groups", minimum=1)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    m = _check_multiplier(width_multiplier)
    input_shape = check_input_shape(input_shape)
    c1 = _scaled(96, m, num_branches)
    c2 = _scaled(256, m, num_branches)
    c3 = _scaled(384, m, later_groups)
    c4 = _scaled(384, m, later_groups)
    c5 = _scaled(256, m, later_groups)
    fc = _scaled(4096, m, 1)

    def conv(x, filters, size, groups, index, strides=1, padding="same"):
        layer = layers.Conv2D if groups == 1 else GroupedConv2D
        kwargs = {} if groups == 1 else {"groups": groups}
        x = layer(filters, size, strides=strides, padding=padding, name=f"conv{index}", **kwargs)(x)
        return layers.ReLU(name=f"relu{index}")(x)

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(inputs, c1, 11, 1, 1, strides=4, padding="valid")  # N branches at once: each reads the image
    x = layers.MaxPooling2D(3, 2, name="pool1")(x)
    x = conv(x, c2, 5, num_branches, 2)
    x = layers.MaxPooling2D(3, 2, name="pool2")(x)
    x = conv(x, c3, 3, 1, 3)
    x = conv(x, c4, 3, later_groups, 4)
    x = conv(x, c5, 3, later_groups, 5)
    x = layers.MaxPooling2D(3, 2, name="pool5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Dense(fc, activation="relu", name="fc6")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    x = layers.Dense(fc, activation="relu", name="fc7")(x)
    x = layers.Dense(num_classes, dtype=head_policy(), name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"alexnet_{num_branches}branch")


@register_builder("branched_stem_cnn", family="branch_specialization", paper=PAPER)
def branched_stem_cnn(
    num_branches=4,
    branch_layers=2,
    branch_filters=16,
    kernel_size=5,
    trunk_widths=(128, 256),
    num_classes=10,
    input_shape=(32, 32, 3),
    name=None,
):
    """A 32x32 CNN whose first layers are split into branches.

    After Voss et al. (2021), where branches are "sequences of layers
    which temporarily don't have access to 'parallel' information":
    ``num_branches=2`` is the AlexNet-style two-branch first block (Fig. 1),
    ``num_branches=4`` the four-branch first layers (Fig. 7), both at CIFAR
    size with ``branch_layers=2``. Branched layers: ``branch_conv{l}``
    (``kernel_size``, ``N * branch_filters * 2**(l-1)`` channels, branch
    ``b`` the ``b``-th ``N``-th of them), ``branch_bn{l}``,
    ``branch_relu{l}``, ``branch_pool{l}`` (max 3/2, same). Every branch's
    first layer reads the image (as AlexNet's two halves do); from the
    second on, ``branch_conv{l}`` is grouped (``groups=N``), so no weight
    connects two branches until the trunk, which reads every branch:
    ``trunk_conv{i}`` (3x3), ``trunk_bn{i}``, ``trunk_relu{i}``,
    ``trunk_pool{i}`` (2x2, all but the last), then ``avg_pool`` and
    ``predictions``.

    Args:
        num_branches: N.
        branch_layers: how many layers stay split (default 2). With 1 the
            split is nominal: the only branched layer reads the shared
            image and the trunk reads all of its channels, so the model is
            an ordinary CNN.
        branch_filters: filters per branch in the first layer (doubling per
            branched layer).
        kernel_size: kernel of the branched convolutions.
        trunk_widths: widths of the shared 3x3 convolutions.
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = branched_stem_cnn(4, branch_filters=2, trunk_widths=(8,))
    >>> tuple(model.get_layer("branch_conv1").kernel.shape)
    (5, 5, 3, 8)
    >>> model.get_layer("branch_conv2").groups
    4
    """
    num_branches = check_int(num_branches, "num_branches", minimum=1)
    branch_layers = check_int(branch_layers, "branch_layers", minimum=1)
    branch_filters = check_int(branch_filters, "branch_filters", minimum=1)
    kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    trunk_widths = check_int_list(trunk_widths, "trunk_widths", "be a non-empty list of widths", minimum=1)
    input_shape = check_input_shape(input_shape)
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for l in range(1, branch_layers + 1):
        filters = num_branches * branch_filters * 2 ** (l - 1)
        if l == 1:
            x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name="branch_conv1")(x)
        else:
            x = GroupedConv2D(filters, kernel_size, padding="same", groups=num_branches, use_bias=False,
                              name=f"branch_conv{l}")(x)
        x = layers.BatchNormalization(name=f"branch_bn{l}")(x)
        x = layers.ReLU(name=f"branch_relu{l}")(x)
        x = layers.MaxPooling2D(3, 2, padding="same", name=f"branch_pool{l}")(x)
    for i, width in enumerate(trunk_widths, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"trunk_conv{i}")(x)
        x = layers.BatchNormalization(name=f"trunk_bn{i}")(x)
        x = layers.ReLU(name=f"trunk_relu{i}")(x)
        if i < len(trunk_widths):
            x = layers.MaxPooling2D(2, name=f"trunk_pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(num_classes, dtype=head_policy(), name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"branched_stem_{num_branches}x{branch_layers}")
