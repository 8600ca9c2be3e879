"""ResNet with basic blocks: the tail-pattern model whose unproductive blocks are skipped.

After Richter et al. (2022), Sec. 3 and Fig. 3c (ResNet34 on CIFAR-10 at
32x32: probe accuracy zig-zags as residual blocks in the tail are skipped),
with the layout of the paper's reference code (torchvision's ResNet):

- stem ``"imagenet"`` (the reference's, also on 32x32 inputs): 7x7 conv
  stride 2 (3 pixels of zero padding, no bias), BN, ReLU, 3x3 max-pool
  stride 2 (1 pixel of padding); ``"cifar"``: one 3x3 conv stride 1, BN,
  ReLU (the usual CIFAR stem; the 32x32 tail pattern then mostly goes);
- stages of basic blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut,
  ReLU); the first block of stages 2.. has stride 2 on its first conv;
  shortcut: identity, or 1x1 conv (with the stride, no bias) + BN when the
  shape changes; ResNet34 = blocks 3, 4, 6, 3 of widths 64, 128, 256, 512;
- head: global average pool, ``Dense(num_classes)`` giving logits;
- convs initialised like ``kaiming_normal_(mode="fan_out")``.

3x3 convs use Keras "same" padding (with stride 2 it pads bottom/right where
PyTorch pads both sides by 1: the same shapes and parameter counts).
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_int_list, check_sequence
from branchzoo.models._common import (
    basic_block, batch_norm, check_input_shape, check_multiplier, check_stem, conv_stem, kaiming_normal, scaled,
)
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "003_4bdb2e82324dbf00.txt"


@register_builder("resnet", family="resnet", paper=PAPER)
def resnet(
    blocks_per_stage=(3, 4, 6, 3),
    widths=(64, 128, 256, 512),
    stem="imagenet",
    num_classes=10,
    input_shape=(32, 32, 3),
    width_multiplier=1.0,
    include_top=True,
    classifier_activation=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name=None,
):
    """Builds a basic-block ResNet as the paper's reference code (torchvision) lays it out.

    After Richter et al. (2022), Sec. 3, Fig. 3c.

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu`` (``stem_pad``,
    ``stem_pool_pad``, ``stem_pool`` with the ImageNet stem), then per block
    ``stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,shortcut_conv,shortcut_bn,add,out}``,
    ``avg_pool``, ``predictions``. All 1-based.

    Args:
        blocks_per_stage: basic blocks per stage (ResNet34: 3, 4, 6, 3;
            ResNet18: 2, 2, 2, 2).
        widths: channels of each stage (the stem uses ``widths[0]``).
        stem: ``"imagenet"`` (the reference code's, used by the paper on
            32x32 inputs) or ``"cifar"``.
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``.
        width_multiplier: scales every width (rounded, at least 1).
        include_top: add pooling + Dense; else return the last feature map.
        classifier_activation: None gives logits.
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's defaults).
        name: model name (default ``resnet{2 * blocks + 2}``, e.g. ``resnet34``).

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = resnet34(width_multiplier=1 / 16)
    >>> tuple(model.output.shape)
    (None, 10)
    """
    multiplier = check_multiplier(width_multiplier)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    input_shape = check_input_shape(input_shape)
    stem = check_stem(stem)
    blocks_per_stage = check_sequence(blocks_per_stage, "blocks_per_stage", "be a non-empty list of integers")
    widths = check_sequence(widths, "widths", "be a non-empty list of integers")
    if len(blocks_per_stage) != len(widths):
        raise ValueError(
            "`blocks_per_stage` and `widths` must have one entry per stage. "
            f"Received: blocks_per_stage={blocks_per_stage!r}, widths={widths!r}"
        )
    blocks = check_int_list(blocks_per_stage, "blocks_per_stage", minimum=1)
    widths = [scaled(w, multiplier, f"widths[{i}]") for i, w in enumerate(widths)]

    conv_init = kaiming_normal("fan_out")
    bn = batch_norm(bn_momentum, bn_epsilon)

    def conv(filters, kernel_size, strides, layer_name):
        return layers.Conv2D(filters, kernel_size, strides=strides, padding="same" if kernel_size > 1 else "valid",
                             use_bias=False, kernel_initializer=conv_init, name=layer_name)

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv_stem(inputs, widths[0], bn, stem=stem, kernel_initializer=conv_init)
    for s, (count, width) in enumerate(zip(blocks, widths), start=1):
        for b in range(1, count + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = basic_block(x, width, stride, f"stage{s}_block{b}", conv, bn)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, dtype=head_policy(), name="predictions")(x)
    return keras.Model(inputs, x, name=name or f"resnet{2 * sum(blocks) + 2}")


def resnet34(**kwargs):
    """ResNet34 (blocks 3, 4, 6, 3), the paper's Fig. 3c model; see `resnet`."""
    return resnet(blocks_per_stage=(3, 4, 6, 3), **kwargs)


def resnet18(**kwargs):
    """ResNet18 (blocks 2, 2, 2, 2); see `resnet`."""
    return resnet(blocks_per_stage=(2, 2, 2, 2), **kwargs)
