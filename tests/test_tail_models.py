"""The tail-pattern models of Richter et al. (2022), Sec. 3: VGG16, ResNet34, DenseNet18.

Parameter counts are checked against hand counts; the hand-count formulas are
themselves checked against torchvision's published ImageNet counts
(ResNet34: 21,797,672; DenseNet121: 7,978,856), whose layouts these follow.
"""

import numpy as np
import pytest

import branchzoo
from branchzoo.analysis import analysis_layers
from branchzoo.models import densenet, densenet18, resnet, resnet34, vgg, vgg16
from branchzoo.models.vgg import VGG16_STAGES


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def bn(c):
    return 2 * c  # gamma, beta (trainable)


def hand_vgg(stages, classes, head_units=None):
    total, c = 0, 3
    for stage in stages:
        for w in stage:
            total += 9 * c * w + w + bn(w)
            c = w
    u = head_units or c // 2
    return total + bn(c) + c * u + u + bn(u) + u * classes + classes


def hand_resnet(blocks, widths, classes, stem="imagenet"):
    total = (49 if stem == "imagenet" else 9) * 3 * widths[0] + bn(widths[0])
    c = widths[0]
    for s, (count, w) in enumerate(zip(blocks, widths)):
        for b in range(count):
            stride = 2 if s > 0 and b == 0 else 1
            total += 9 * c * w + bn(w) + 9 * w * w + bn(w)
            if stride != 1 or c != w:
                total += c * w + bn(w)
            c = w
    return total + c * classes + classes


def hand_densenet(blocks, growth, init, classes, bn_size=4):
    total = 49 * 3 * init + bn(init)
    c = init
    for s, count in enumerate(blocks):
        for _ in range(count):
            total += bn(c) + c * bn_size * growth + bn(bn_size * growth) + 9 * bn_size * growth * growth
            c += growth
        if s < len(blocks) - 1:
            total += bn(c) + c * (c // 2)
            c //= 2
    return total + bn(c) + c * classes + classes


def test_hand_counts_reproduce_torchvision():
    assert hand_resnet([3, 4, 6, 3], [64, 128, 256, 512], 1000) == 21_797_672
    assert hand_densenet([6, 12, 24, 16], 32, 64, 1000) == 7_978_856


@pytest.mark.slow
def test_resnet34_parameter_count_matches_hand_count():
    model = resnet34()
    assert model.name == "resnet34"
    assert trainable(model) == hand_resnet([3, 4, 6, 3], [64, 128, 256, 512], 10) == 21_289_802


@pytest.mark.parametrize(
    "name, expected",
    [
        ("vgg16_cifar10", hand_vgg(VGG16_STAGES, 10)),
        ("resnet34_cifar10", hand_resnet([3, 4, 6, 3], [64, 128, 256, 512], 10)),
        ("densenet18_cifar10", hand_densenet([4, 4, 4, 4], 32, 64, 10)),
    ],
)
def test_zoo_cards_carry_the_hand_counts(name, expected):
    card = branchzoo.model_card(name)
    assert card["parameters"]["trainable"] == expected
    assert card["paper"].startswith("003_4bdb2e82324dbf00.txt, Sec. 3")
    assert card["family"] in ("vgg", "resnet", "densenet")


@pytest.mark.parametrize(
    "factory, kwargs, expected",
    [
        (vgg16, {"width_multiplier": 1 / 16}, hand_vgg([[4, 4], [8, 8], [16] * 3, [32] * 3, [32] * 3], 10)),
        (vgg, {"stages": [[3], [5, 6]], "head_units": 7, "num_classes": 4}, hand_vgg([[3], [5, 6]], 4, 7)),
        (resnet34, {"width_multiplier": 1 / 16}, hand_resnet([3, 4, 6, 3], [4, 8, 16, 32], 10)),
        (resnet, {"blocks_per_stage": [1, 2], "widths": [3, 3], "stem": "cifar", "num_classes": 5},
         hand_resnet([1, 2], [3, 3], 5, stem="cifar")),
        (densenet18, {"width_multiplier": 1 / 8}, hand_densenet([4, 4, 4, 4], 4, 8, 10)),
        (densenet, {"blocks": [2, 3], "growth_rate": 3, "num_init_features": 5, "num_classes": 7},
         hand_densenet([2, 3], 3, 5, 7)),
    ],
)
def test_small_models_match_hand_counts(factory, kwargs, expected):
    assert trainable(factory(**kwargs)) == expected


def test_imagenet_stem_on_32x32_shrinks_to_1x1_as_in_the_reference():
    model = resnet34(width_multiplier=1 / 16)
    sides = [model.get_layer(f"stage{s}_block1_out").output.shape[1] for s in range(1, 5)]
    assert sides == [8, 4, 2, 1]  # 32 -> 16 (conv) -> 8 (pool) -> 8, 4, 2, 1
    cifar = resnet34(width_multiplier=1 / 16, stem="cifar")
    assert [cifar.get_layer(f"stage{s}_block1_out").output.shape[1] for s in range(1, 5)] == [32, 16, 8, 4]
    assert "stem_pool" not in [l.name for l in cifar.layers]
    dn = densenet18(width_multiplier=1 / 8)
    assert [dn.get_layer(f"block{s}_layer4_concat").output.shape[1] for s in range(1, 5)] == [8, 4, 2, 1]
    assert dn.get_layer("block1_layer4_concat").output.shape[-1] == 8 + 4 * 4
    net = vgg16(width_multiplier=1 / 16)
    assert [net.get_layer(f"stage{s}_pool").output.shape[1] for s in range(1, 6)] == [16, 8, 4, 2, 1]
    assert dn(np.zeros((2, 32, 32, 3), "float32")).shape == (2, 10)


def test_tail_models_have_no_pathways_for_the_analyses():
    infos = analysis_layers(resnet34(width_multiplier=1 / 16))
    assert {i.pathway for i in infos} == {"main"}
    kinds = {i.name: i.kind for i in infos}
    assert kinds["stem_conv"] == "conv" and kinds["stage2_block1_shortcut_conv"] == "conv"
    assert kinds["stage1_block1_add"] == "sum"
    assert "predictions" not in kinds  # the output layer is the model itself
    assert "head_dense" in {i.name for i in analysis_layers(vgg16(width_multiplier=1 / 16))}


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (vgg, {"width_multiplier": 0}, r"`width_multiplier` must be a positive number. Received: width_multiplier=0"),
        (vgg, {"stages": [[4], []]}, r"Received: stages\[1\]=\[\]"),
        (vgg, {"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
        (resnet, {"stem": "tiny"}, r"`stem` must be 'imagenet' or 'cifar'. Received: stem='tiny'"),
        (resnet, {"blocks_per_stage": [1, 1], "widths": [4]}, r"one entry per stage"),
        (resnet, {"widths": [4, 4, 0, 4]}, r"`widths\[2\]` must be >= 1"),
        (densenet, {"compression": 0}, r"`compression` must be in \(0, 1\]"),
        (densenet, {"blocks": [2, 0]}, r"`blocks\[1\]` must be >= 1"),
        (densenet, {"input_shape": (32, 32)}, r"`input_shape` must be \(height, width, channels\)"),
    ],
)
def test_bad_arguments_name_the_argument(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)
