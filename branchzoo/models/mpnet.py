"""MPNet: the multi-path networks of Richter et al. (2022).

``MPNetK(n1:s1xs1, n2:s2xs2)`` has four stages of K blocks; each block runs
pathways of ``n_p`` conv layers of kernel ``s_p`` side by side and sums them
(Sec. 4, Fig. 4). The layout follows the paper's reference code (docs/papers.md):

- stem: 3x3 conv 3 -> ``widths[0]`` (no bias), BN, ReLU;
- stages of widths 64, 128, 256, 512, ``blocks_per_stage`` `MultiPathBlock`s each;
- stride 2 on the last layer of every pathway in the LAST block of every
  stage (the paper's figure caption says the first layer of a stage
  downsamples; we follow the code, as its published results do);
- head: global average pool, ``Dense(num_classes)`` giving logits.
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_int_list
from branchzoo.layers import MultiPathBlock
from branchzoo.layers.multipath import normalize_pathways
from branchzoo.models._common import batch_norm, check_input_shape, conv_stem
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "003_4bdb2e82324dbf00.txt"


def mpnet_title(blocks_per_stage, pathways):
    """The paper's name of a configuration, e.g. ``MPNet2(2:3x3, 2:7x7)``."""
    parts = ", ".join(f"{n}:{k}x{k}" for n, k in normalize_pathways(pathways))
    return f"MPNet{blocks_per_stage}({parts})"


def mpnet_name(blocks_per_stage, pathways):
    """A Keras-safe model name, e.g. ``mpnet2_2x3_2x7``."""
    parts = "_".join(f"{n}x{k}" for n, k in normalize_pathways(pathways))
    return f"mpnet{blocks_per_stage}_{parts}"


def _title(config):
    """The README's architecture column for an entry's config."""
    title = mpnet_title(config.get("blocks_per_stage", 2), config.get("pathways", ((2, 3), (2, 7))))
    widths = list(config.get("widths", (64, 128, 256, 512)))
    return title if widths == [64, 128, 256, 512] else f"{title}, widths {widths}"


@register_builder("mpnet", family="mpnet", paper=PAPER, title=_title)
def mpnet(
    pathways=((2, 3), (2, 7)),
    blocks_per_stage=2,
    widths=(64, 128, 256, 512),
    num_classes=10,
    input_shape=(32, 32, 3),
    include_top=True,
    classifier_activation=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    kernel_initializer="he_normal",
    name=None,
):
    """Builds MPNetK(n1:s1xs1, n2:s2xs2, ...) with the Keras functional API.

    After Richter et al. (2022), Sec. 4 (layout of its reference code).

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu``,
    ``stage{s}_block{b}`` (a `MultiPathBlock` whose sublayers are
    ``path{p}_{conv,bn,relu}{l}``), ``avg_pool``, ``predictions``. All 1-based.

    Args:
        pathways: list of ``[num_layers, kernel_size]``, one per pathway (any
            number of pathways), e.g. ``[[2, 3], [2, 7]]``.
        blocks_per_stage: K, the number of blocks in each stage.
        widths: output channels of each stage (the stem uses ``widths[0]``).
            The paper uses (64, 128, 256, 512); smaller widths give CPU-sized
            models of the same topology.
        num_classes: size of the classifier.
        input_shape: ``(H, W, C)``; spatial sizes may be None.
        include_top: add the pooling + Dense head; else return the last
            feature map.
        classifier_activation: activation of the head; None gives logits
            (train with ``from_logits=True``), ``"softmax"`` probabilities.
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's
            defaults: momentum 0.1 there is 0.9 here; epsilon 1e-5).
        kernel_initializer: conv kernel initializer.
        name: model name (default: e.g. ``mpnet2_2x3_2x7``).

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = mpnet([[1, 3], [1, 5]], blocks_per_stage=1, widths=(8, 8, 8, 8))
    >>> tuple(model.output.shape)
    (None, 10)
    """
    pathways = normalize_pathways(pathways)
    blocks_per_stage = check_int(blocks_per_stage, "blocks_per_stage", minimum=1)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    widths = check_int_list(widths, "widths", "be a non-empty list of stage widths", minimum=1)
    input_shape = check_input_shape(input_shape)

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv_stem(inputs, widths[0], batch_norm(bn_momentum, bn_epsilon), kernel_initializer=kernel_initializer)
    for s, width in enumerate(widths, start=1):
        for b in range(1, blocks_per_stage + 1):
            x = MultiPathBlock(
                width,
                pathways,
                strides=2 if b == blocks_per_stage else 1,
                kernel_initializer=kernel_initializer,
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                name=f"stage{s}_block{b}",
            )(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, dtype=head_policy(), name="predictions")(x)
    return keras.Model(inputs, x, name=name or mpnet_name(blocks_per_stage, pathways))
