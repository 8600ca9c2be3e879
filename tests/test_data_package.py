"""branchzoo.data as a package: one spec per dataset, the registry, no zoo import."""

import ast
import dataclasses
import glob
import os

import numpy as np
import pytest
from data_helpers import home, make_image_folder  # noqa: F401  (home: the autouse fixture)

from branchzoo import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path):
    """Every module `path` imports (``from a.b import c`` gives a.b and a.b.c)."""
    modules = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_data_does_not_import_the_zoo():
    files = sorted(glob.glob(os.path.join(REPO, "branchzoo", "data.py"))
                   + glob.glob(os.path.join(REPO, "branchzoo", "data", "**", "*.py"), recursive=True))
    assert files
    for path in files:
        modules = imported_modules(path)
        assert not {"branchzoo.zoo", "branchzoo.zoo.branchzoo_home"} & modules, path
    # zoo.branchzoo_home stays available, as the one shared function.
    from branchzoo import _home, zoo

    assert zoo.branchzoo_home is _home.branchzoo_home


def test_data_is_a_package_of_small_modules():
    folder = os.path.join(REPO, "branchzoo", "data")
    assert os.path.isfile(os.path.join(folder, "__init__.py"))
    for path in glob.glob(os.path.join(folder, "**", "*.py"), recursive=True):
        with open(path) as f:
            assert sum(1 for _ in f) < 400, path


def test_public_api_stays_importable():
    from branchzoo.data import (  # noqa: F401
        DATA_DIR_ENV, DATASETS, SPLITS, DatasetInfo, DatasetNotFoundError, clear_cache,
        dataset_info, load_arrays, load_dataset,
    )

    assert DATA_DIR_ENV == "BRANCHZOO_DATA_DIR" and SPLITS == ("train", "test")
    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder"):
        assert name in DATASETS
    assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_one_spec_per_dataset_holds_what_the_tables_held():
    assert set(data.list_datasets()) >= set(data.DATASETS)
    for name in data.DATASETS:
        spec = data.get_spec(name)
        assert spec.name == name and spec.kind in data.KINDS
    cifar10 = data.get_spec("CIFAR-10".replace("-", ""))
    # Krizhevsky (2009), batches.meta order.
    assert cifar10.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                   "horse", "ship", "truck")
    assert [layout.name for layout in cifar10.layouts] == ["cifar_python", "image_folder"]
    assert cifar10.tfds_name == "cifar10" and cifar10.flippable
    # Flipped digits change meaning; clothes and objects do not.
    assert {n for n in data.DATASETS if data.get_spec(n).flippable} >= {
        "fashion_mnist", "cifar10", "cifar100", "image_folder", "imagenette"}
    assert not data.get_spec("digits").flippable and not data.get_spec("mnist").flippable
    assert data.get_spec("image_folder").class_names is None
    assert data.get_spec("fashion_mnist").class_names[-1] == "Ankle boot"
    assert len(data.get_spec("cifar100").class_names) == 100
    assert data.list_datasets("synthetic") == ["toy_xor1d", "toy_regression1d"]
    assert set(data.list_datasets("paired")) == {"afhq", "celeba_hq"}


def test_child_patterns_tell_similar_names_apart():
    cifar10, imagenette = data.get_spec("cifar10"), data.get_spec("imagenette")
    assert cifar10.matches_child("cifar-10-batches-py") and cifar10.matches_child("CIFAR10")
    assert not cifar10.matches_child("cifar-100-python")
    for entry in ("imagenette2-160", "imagenette2-320.tgz", "imagenette2", "Imagenette"):
        assert imagenette.matches_child(entry), entry
    assert not imagenette.matches_child("imagewoof2-160")


def test_a_registered_spec_is_a_dataset_like_the_others(tmp_path, monkeypatch):
    from branchzoo.data import specs

    root = tmp_path / "pets"
    written = make_image_folder(root, classes=("dog", "ant"), per_class=2, size=(4, 4))
    spec = dataclasses.replace(data.get_spec("image_folder"), name="pets", class_names=("dog", "ant"))
    monkeypatch.setitem(specs._SPECS, "pets", spec)  # registered, and removed after the test
    images, labels, names = data.load_arrays("pets", "train", data_dir=root)
    # The spec's class order, not the sorted folders'.
    assert names == ("dog", "ant")
    np.testing.assert_array_equal(labels, [1, 1, 0, 0])
    np.testing.assert_array_equal(images[0], written[str(root / "train" / "ant" / "000.png")])
    with pytest.raises(ValueError, match="already registered"):
        data.register_dataset(spec)


@pytest.mark.parametrize("kwargs, words", [
    ({"spec": dict(name="Bad Name", kind="classification", reader=print)}, ["`name`", "'Bad Name'"]),
    ({"spec": dict(name="x", kind="video", reader=print)}, ["`kind`", "'video'"]),
    ({"spec": dict(name="x", kind="classification")}, ["layouts", "reader"]),
])
def test_bad_specs_are_named(kwargs, words):
    with pytest.raises(ValueError) as info:
        data.DatasetSpec(**kwargs["spec"])
    for word in words:
        assert word in str(info.value)


def test_unknown_dataset_parameters_are_named():
    with pytest.raises(ValueError) as info:
        data.dataset_info("digits", img_size=16)
    for word in ("img_size", "image_size", "digits", "16"):
        assert word in str(info.value)
    with pytest.raises(ValueError, match="`image_size`.*Received: image_size=0"):
        data.load_dataset("digits", "train", 8, image_size=0)
    with pytest.raises(ValueError, match="`normalization`.*'zscore'"):
        data.load_dataset("digits", "train", 8, normalization="zscore")


@pytest.mark.parametrize("name, options", [
    ("digits", {"classes": ["9", "2"], "image_size": [16, 12]}),
    ("toy_regression1d", {"num_points": 5, "sampling": "uniform", "data_seed": 3}),
])
def test_info_options_reload_the_same_data(name, options):
    """A run config can store info.options (JSON) and get the same data back on resume."""
    import json

    info = data.dataset_info(name, **options)
    stored = json.loads(json.dumps(info.options))
    assert data.dataset_info(name, **stored) == info
    again = data.load_arrays(name, "train", **stored)
    first = data.load_arrays(name, "train", **options)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
