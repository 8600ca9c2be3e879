"""VGG with batch normalisation for small images: the sequential tail-pattern model.

After Richter et al. (2022), Sec. 3 and Figs. 1 and 3a (VGG16 on CIFAR-10 at
its native 32x32: the tail layers keep, but no longer improve, the
intermediate solution), with the layout of the paper's reference code:

- stages of 3x3 convs ("same", with bias), each followed by BN and ReLU, and a
  2x2 max-pool after every stage; VGG16 = configuration D, stage widths
  64, 128, 256, 512, 512 with 2, 2, 3, 3, 3 convs;
- head: global average pool (the reference's adaptive pool to 1x1), then
  BN, Dropout(0.25), Dense(last width / 2), ReLU, BN, Dropout(0.25),
  Dense(num_classes) giving logits;
- convs initialised like ``kaiming_normal_(mode="fan_out")``, hidden and
  output Dense kernels with N(0, 0.01), biases 0 (the reference's init).
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_sequence
from branchzoo.models._common import check_input_shape, check_multiplier, kaiming_normal, scaled
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "003_4bdb2e82324dbf00.txt"

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@register_builder("vgg", family="vgg", paper=PAPER)
def vgg(
    stages=VGG16_STAGES,
    num_classes=10,
    input_shape=(32, 32, 3),
    width_multiplier=1.0,
    head_units=None,
    dropout=0.25,
    include_top=True,
    classifier_activation=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name=None,
):
    """Builds a VGG (BN after every conv) as the paper's reference code lays it out.

    After Richter et al. (2022), Sec. 3, Figs. 1, 3a.

    Layer names: ``stage{s}_conv{l}``, ``stage{s}_bn{l}``, ``stage{s}_relu{l}``,
    ``stage{s}_pool``, then ``avg_pool``, ``head_bn1``, ``head_dropout1``,
    ``head_dense``, ``head_relu``, ``head_bn2``, ``head_dropout2``,
    ``predictions``. All 1-based.

    Args:
        stages: conv widths per stage, e.g. ``VGG16_STAGES``; a max-pool
            follows every stage.
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``.
        width_multiplier: scales every width (rounded, at least 1): small
            models of the same topology for tests and CPUs.
        head_units: the hidden Dense width (default: last stage width / 2).
        dropout: rate of both head dropouts.
        include_top: add the head; else return the last feature map.
        classifier_activation: None gives logits.
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's defaults).
        name: model name (default ``vgg{convs + 3}``, e.g. ``vgg16``).

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = vgg16(width_multiplier=1 / 16)
    >>> tuple(model.output.shape)
    (None, 10)
    """
    multiplier = check_multiplier(width_multiplier)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    input_shape = check_input_shape(input_shape)
    stages = check_sequence(stages, "stages", "be a non-empty list of lists of conv widths")
    widths = []
    for s, stage in enumerate(stages):
        stage = check_sequence(stage, f"stages[{s}]", "be a non-empty list of conv widths")
        widths.append([scaled(w, multiplier, f"stages[{s}][{l}]") for l, w in enumerate(stage)])
    if not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")

    conv_init = kaiming_normal("fan_out")
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for s, stage in enumerate(widths, start=1):
        for l, width in enumerate(stage, start=1):
            x = layers.Conv2D(width, 3, padding="same", kernel_initializer=conv_init, name=f"stage{s}_conv{l}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name=f"stage{s}_bn{l}")(x)
            x = layers.ReLU(name=f"stage{s}_relu{l}")(x)
        x = layers.MaxPooling2D(2, name=f"stage{s}_pool")(x)
    if include_top:
        units = widths[-1][-1] // 2 if head_units is None else scaled(head_units, multiplier, "head_units")
        dense_init = keras.initializers.RandomNormal(0.0, 0.01)
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="head_bn1")(x)
        x = layers.Dropout(dropout, name="head_dropout1")(x)
        x = layers.Dense(max(units, 1), kernel_initializer=dense_init, name="head_dense")(x)
        x = layers.ReLU(name="head_relu")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="head_bn2")(x)
        x = layers.Dropout(dropout, name="head_dropout2")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, kernel_initializer=dense_init,
                         dtype=head_policy(), name="predictions")(x)
    depth = sum(len(s) for s in widths) + 3
    return keras.Model(inputs, x, name=name or f"vgg{depth}")


def vgg16(**kwargs):
    """VGG16 (configuration D) with BN, the paper's Fig. 1 and Fig. 3a model; see `vgg`."""
    return vgg(stages=VGG16_STAGES, **kwargs)
