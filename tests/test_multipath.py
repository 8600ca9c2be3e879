"""MultiPathBlock, the MPNet builder and the feature extractor analysis code uses."""

import json

import keras
import numpy as np
import pytest

from branchzoo.analysis import feature_model, feature_names
from branchzoo.layers import MultiPathBlock
from branchzoo.models import mpnet
from branchzoo.models.mpnet import mpnet_title

RNG = np.random.default_rng(0)


def test_block_is_the_sum_of_its_pathways():
    block = MultiPathBlock(6, [[2, 3], [1, 5], [1, 1]])
    x = RNG.standard_normal((2, 9, 9, 4)).astype("float32")
    y, inner = block(x, training=False, return_intermediates=True)
    assert y.shape == (2, 9, 9, 6)
    expected = inner["path1_relu2"] + inner["path2_relu1"] + inner["path3_relu1"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(inner["sum"]), np.asarray(y))
    # Recompute pathway 2 by hand from its sublayers.
    conv, bn, relu = block.paths[1][0]
    manual = relu(bn(conv(x), training=False))
    np.testing.assert_allclose(np.asarray(inner["path2_relu1"]), np.asarray(manual), rtol=1e-6)
    assert conv.name == "path2_conv1" and conv.kernel.shape == (5, 5, 4, 6)
    assert not conv.use_bias


def test_block_stride_on_last_layer_of_each_pathway():
    block = MultiPathBlock(3, [[3, 3], [1, 7]], strides=2)
    x = np.zeros((1, 16, 16, 2), "float32")
    _, inner = block(x, return_intermediates=True)
    assert inner["path1_conv1"].shape == (1, 16, 16, 3)
    assert inner["path1_conv2"].shape == (1, 16, 16, 3)
    assert inner["path1_conv3"].shape == (1, 8, 8, 3)
    assert inner["path2_conv1"].shape == (1, 8, 8, 3)
    assert block.paths[0][2][0].strides == (2, 2) and block.paths[0][0][0].strides == (1, 1)


def test_block_config_round_trip():
    block = MultiPathBlock(5, [[2, 3], [2, 7]], strides=2, kernel_regularizer="l2",
                           bn_momentum=0.8, name="blk")
    config = block.get_config()
    clone = MultiPathBlock.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)
    assert config["pathways"] == [[2, 3], [2, 7]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 0, "pathways": [[1, 3]]}, r"`filters` must be >= 1. Received: filters=0"),
        ({"filters": 4, "pathways": []}, r"`pathways` must be a non-empty list"),
        ({"filters": 4, "pathways": [[1, 3, 5]]}, r"pathways\[0\]=\[1, 3, 5\]"),
        ({"filters": 4, "pathways": [[0, 3]]}, r"pathways\[0\]\[0\] \(num_layers\)` must be >= 1"),
        ({"filters": 4, "pathways": [[1, 2.5]]}, r"kernel_size\)` must be an integer. Received: .*2.5"),
        ({"filters": 4, "pathways": "3x3"}, r"Received: pathways='3x3'"),
    ],
)
def test_block_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiPathBlock(**kwargs)


def test_mpnet_layout_follows_reference_code():
    model = mpnet([[2, 3], [2, 7]], blocks_per_stage=2, widths=(4, 8, 16, 32), num_classes=7)
    assert model.name == "mpnet2_2x3_2x7"
    assert mpnet_title(2, [[2, 3], [2, 7]]) == "MPNet2(2:3x3, 2:7x7)"
    names = [l.name for l in model.layers]
    assert names[:4] == ["images", "stem_conv", "stem_bn", "stem_relu"]
    assert names[4:12] == [f"stage{s}_block{b}" for s in range(1, 5) for b in (1, 2)]
    assert names[-2:] == ["avg_pool", "predictions"]
    # Stride 2 only in the last block of each stage: 32 -> 16 -> 8 -> 4 -> 2.
    shapes = [model.get_layer(f"stage{s}_block{b}").output.shape for s in range(1, 5) for b in (1, 2)]
    assert [s[1] for s in shapes] == [32, 16, 16, 8, 8, 4, 4, 2]
    assert [s[3] for s in shapes] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert model.get_layer("stem_conv").kernel.shape == (3, 3, 3, 4)
    assert model.output.shape == (None, 7)
    assert model.get_layer("predictions").activation is keras.activations.linear


def test_mpnet_any_number_of_pathways_and_parameter_count():
    model = mpnet([[1, 3], [1, 5], [2, 1]], blocks_per_stage=1, widths=(2, 2, 2, 2),
                  num_classes=3, input_shape=(None, None, 1))
    block = model.get_layer("stage2_block1")
    assert len(block.paths) == 3
    # stem 3*3*1*2 + BN; per block: 3x3 + 5x5 + two 1x1 convs (2->2) + 4 BNs
    per_block = (9 + 25 + 1 + 1) * 4 + 4 * 4
    expected_trainable = 18 + 4 + 4 * per_block + (2 * 3 + 3)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == expected_trainable
    assert model(np.zeros((1, 40, 24, 1), "float32")).shape == (1, 3)


def test_mpnet_bad_arguments():
    with pytest.raises(ValueError, match="blocks_per_stage"):
        mpnet(blocks_per_stage=0)
    with pytest.raises(ValueError, match=r"widths\[1\]"):
        mpnet(widths=(8, -1))
    with pytest.raises(ValueError, match="input_shape"):
        mpnet(input_shape=(32, 32))


def test_feature_model_exposes_every_pathway_layer():
    model = mpnet([[1, 3], [2, 5]], blocks_per_stage=1, widths=(4, 4, 8, 8))
    names = feature_names(model)
    assert names[:3] == ["stem_conv", "stem_bn", "stem_relu"]
    for s in range(1, 5):
        block = f"stage{s}_block1"
        for layer in ("path1_conv1", "path2_conv1", "path2_conv2", "path2_relu2", "sum"):
            assert f"{block}/{layer}" in names
    extractor = feature_model(model, ["*conv*", "*/sum"])
    assert len(extractor.output) == 1 + 4 * 3 + 4
    x = RNG.standard_normal((3, 32, 32, 3)).astype("float32")
    feats = extractor.predict(x, verbose=0)
    # Same numbers as the model's own layers (shared weights, inference mode).
    block_out = keras.Model(model.input, model.get_layer("stage3_block1").output)(x, training=False)
    np.testing.assert_allclose(feats["stage3_block1/sum"], np.asarray(block_out), rtol=1e-5, atol=1e-6)
    assert feats["stage3_block1/path2_conv2"].shape == (3, 4, 4, 8)
    assert len(extractor.trainable_weights) == len(model.trainable_weights) - 2  # head unused
    with pytest.raises(ValueError, match="No feature matches"):
        feature_model(model, "nothing*")
