"""Image folders of mixed sizes, `image_size`, and the imagenette dataset."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from data_helpers import home, make_image_folder  # noqa: F401  (home: the autouse fixture)
from PIL import Image

from branchzoo import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# From the Imagenette README: WordNet id -> class, in label order.
WNIDS = [
    ("n01440764", "tench"), ("n02102040", "English springer"), ("n02979186", "cassette player"),
    ("n03000684", "chain saw"), ("n03028079", "church"), ("n03394916", "French horn"),
    ("n03417042", "garbage truck"), ("n03425413", "gas pump"), ("n03445777", "golf ball"),
    ("n03888605", "parachute"),
]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def make_imagenette(root, per_class=(2, 1), size_range=((20, 36), (24, 44)), seed=0):
    """imagenette2-160-like train/<wnid>/*.JPEG and val/<wnid>/*.JPEG of mixed sizes.

    Returns {path: label} with labels in WNIDS order.
    """
    rng = np.random.default_rng(seed)
    labels = {}
    for split, count in zip(("train", "val"), per_class):
        for label, (wnid, _) in enumerate(WNIDS):
            os.makedirs(root / split / wnid, exist_ok=True)
            for i in range(count):
                height = int(rng.integers(*size_range[0]))
                width = int(rng.integers(*size_range[1]))
                # A flat colour per image: JPEG keeps it and any resize keeps it.
                pixels = np.empty((height, width, 3), np.uint8)
                pixels[:] = rng.integers(0, 256, 3, dtype=np.uint8)
                path = root / split / wnid / f"{wnid}_{i}.JPEG"
                Image.fromarray(pixels).save(path, quality=95)
                labels[str(path)] = (label, pixels[0, 0])
    return labels


def bands(height, width, horizontal):
    """Red / green / blue bands: 1/5, 3/5, 1/5 of the width (or of the height)."""
    pixels = np.empty((height, width, 3), np.uint8)
    length = width if horizontal else height
    edges = [0, length // 5, length - length // 5, length]
    for colour, start, stop in zip((RED, GREEN, BLUE), edges[:-1], edges[1:]):
        if horizontal:
            pixels[:, start:stop] = colour
        else:
            pixels[start:stop] = colour
    return pixels


def test_fit_image_resizes_the_shorter_side_and_crops_the_centre():
    # 20x40 -> shorter side 10: 10x20, whose centre 10x10 is the green band only.
    wide = data.fit_image(bands(20, 40, horizontal=True), (10, 10))
    assert wide.shape == (10, 10, 3)
    np.testing.assert_allclose(wide.reshape(-1, 3), np.tile(GREEN, (100, 1)), atol=2)
    tall = data.fit_image(bands(40, 20, horizontal=False), (10, 10))
    np.testing.assert_allclose(tall.reshape(-1, 3), np.tile(GREEN, (100, 1)), atol=2)
    # Upscaling works the same way; an image of the target size is kept bit for bit.
    assert data.fit_image(bands(5, 7, True), (12, 12)).shape == (12, 12, 3)
    same = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.fit_image(same, (6, 9)), same)
    # A non-square target: covering (8, 4) scales 20x40 by 0.4 to 8x16; columns 6..9 are kept.
    cropped = data.fit_image(bands(20, 40, horizontal=True), (8, 4))
    np.testing.assert_allclose(cropped.reshape(-1, 3), np.tile(GREEN, (32, 1)), atol=2)


def test_mixed_sizes_without_image_size_name_the_fix(tmp_path):
    root = tmp_path / "mixed"
    make_image_folder(root, classes=("a", "b"), per_class=1, size=(5, 6))
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "test" / "b" / "big.png")
    with pytest.raises(ValueError, match="share one size") as info:
        data.load_arrays("image_folder", "train", data_dir=root)
    assert "9x9" in str(info.value) and "image_size=" in str(info.value)

    images, labels, _ = data.load_arrays("image_folder", "test", data_dir=root, image_size=(4, 3))
    assert images.shape == (3, 4, 3, 3)
    np.testing.assert_array_equal(labels, [0, 1, 1])
    # The all-black 9x9 image (test/b/big.png, sorted last) stays black; the cache is per size.
    assert images[2].max() == 0
    other = data.load_arrays("image_folder", "test", data_dir=root, image_size=5)[0]
    assert other.shape == (3, 5, 5, 3)
    assert len(os.listdir(data_home_datasets())) == 2


def data_home_datasets():
    return os.path.join(os.environ["BRANCHZOO_HOME"], "datasets")


def test_imagenette_folder_of_mixed_sizes(tmp_path):
    written = make_imagenette(tmp_path / "imagenette2-160")
    info = data.dataset_info("imagenette", data_dir=tmp_path, image_size=12)
    assert info.class_names == tuple(name for _, name in WNIDS)
    assert info.image_shape == (12, 12, 3) and info.num_classes == 10
    assert info.num_examples == {"train": 20, "test": 10}  # val/ is the test split
    assert info.options["image_size"] == [12, 12]
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels, _ = data.load_arrays("imagenette", split, data_dir=tmp_path, image_size=12)
        paths = sorted(p for p in written if f"{os.sep}{folder}{os.sep}" in p)
        np.testing.assert_array_equal(labels, [written[p][0] for p in paths])
        for image, path in zip(images, paths):
            np.testing.assert_allclose(image.reshape(-1, 3).astype(float),
                                       np.tile(written[path][1], (144, 1)), atol=3)
    x, y = next(iter(data.load_dataset("imagenette", "train", 8, data_dir=tmp_path, image_size=12,
                                       seed=0)))
    assert tuple(x.shape) == (8, 12, 12, 3) and y.dtype.name == "int32"


def test_imagenette_defaults_to_160_px(tmp_path):
    make_imagenette(tmp_path / "imagenette2-160", per_class=(1, 1),
                    size_range=((160, 161), (200, 240)))
    info = data.dataset_info("imagenette", data_dir=tmp_path / "imagenette2-160")
    assert info.image_shape == (160, 160, 3)


def test_imagenette_needs_its_ten_classes(tmp_path):
    root = tmp_path / "imagenette2-160"
    make_image_folder(root, classes=("a", "b"), per_class=1)
    os.rename(root / "test", root / "val")
    with pytest.raises(ValueError, match="must hold 10 class folders"):
        data.dataset_info("imagenette", data_dir=root, image_size=4)
    with pytest.raises(data.DatasetNotFoundError, match="data_dir"):
        data.dataset_info("imagenette")


IMAGENETTE_ENTRIES = sorted(glob_name for glob_name in os.listdir(os.path.join(REPO, "zoo_models"))
                            if glob_name.endswith("_imagenette.json"))


@pytest.mark.parametrize("entry", IMAGENETTE_ENTRIES)
def test_imagenette_zoo_recipes_train_on_imagenette_at_the_card_size(entry, tmp_path):
    with open(os.path.join(REPO, "zoo_models", entry)) as f:
        card = json.load(f)
    recipe = card["recipe"]
    assert recipe["dataset"] == "imagenette" == card["dataset"]
    assert "--dataset imagenette" in recipe["command"]
    options = recipe["dataset_options"]
    stated = re.search(r"(\d+) px", card["description"])
    # The card's stated resolution (paper Sec. 4.1: 250 px; Fig. 6b: 160 px), else 160.
    assert options["image_size"] == (int(stated.group(1)) if stated else 160)
    make_imagenette(tmp_path / "imagenette2-320", per_class=(1, 1),
                    size_range=((250, 262), (250, 330)))
    info = data.dataset_info(recipe["dataset"], data_dir=tmp_path, **options)
    size = options["image_size"]
    assert info.image_shape == (size, size, 3) and info.num_classes == card["config"]["num_classes"]


def test_imagenette_entries_exist():
    assert len(IMAGENETTE_ENTRIES) == 5


@pytest.mark.slow
def test_train_cli_on_an_imagenette_folder(tmp_path):
    """train.py --dataset imagenette --data-dir DIR: a tiny MPNet, one step, at 160 px."""
    make_imagenette(tmp_path / "data" / "imagenette2-160", per_class=(2, 1),
                    size_range=((160, 161), (170, 240)))
    out = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--model", "mpnet", "--dataset",
         "imagenette", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
         "--steps-per-epoch", "1", "--batch-size", "4", "--no-validate", "--output", str(out),
         "--model-kwargs", "widths=[4,4,8,8]"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["dataset"] == "imagenette"
    assert config["resolved_model_config"]["input_shape"] == [160, 160, 3]
    assert config["resolved_model_config"]["num_classes"] == 10
    with open(out / "metrics.json") as f:
        assert 0.0 <= json.load(f)["top1"] <= 1.0
