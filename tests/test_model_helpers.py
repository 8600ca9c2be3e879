"""The shared pieces of the builders: argument checks, the conv stem, the basic block, the DenseNet-BC layout.

Counts are by hand from the layouts; the DenseNet-BC widths are the published networks'.
"""

import re

import keras
import numpy as np
import pytest
from keras import layers

from branchzoo._validation import check_int_list, check_sequence
from branchzoo.layers import GroupedConv2D
from branchzoo.layers.densenet_bc import densenet_bc_layout
from branchzoo.layers.ensemble import normalize_module
from branchzoo.layers.multipath import normalize_pathways
from branchzoo.models._common import basic_block, batch_norm, conv_stem
from branchzoo.models.alexnet import alexnet, branched_stem_cnn
from branchzoo.models.branched_resnet import branched_mlp, branched_resnet, branched_resnet18
from branchzoo.models.densenet import densenet
from branchzoo.models.inception import inception_v1
from branchzoo.models.modular import modular_mlp
from branchzoo.models.mpnet import mpnet
from branchzoo.models.resnet import resnet
from branchzoo.models.resnext import resnext_cifar
from branchzoo.models.vgg import vgg


# --- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize("value, kwargs", [
    ("ab", {}), (b"ab", {}), (3, {}), (None, {}), ([], {}), ((1, 2), {"length": 3}), ([1], {"length": 0}),
])
def test_check_sequence_refuses(value, kwargs):
    with pytest.raises(ValueError, match=re.escape(f"`arg` must be a list. Received: arg={value!r}")):
        check_sequence(value, "arg", "be a list", **kwargs)


def test_check_sequence_accepts():
    assert check_sequence((1, "a"), "arg") == [1, "a"]
    assert check_sequence(np.array([3, 4]), "arg", length=2) == [3, 4]
    assert check_sequence([], "arg", allow_empty=True) == []
    assert check_int_list((2, np.int64(3)), "arg", minimum=1) == [2, 3]
    assert all(type(v) is int for v in check_int_list((2, np.int64(3)), "arg"))
    with pytest.raises(ValueError, match=re.escape("`arg[1]` must be an integer. Received: arg[1]=2.5")):
        check_int_list([1, 2.5], "arg")
    with pytest.raises(ValueError, match=re.escape("`arg[0]` must be >= 1. Received: arg[0]=0")):
        check_int_list([0], "arg", minimum=1)


SHAPE_ERROR = "`input_shape` must be (height, width, channels). Received: input_shape=(32, 32)"


@pytest.mark.parametrize("build, kwargs, message", [
    (resnet, {"blocks_per_stage": "ab"},
     "`blocks_per_stage` must be a non-empty list of integers. Received: blocks_per_stage='ab'"),
    (resnet, {"widths": []}, "`widths` must be a non-empty list of integers. Received: widths=[]"),
    (densenet, {"blocks": ()}, "`blocks` must be a non-empty list of integers. Received: blocks=()"),
    (mpnet, {"widths": []}, "`widths` must be a non-empty list of stage widths. Received: widths=[]"),
    (vgg, {"stages": []}, "`stages` must be a non-empty list of lists of conv widths. Received: stages=[]"),
    (vgg, {"stages": [[4], []]}, "`stages[1]` must be a non-empty list of conv widths. Received: stages[1]=[]"),
    (branched_stem_cnn, {"trunk_widths": []},
     "`trunk_widths` must be a non-empty list of widths. Received: trunk_widths=[]"),
    (lambda **kw: branched_resnet(2, **kw), {"blocks_per_stage": []},
     "`blocks_per_stage` must be a non-empty list of block counts, e.g. [2, 2, 2, 2]. Received: blocks_per_stage=[]"),
    (branched_mlp, {"hidden_units": "ab"}, "`hidden_units` must be a list of widths. Received: hidden_units='ab'"),
    (branched_mlp, {"input_shape": ()}, "`input_shape` must be a non-empty tuple. Received: input_shape=()"),
    (normalize_module, {"module": {"type": "mlp", "hidden_units": []}},
     "`hidden_units` must be a positive integer or a non-empty list of them. Received: hidden_units=[]"),
    (normalize_pathways, {"pathways": []}, "`pathways` must be a non-empty list of [num_layers, kernel_size] "
                                           "pairs, e.g. [[2, 3], [2, 7]]. Received: pathways=[]"),
    (resnext_cifar, {"stage_widths": (8, 16)},
     "`stage_widths` must list the block output width of the 3 stages. Received: stage_widths=(8, 16)"),
    (lambda **kw: modular_mlp(4, 2, **kw), {"input_shape": ()},
     "`input_shape` must be the shape of one example. Received: input_shape=()"),
] + [(build, {"input_shape": (32, 32)}, SHAPE_ERROR) for build in (
    resnet, densenet, vgg, mpnet, resnext_cifar, alexnet, branched_stem_cnn, inception_v1, branched_resnet18)])
def test_builders_name_the_bad_list(build, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        build(**kwargs)


# --- conv stem and basic block ---------------------------------------------------------

BN = batch_norm(0.9, 1e-5)


def counts(model):
    """(trainable, total) parameters."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights), model.count_params()


@pytest.mark.parametrize("stem, kernel, size", [("cifar", 3, 32), ("imagenet", 7, 8)])
def test_conv_stem_by_hand(stem, kernel, size):
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, conv_stem(inputs, 16, BN, stem=stem))
    # conv kernel (no bias) + BN gamma, beta; + BN moving mean, variance
    assert counts(model) == (kernel * kernel * 3 * 16 + 2 * 16, kernel * kernel * 3 * 16 + 4 * 16)
    assert tuple(model.output.shape) == (None, size, size, 16)  # imagenet: 32 -> conv /2 -> pool /2
    names = [l.name for l in model.layers[1:]]
    assert names == (["stem_conv", "stem_bn", "stem_relu"] if stem == "cifar" else
                     ["stem_pad", "stem_conv", "stem_bn", "stem_relu", "stem_pool_pad", "stem_pool"])


def plain_conv(filters, kernel_size, strides, name):
    return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name)


def block_model(channels, filters, strides, conv=plain_conv):
    inputs = keras.Input((8, 8, channels))
    return keras.Model(inputs, basic_block(inputs, filters, strides, "b", conv, BN))


@pytest.mark.parametrize("channels, filters, strides, projection", [
    (8, 8, 1, False), (8, 8, 2, True), (4, 8, 1, True), (4, 8, 2, True),
])
def test_basic_block_by_hand(channels, filters, strides, projection):
    model = block_model(channels, filters, strides)
    convs = 9 * channels * filters + 9 * filters * filters + (channels * filters if projection else 0)
    bn_channels = filters * (3 if projection else 2)
    assert counts(model) == (convs + 2 * bn_channels, convs + 4 * bn_channels)
    assert tuple(model.output.shape) == (None, 8 // strides, 8 // strides, filters)
    expected = ["b_conv1", "b_bn1", "b_relu1", "b_conv2", "b_bn2", "b_add", "b_out"]
    if projection:
        expected[5:5] = ["b_shortcut_conv", "b_shortcut_bn"]
    assert sorted(l.name for l in model.layers[1:]) == sorted(expected)


def test_basic_block_adds_the_shortcut():
    """Zero residual convs (BN at its initial statistics): the block is ReLU(shortcut)."""
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    identity = block_model(4, 4, 1)
    for name in ("b_conv1", "b_conv2"):
        identity.get_layer(name).kernel.assign(np.zeros((3, 3, 4, 4), "float32"))
    np.testing.assert_allclose(identity(x), np.maximum(x, 0), atol=1e-6)

    projection = block_model(4, 4, 2)  # 1x1 stride-2 shortcut set to the identity: every other pixel
    for name in ("b_conv1", "b_conv2"):
        kernel = projection.get_layer(name).kernel
        kernel.assign(np.zeros(kernel.shape, "float32"))
    projection.get_layer("b_shortcut_conv").kernel.assign(np.eye(4, dtype="float32")[None, None])
    np.testing.assert_allclose(projection(x), np.maximum(x[:, ::2, ::2], 0) / np.sqrt(1 + 1e-5), atol=1e-6)


def test_basic_block_of_grouped_convs_holds_one_block_per_group():
    def grouped_conv(filters, kernel_size, strides, name):
        return GroupedConv2D(filters, kernel_size, strides=strides, padding="same", groups=3, use_bias=False,
                             name=name)

    per_branch = counts(block_model(4, 8, 2))
    assert counts(block_model(3 * 4, 3 * 8, 2, conv=grouped_conv)) == tuple(3 * c for c in per_branch)


# --- DenseNet-BC layout ----------------------------------------------------------------


def test_densenet_bc_layout_gives_the_published_widths():
    # torchvision's densenet121: transitions to 128, 256, 512 channels, a 1024-wide classifier
    layout = densenet_bc_layout([6, 12, 24, 16], growth_rate=32, num_init_features=64, compression=0.5)
    assert [b.transition.out_channels for b in layout[:-1]] == [128, 256, 512]
    assert layout[-1].transition is None and layout[-1].layers[-1].out_channels == 1024
    # DenseNet-BC-100 (k = 12) of Amos & Kolter's CIFAR code: Linear(342, classes)
    layout = densenet_bc_layout([16] * 3, growth_rate=12, num_init_features=24, compression=0.5)
    assert layout[-1].layers[-1].out_channels == 342
    assert [l.prefix for l in layout[1].layers][:2] == ["block2_layer1", "block2_layer2"]
    assert layout[1].transition.prefix == "transition2"
