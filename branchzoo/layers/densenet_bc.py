"""The layout of a DenseNet-BC (Huang et al. 2017): its layers' names and widths, once.

`branchzoo.models.densenet` builds it from Keras layers, `ModularLossEnsemble`
from grouped ones (M networks at once); both follow `densenet_bc_layout`.
"""

import collections

DenseLayer = collections.namedtuple("DenseLayer", ["prefix", "in_channels", "out_channels"])
DenseLayer.__doc__ = """A bottleneck layer ``{prefix}_*``: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv to the
growth rate, concatenated to its input (``out_channels = in_channels + growth_rate``)."""

Transition = collections.namedtuple("Transition", ["prefix", "in_channels", "out_channels"])
Transition.__doc__ = """A transition ``{prefix}_*``: BN, ReLU, 1x1 conv to ``out_channels``, 2x2 average pool."""

DenseBlock = collections.namedtuple("DenseBlock", ["layers", "transition"])
DenseBlock.__doc__ = """The `DenseLayer`s of a dense block and the `Transition` after it (None after the last)."""


def densenet_bc_layout(blocks, growth_rate, num_init_features, compression):
    """The dense blocks of a DenseNet-BC, in order, with the names and widths of their layers.

    Layer ``l`` of block ``b`` is ``block{b}_layer{l}`` and adds
    `growth_rate` channels; the transition after every block but the last
    is ``transition{b}`` and keeps ``floor(channels * compression)`` of them
    (all 1-based).

    Args:
        blocks: the number of bottleneck layers of each dense block.
        growth_rate: channels each bottleneck layer adds.
        num_init_features: channels of the stem's output.
        compression: the transitions' compression, in (0, 1].

    Returns:
        A list of `DenseBlock`s; the network's last width is
        ``layout[-1].layers[-1].out_channels``.

    Example:

    >>> layout = densenet_bc_layout([2, 1], growth_rate=4, num_init_features=8, compression=0.5)
    >>> [tuple(layer) for layer in layout[0].layers], tuple(layout[0].transition)
    ([('block1_layer1', 8, 12), ('block1_layer2', 12, 16)], ('transition1', 16, 8))
    >>> layout[1]
    DenseBlock(layers=[DenseLayer(prefix='block2_layer1', in_channels=8, out_channels=12)], transition=None)
    """
    channels = num_init_features
    layout = []
    for b, count in enumerate(blocks, start=1):
        dense_layers = []
        for l in range(1, count + 1):
            dense_layers.append(DenseLayer(f"block{b}_layer{l}", channels, channels + growth_rate))
            channels += growth_rate
        transition = None
        if b < len(blocks):
            transition = Transition(f"transition{b}", channels, int(channels * compression))
            channels = transition.out_channels
        layout.append(DenseBlock(dense_layers, transition))
    return layout
