"""Distill's branch-specialization analyses (001) and the branched AlexNet / stem / InceptionV1 builders."""

import math

import keras
import numpy as np
import pytest

from branchzoo.analysis.distill import (branch_enrichment_pvalue, connection_matrix, weight_svd,
                                        weight_svd_figure)
from branchzoo.models import alexnet, branched_stem_cnn, inception_v1
from branchzoo.models.alexnet import branch_channels
from branchzoo.models.inception import INCEPTION_V1_BLOCKS, inception_branch_channels

RNG = np.random.default_rng(0)


# -- enrichment p-values: the article's numbers, against math.comb ------------------------


def test_enrichment_pvalues_the_article_quotes():
    # all 9 black-and-white vs colour detectors of mixed3a in mixed3a_5x5 (32 of 256 neurons)
    p = branch_enrichment_pvalue(9, 32, 256)
    assert p == math.comb(32, 9) / math.comb(256, 9)
    assert p < 1e-8
    # all 30 curve-related features of mixed3b in mixed3b_5x5 (96 of 480 neurons)
    p = branch_enrichment_pvalue(30, 96, 480)
    assert p == math.comb(96, 30) / math.comb(480, 30)
    assert p < 1e-20
    # the same, as a product of the draws without replacement: (k/N) ((k-1)/(N-1)) ...
    product = 1.0
    for i in range(9):
        product *= (32 - i) / (256 - i)
    assert branch_enrichment_pvalue(9, 32, 256) == pytest.approx(product, rel=1e-12)


def test_enrichment_tail_and_errors():
    # at least 2 of 3 features in a branch of 4 of 10: [C(4,2) C(6,1) + C(4,3)] / C(10,3) = 40/120
    assert branch_enrichment_pvalue(3, 4, 10, observed=2, exact=True) == pytest.approx(1 / 3)
    assert branch_enrichment_pvalue(3, 4, 10, observed=0) == pytest.approx(1.0)
    assert branch_enrichment_pvalue(3, 2, 10) == 0.0  # 3 features cannot all fit in 2 neurons
    with pytest.raises(ValueError, match=r"`branch_size` must be <= 256. Received: branch_size=300"):
        branch_enrichment_pvalue(9, 300, 256)
    with pytest.raises(ValueError, match=r"`observed` must be <= 9"):
        branch_enrichment_pvalue(9, 32, 256, observed=10)


# -- weight SVD ------------------------------------------------------------------------------


def _two_family_kernels(c1=8, c2=10, seed=1):
    """A second-layer kernel whose first-layer neurons 0..3 feed outputs 0..4, neurons 4..7 outputs 5..9."""
    rng = np.random.default_rng(seed)
    kernel_b = rng.normal(0, 0.05, (3, 3, c1, c2))
    signs = rng.choice([-1.0, 1.0], (3, 3, 4, 5))
    kernel_b[:, :, :4, :5] = signs * rng.uniform(0.5, 1.0, (3, 3, 4, 5))
    kernel_b[:, :, 4:, 5:] = -signs * rng.uniform(0.5, 1.0, (3, 3, 4, 5))
    kernel_a = rng.normal(0, 1, (5, 5, 3, c1))
    return kernel_a, kernel_b


def test_weight_svd_separates_the_two_families():
    kernel_a, kernel_b = _two_family_kernels()
    result = weight_svd(kernel_a, kernel_b)
    u0 = result["left"][:, 0]
    assert np.all(np.sign(u0[:4]) == np.sign(u0[0])) and np.all(np.sign(u0[4:]) == -np.sign(u0[0]))
    assert set(result["order_a"][:4]) in ({0, 1, 2, 3}, {4, 5, 6, 7})
    v0 = result["right"][:, 0]
    assert np.all(np.sign(v0[:5]) == np.sign(u0[0])) and np.all(np.sign(v0[5:]) == -np.sign(u0[0]))
    # |W| summed over positions, by hand; singular values from the eigenvalues of M M^T
    m = np.abs(kernel_b).sum(axis=(0, 1))
    np.testing.assert_allclose(result["matrix"], m)
    centred = m - m.mean(axis=0)
    eig = np.sort(np.linalg.eigvalsh(centred @ centred.T))[::-1]
    np.testing.assert_allclose(result["singular_values"] ** 2, eig[:len(result["singular_values"])],
                               rtol=1e-9, atol=1e-9)
    assert result["explained"][0] > 0.8  # one factor dominates
    plain = weight_svd(kernel_a, kernel_b, center=False)
    assert np.all(plain["left"][:, 0] > 0)  # non-negative matrix: one-signed first vector


def test_weight_svd_grouped_second_layer_and_figure():
    kernel_a = RNG.normal(0, 1, (3, 3, 3, 6))
    kernel_b = RNG.normal(0, 1, (3, 3, 3, 4))  # 2 groups of 3 inputs -> 2 outputs each
    matrix = connection_matrix(kernel_b, in_channels=6)
    assert matrix.shape == (6, 4)
    np.testing.assert_array_equal(matrix[:3, 2:], 0)
    np.testing.assert_array_equal(matrix[3:, :2], 0)
    np.testing.assert_allclose(matrix[3:, 2:], np.abs(kernel_b[:, :, :, 2:]).sum(axis=(0, 1)))
    result = weight_svd(kernel_a, kernel_b)
    assert result["left"].shape == (6, 2) and result["right"].shape == (4, 2)
    assert weight_svd_figure(result, kernel_a).axes
    assert weight_svd_figure(result, branch_of=[0, 0, 0, 1, 1, 1]).axes
    with pytest.raises(ValueError, match="must be a multiple"):
        connection_matrix(kernel_b, in_channels=7)
    with pytest.raises(ValueError, match="`kernel_a` must be a conv kernel"):
        weight_svd(np.zeros(3), kernel_b)


# -- builders --------------------------------------------------------------------------------


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _alexnet_count():
    """The original two-GPU AlexNet, layer by layer (weights + biases)."""
    conv1 = 11 * 11 * 3 * 96 + 96
    conv2 = 5 * 5 * 48 * 256 + 256  # 2 groups
    conv3 = 3 * 3 * 256 * 384 + 384
    conv4 = 3 * 3 * 192 * 384 + 384  # 2 groups
    conv5 = 3 * 3 * 192 * 256 + 256  # 2 groups
    fc6 = 6 * 6 * 256 * 4096 + 4096
    fc7 = 4096 * 4096 + 4096
    fc8 = 4096 * 1000 + 1000
    return conv1 + conv2 + conv3 + conv4 + conv5 + fc6 + fc7 + fc8


def test_alexnet_reference_count_by_hand():
    assert _alexnet_count() == 60_965_224  # the count usually quoted for the original AlexNet


@pytest.mark.slow
def test_alexnet_full_size_count():
    model = alexnet()
    assert _trainable(model) == 60_965_224
    assert model.get_layer("pool5").output.shape == (None, 6, 6, 256)


def test_alexnet_small_layout():
    model = alexnet(num_branches=2, width_multiplier=1 / 16, num_classes=10, input_shape=(67, 67, 3))
    conv1, conv2 = model.get_layer("conv1"), model.get_layer("conv2")
    assert conv1.kernel.shape == (11, 11, 3, 6) and conv1.strides == (4, 4)
    assert conv2.groups == 2 and conv2.kernel.shape == (5, 5, 3, 16)
    assert model.get_layer("conv3").groups == 1 and model.get_layer("conv4").groups == 2
    assert model.output.shape == (None, 10)
    assert branch_channels(6, 2) == [(0, 3), (3, 6)]
    four = alexnet(num_branches=4, later_groups=1, width_multiplier=1 / 16, input_shape=(67, 67, 3))
    assert four.get_layer("conv2").groups == 4 and four.get_layer("conv4").groups == 1
    with pytest.raises(ValueError, match=r"`width_multiplier` must be > 0"):
        alexnet(width_multiplier=0)


def test_branched_stem_cnn_variants():
    two = branched_stem_cnn(2, branch_layers=2, branch_filters=3, trunk_widths=(8, 8), num_classes=5)
    assert two.get_layer("branch_conv1").kernel.shape == (5, 5, 3, 6)
    assert two.get_layer("branch_conv2").groups == 2 and two.get_layer("branch_conv2").kernel.shape == (5, 5, 3, 12)
    assert two.get_layer("branch_pool2").output.shape == (None, 8, 8, 12)
    assert two.output.shape == (None, 5)
    four = branched_stem_cnn(4, branch_layers=1, branch_filters=2, trunk_widths=(8,))
    assert four.get_layer("branch_conv1").kernel.shape == (5, 5, 3, 8)
    # first layer: 5*5*3*8 conv + 2*8 BN; trunk 3*3*8*8 + 2*8; head 8*10 + 10
    assert _trainable(four) == 5 * 5 * 3 * 8 + 16 + 9 * 8 * 8 + 16 + 8 * 10 + 10
    x = RNG.standard_normal((2, 32, 32, 3)).astype("float32")
    assert four(x).shape == (2, 10)
    with pytest.raises(ValueError, match=r"`trunk_widths` must be a non-empty list"):
        branched_stem_cnn(trunk_widths=())


def _change_per_channel(model, layer, branch, channels, num_branches, image):
    """Which output channels of `layer` move when branch `branch`'s first-layer weights move."""
    probe = keras.Model(model.input, model.get_layer(layer).output)
    before = np.asarray(probe(image, training=False))
    conv1, bn1 = model.get_layer("branch_conv1"), model.get_layer("branch_bn1")
    saved = [np.asarray(v).copy() for v in (conv1.kernel, bn1.beta)]
    per_branch = channels // num_branches
    cols = slice(branch * per_branch, (branch + 1) * per_branch)
    kernel, beta = saved[0].copy(), saved[1].copy()
    kernel[..., cols] += RNG.normal(0, 0.5, kernel[..., cols].shape)
    beta[cols] += 1.0
    conv1.kernel.assign(kernel)
    bn1.beta.assign(beta)
    after = np.asarray(probe(image, training=False))
    conv1.kernel.assign(saved[0])
    bn1.beta.assign(saved[1])
    return np.abs(after - before).max(axis=(0, 1, 2)) > 0


def test_branched_stem_4x1_card_keeps_four_branches_apart_for_two_layers():
    import branchzoo

    model = branchzoo.build("branched_stem_4x1_cifar10")
    conv1, conv2 = model.get_layer("branch_conv1"), model.get_layer("branch_conv2")
    assert conv1.kernel.shape == (5, 5, 3, 64)  # 4 branches x 16 filters, each reads the image
    assert conv2.groups == 4 and conv2.kernel.shape == (5, 5, 16, 128)  # 16 -> 32 per branch
    image = RNG.standard_normal((2, 32, 32, 3)).astype("float32")
    for branch in range(4):
        # after layer 2 only the perturbed branch's 32 channels move (no weight between branches) ...
        moved = _change_per_channel(model, "branch_conv2", branch, 64, 4, image)
        assert moved.tolist() == [b == branch for b in range(4) for _ in range(32)]
        # ... and the trunk, which reads all four, mixes them
        assert _change_per_channel(model, "trunk_conv1", branch, 64, 4, image).all()


def _inception_count(num_classes=1000):
    """GoogLeNet (Szegedy et al. 2015, Table 1) without auxiliary heads, weights + biases."""
    count = 7 * 7 * 3 * 64 + 64 + 64 * 64 + 64 + 9 * 64 * 192 + 192
    c_in = 192
    for f1, r3, f3, r5, f5, fp in INCEPTION_V1_BLOCKS.values():
        count += c_in * f1 + f1 + c_in * r3 + r3 + 9 * r3 * f3 + f3
        count += c_in * r5 + r5 + 25 * r5 * f5 + f5 + c_in * fp + fp
        c_in = f1 + f3 + f5 + fp
    return count + c_in * num_classes + num_classes


def test_inception_blocks_match_table1():
    """Weights per block against Szegedy et al. 2015, Table 1 (in units of 1024).

    The table's own filter counts do not reproduce all of its parameter
    column (mixed4c: 497.5K from the filters, 463K listed; mixed5a: 1018K
    vs 1072K), so each block is checked to 8% and the sum to 1%.
    """
    table1 = {"mixed3a": 159, "mixed3b": 380, "mixed4a": 364, "mixed4b": 437, "mixed4c": 463,
              "mixed4d": 580, "mixed4e": 840, "mixed5a": 1072, "mixed5b": 1388}
    c_in, total = 192, 0
    for block, (f1, r3, f3, r5, f5, fp) in INCEPTION_V1_BLOCKS.items():
        weights = c_in * (f1 + r3 + r5 + fp) + 9 * r3 * f3 + 25 * r5 * f5
        assert weights / 1024 == pytest.approx(table1[block], rel=0.08), block
        total += weights
        c_in = f1 + f3 + f5 + fp
    assert total / 1024 == pytest.approx(sum(table1.values()), rel=0.01)
    assert c_in == 1024
    assert _inception_count() == 6_998_552


@pytest.mark.slow
def test_inception_v1_full_count():
    model = inception_v1()
    assert _trainable(model) == _inception_count()
    assert model.get_layer("mixed5b").output.shape == (None, 7, 7, 1024)


def test_inception_v1_named_branches_small():
    model = inception_v1(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1 / 8)
    assert model.get_layer("mixed3a").output.shape[-1] == 8 + 16 + 4 + 4
    assert model.get_layer("mixed3a_5x5_pre_relu").kernel.shape == (5, 5, 2, 4)
    assert model.get_layer("mixed3b_5x5").output.shape[-1] == 12
    assert inception_branch_channels("mixed3a") == {"1x1": (0, 64), "3x3": (64, 192), "5x5": (192, 224),
                                                    "pool_reduce": (224, 256)}
    assert inception_branch_channels("mixed3b")["5x5"] == (320, 416)  # 96 of 480, the article's branch
    assert _trainable(model) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    names = {l.name for l in model.layers}
    for block in INCEPTION_V1_BLOCKS:
        for branch in ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool", "pool_reduce"):
            assert f"{block}_{branch}" in names
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 10)
    bn = inception_v1(num_classes=10, input_shape=(32, 32, 3), width_multiplier=1 / 8, batch_norm=True)
    assert bn.get_layer("mixed3a_5x5_bn") is not None and not bn.get_layer("mixed3a_5x5_pre_relu").use_bias


def test_zoo_cards_match_the_reference_counts():
    import branchzoo

    assert branchzoo.model_card("alexnet_2branch_imagenet")["parameters"]["trainable"] == _alexnet_count()
    assert branchzoo.model_card("inception_v1_imagenet")["parameters"]["trainable"] == _inception_count()
    four = branchzoo.model_card("branched_stem_4x1_cifar10")
    # 5x5x3x64 first layer + BN; 4 grouped 5x5 16->32 + BN; trunk 3x3 128->128 + BN, 128->256 + BN;
    # head 256x10 + 10
    assert four["parameters"]["trainable"] == (5 * 5 * 3 * 64 + 128 + 4 * 25 * 16 * 32 + 256
                                               + 9 * 128 * 128 + 256 + 9 * 128 * 256 + 512 + 2570)
