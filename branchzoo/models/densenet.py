"""DenseNet-BC: the tail-pattern model whose last dense block is skipped.

After Richter et al. (2022), Sec. 3 and Fig. 3b ("DenseNet18" on CIFAR-10 at
32x32: probe accuracy decays through the last dense block), with the layout
of the paper's reference code (torchvision's DenseNet; its DenseNet18 is
growth rate 32, blocks 4, 4, 4, 4, 64 initial features, bottleneck 4):

- stem ``"imagenet"`` (the reference's, also on 32x32 inputs): 7x7 conv
  stride 2 (3 pixels of zero padding, no bias), BN, ReLU, 3x3 max-pool
  stride 2 (1 pixel of padding); ``"cifar"``: one 3x3 conv stride 1;
- dense layer: BN, ReLU, 1x1 conv to ``bn_size * growth_rate``, BN, ReLU,
  3x3 conv to ``growth_rate`` (no biases), concatenated to its input;
- transition between blocks: BN, ReLU, 1x1 conv to
  ``floor(features * compression)``, 2x2 average pool;
- head: BN, ReLU, global average pool, ``Dense(num_classes)`` (logits);
- convs initialised like ``kaiming_normal_`` (fan_in), as torchvision does.
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_int_list
from branchzoo.layers.densenet_bc import densenet_bc_layout
from branchzoo.models._common import (
    batch_norm, check_input_shape, check_multiplier, check_stem, conv_stem, kaiming_normal, scaled,
)
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "003_4bdb2e82324dbf00.txt"


@register_builder("densenet", family="densenet", paper=PAPER)
def densenet(
    blocks=(4, 4, 4, 4),
    growth_rate=32,
    num_init_features=64,
    bn_size=4,
    compression=0.5,
    stem="imagenet",
    num_classes=10,
    input_shape=(32, 32, 3),
    width_multiplier=1.0,
    dropout=0.0,
    include_top=True,
    classifier_activation=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name=None,
):
    """Builds a DenseNet-BC as the paper's reference code (torchvision) lays it out.

    After Richter et al. (2022), Sec. 3, Fig. 3b.

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu`` (``stem_pad``,
    ``stem_pool_pad``, ``stem_pool`` with the ImageNet stem);
    ``block{s}_layer{l}_{bn1,relu1,conv1,bn2,relu2,conv2,concat}``;
    ``transition{s}_{bn,relu,conv,pool}``; ``final_bn``, ``final_relu``,
    ``avg_pool``, ``predictions``. All 1-based.

    Args:
        blocks: dense layers per block (the paper's DenseNet18: 4, 4, 4, 4).
        growth_rate: channels each dense layer adds.
        num_init_features: channels of the stem.
        bn_size: bottleneck width factor (1x1 conv to ``bn_size * growth_rate``).
        compression: transition output = floor(features * compression).
        stem: ``"imagenet"`` (the reference's) or ``"cifar"``.
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``.
        width_multiplier: scales `growth_rate` and `num_init_features`
            (rounded, at least 1).
        dropout: dropout after each dense layer (0 in the reference).
        include_top: add the head; else return the last feature map.
        classifier_activation: None gives logits.
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's defaults).
        name: model name (default ``densenet``).

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = densenet18(width_multiplier=1 / 8)
    >>> tuple(model.output.shape)
    (None, 10)
    """
    multiplier = check_multiplier(width_multiplier)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    input_shape = check_input_shape(input_shape)
    stem = check_stem(stem)
    blocks = check_int_list(blocks, "blocks", minimum=1)
    growth = scaled(growth_rate, multiplier, "growth_rate")
    features = scaled(num_init_features, multiplier, "num_init_features")
    bn_size = check_int(bn_size, "bn_size", minimum=1)
    if not 0 < compression <= 1:
        raise ValueError(f"`compression` must be in (0, 1]. Received: compression={compression!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")

    conv_init = kaiming_normal("fan_in")
    bn = batch_norm(bn_momentum, bn_epsilon)

    def conv(filters, size, layer_name):
        return layers.Conv2D(filters, size, strides=1, padding="same", use_bias=False,
                             kernel_initializer=conv_init, name=layer_name)

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv_stem(inputs, features, bn, stem=stem, kernel_initializer=conv_init)
    for block in densenet_bc_layout(blocks, growth, features, compression):
        for p, _, _ in block.layers:
            y = bn(f"{p}_bn1")(x)
            y = layers.ReLU(name=f"{p}_relu1")(y)
            y = conv(bn_size * growth, 1, f"{p}_conv1")(y)
            y = bn(f"{p}_bn2")(y)
            y = layers.ReLU(name=f"{p}_relu2")(y)
            y = conv(growth, 3, f"{p}_conv2")(y)
            if dropout:
                y = layers.Dropout(dropout, name=f"{p}_dropout")(y)
            x = layers.Concatenate(name=f"{p}_concat")([x, y])
        if block.transition:
            p, _, out = block.transition
            x = bn(f"{p}_bn")(x)
            x = layers.ReLU(name=f"{p}_relu")(x)
            x = conv(out, 1, f"{p}_conv")(x)
            x = layers.AveragePooling2D(2, name=f"{p}_pool")(x)
    x = bn("final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, dtype=head_policy(), name="predictions")(x)
    return keras.Model(inputs, x, name=name or "densenet")


def densenet18(**kwargs):
    """The paper's "DenseNet18" (growth 32, blocks 4, 4, 4, 4, 64 stem features), Fig. 3b; see `densenet`."""
    return densenet(blocks=(4, 4, 4, 4), growth_rate=32, num_init_features=64, **kwargs)
