"""InceptionV1 (GoogLeNet) with every branch of every Inception block named.

After Voss et al. (2021) (Distill's "Branch Specialization"): the
5x5 branch of ``mixed3a`` (32 of its 256 channels) holds all its
black-and-white-vs-colour detectors, the 5x5 branch of ``mixed3b`` (96 of
480) all its curve detectors. The layout is Szegedy et al. 2015, Table 1
(Caffe's ``bvlc_googlenet``, the network Lucid calls InceptionV1), and the
names are Lucid's: ``conv2d0`` (7x7/2), ``conv2d1`` (1x1), ``conv2d2``
(3x3), ``maxpool0/1/4/10``, blocks ``mixed3a`` ... ``mixed5b`` whose
branches are

- ``mixed3a_1x1``,
- ``mixed3a_3x3_bottleneck`` -> ``mixed3a_3x3``,
- ``mixed3a_5x5_bottleneck`` -> ``mixed3a_5x5``,
- ``mixed3a_pool`` (3x3/1 max-pool) -> ``mixed3a_pool_reduce``,

concatenated in that order as ``mixed3a``. Each named layer is the ReLU
output; its convolution is ``<name>_pre_relu`` (and ``<name>_bn`` with
``batch_norm=True``). Local response normalisation and the auxiliary
classifiers are left out (no parameters in the former; the latter only
train). Parameters at full width with 1000 classes: 6,998,552.
"""

import keras
from keras import layers

from branchzoo._validation import check_int
from branchzoo.models._common import check_input_shape
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "001_54705f77118ebd52.txt"

# Szegedy et al. 2015, Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION_V1_BLOCKS = {
    "mixed3a": (64, 96, 128, 16, 32, 32),
    "mixed3b": (128, 128, 192, 32, 96, 64),
    "mixed4a": (192, 96, 208, 16, 48, 64),
    "mixed4b": (160, 112, 224, 24, 64, 64),
    "mixed4c": (128, 128, 256, 24, 64, 64),
    "mixed4d": (112, 144, 288, 32, 64, 64),
    "mixed4e": (256, 160, 320, 32, 128, 128),
    "mixed5a": (256, 160, 320, 32, 128, 128),
    "mixed5b": (384, 192, 384, 48, 128, 128),
}
BRANCHES = ("1x1", "3x3", "5x5", "pool_reduce")
_POOL_BEFORE = {"mixed4a": "maxpool4", "mixed5a": "maxpool10"}


def _width(filters, multiplier):
    return max(1, int(round(filters * multiplier)))


def inception_branch_channels(block, width_multiplier=1.0):
    """``{branch: (start, stop)}``: where each branch of `block` sits in its concatenated output.

    Example:

    >>> inception_branch_channels("mixed3a")["5x5"]
    (192, 224)
    """
    if block not in INCEPTION_V1_BLOCKS:
        raise ValueError(f"`block` must be one of {list(INCEPTION_V1_BLOCKS)}. Received: block={block!r}")
    f1, _, f3, _, f5, fp = (_width(f, width_multiplier) for f in INCEPTION_V1_BLOCKS[block])
    ranges, start = {}, 0
    for branch, width in zip(BRANCHES, (f1, f3, f5, fp)):
        ranges[branch] = (start, start + width)
        start += width
    return ranges


@register_builder("inception_v1", family="branch_specialization", paper=PAPER)
def inception_v1(
    num_classes=1000,
    input_shape=(224, 224, 3),
    width_multiplier=1.0,
    batch_norm=False,
    dropout=0.4,
    name=None,
):
    """InceptionV1 / GoogLeNet with named Inception branches (Lucid's layer names).

    After Voss et al. (2021) (the network of its Figs. 5-6) with the
    layout of Szegedy et al. 2015, Table 1; see the module docstring for
    the names.

    Args:
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``; 224x224 in the paper ("same" padding
            everywhere, so 32x32 inputs work too: 16, 8, 4, 2, 1).
        width_multiplier: scales every convolution's filters.
        batch_norm: BatchNorm (and no conv bias) after every convolution;
            False is the original.
        dropout: dropout before the classifier (0.4 in the paper).
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = inception_v1(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1 / 16)
    >>> model.get_layer("mixed3a_5x5").output.shape[-1], model.get_layer("mixed3a").output.shape[-1]
    (2, 16)
    """
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    m = float(width_multiplier)
    if not m > 0:
        raise ValueError(f"`width_multiplier` must be > 0. Received: width_multiplier={width_multiplier!r}")
    input_shape = check_input_shape(input_shape)

    def conv(x, filters, size, layer_name, strides=1):
        x = layers.Conv2D(_width(filters, m), size, strides=strides, padding="same", use_bias=not batch_norm,
                          name=f"{layer_name}_pre_relu")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{layer_name}_bn")(x)
        return layers.ReLU(name=layer_name)(x)

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(inputs, 64, 7, "conv2d0", strides=2)
    x = layers.MaxPooling2D(3, 2, padding="same", name="maxpool0")(x)
    x = conv(x, 64, 1, "conv2d1")
    x = conv(x, 192, 3, "conv2d2")
    x = layers.MaxPooling2D(3, 2, padding="same", name="maxpool1")(x)
    for block, (f1, r3, f3, r5, f5, fp) in INCEPTION_V1_BLOCKS.items():
        if block in _POOL_BEFORE:
            x = layers.MaxPooling2D(3, 2, padding="same", name=_POOL_BEFORE[block])(x)
        b1 = conv(x, f1, 1, f"{block}_1x1")
        b3 = conv(conv(x, r3, 1, f"{block}_3x3_bottleneck"), f3, 3, f"{block}_3x3")
        b5 = conv(conv(x, r5, 1, f"{block}_5x5_bottleneck"), f5, 5, f"{block}_5x5")
        pooled = layers.MaxPooling2D(3, 1, padding="same", name=f"{block}_pool")(x)
        bp = conv(pooled, fp, 1, f"{block}_pool_reduce")
        x = layers.Concatenate(name=block)([b1, b3, b5, bp])
    x = layers.GlobalAveragePooling2D(name="avgpool0")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, dtype=head_policy(), name="predictions")(x)
    return keras.Model(inputs, x, name=name or "inception_v1")
