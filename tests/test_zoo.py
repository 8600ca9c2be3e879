"""The zoo API: list/build/load/model_card, weights fetching and its failures."""

import json
import os

import h5py
import numpy as np
import pytest

import branchzoo
from branchzoo import zoo
from branchzoo._io import sha256_of

TINY_CONFIG = {
    "pathways": [[1, 3], [1, 5]],
    "blocks_per_stage": 1,
    "widths": [4, 4, 8, 8],
    "num_classes": 10,
    "input_shape": [32, 32, 3],
}


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("BRANCHZOO_HOME", str(home))
    monkeypatch.delenv("BRANCHZOO_WEIGHTS_URL", raising=False)
    return home


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch, cache_home):
    """A zoo folder with one entry whose weights file sits beside it."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    model = branchzoo.models.mpnet(**TINY_CONFIG, name="tiny")
    weights = folder / "tiny-v1.weights.h5"
    model.save_weights(str(weights))
    entry = {
        "name": "tiny_test",
        "aliases": ["tiny"],
        "builder": "mpnet",
        "config": TINY_CONFIG,
        "dataset": "digits",
        "recipe": {"dataset": "digits", "epochs": 1, "batch_size": 8, "lr": 0.1},
        "weights": {"file": weights.name, "sha256": sha256_of(weights), "origin": weights.name},
    }
    (folder / "tiny_test.json").write_text(json.dumps(entry))
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(folder))
    zoo.clear_cache()
    yield {"folder": folder, "weights": weights, "model": model, "entry": entry}
    zoo.clear_cache()


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_list_models_patterns():
    names = branchzoo.list_models()
    assert "mpnet2_2x3_2x7_cifar10" in names and "mpnet_tiny_digits" in names
    assert names == sorted(names)
    assert all(n.startswith("mpnet4") for n in branchzoo.list_models("mpnet4*"))
    assert set(branchzoo.list_models("mpnet*cifar10")) == {"mpnet2_2x3_2x7_cifar10", "mpnet2_1x3_2x7_cifar10"}
    assert {"vgg16_cifar10", "resnet34_cifar10", "densenet18_cifar10",
            "modular_cnn_cifar10"} <= set(branchzoo.list_models("*cifar10"))
    pretrained = branchzoo.list_models(pretrained=True)
    assert "mpnet_tiny_digits" in pretrained  # published in zoo_models/
    assert all(branchzoo.model_card(n)["weights"] for n in pretrained)
    assert branchzoo.list_models("no_such*") == []


def test_paper_configurations_registered():
    cards = {n: branchzoo.model_card(n) for n in branchzoo.list_models("mpnet*")}
    configs = {(c["config"]["blocks_per_stage"], tuple(map(tuple, c["config"]["pathways"])))
               for c in cards.values()}
    # MPNet2(1:3x3, 4:7x7), MPNet2(2:3x3, 2:7x7), MPNet4(1:3x3, 4:7x7) (003_..., Sec. 4)
    assert {(2, ((1, 3), (4, 7))), (2, ((2, 3), (2, 7))), (4, ((1, 3), (4, 7)))} <= configs


def test_alias_resolves_to_default_mpnet():
    assert zoo.resolve_name("mpnet") == "mpnet_tiny_digits"
    model = branchzoo.build("mpnet", widths=[4, 4, 4, 4], num_classes=3)
    assert model.name == "mpnet_tiny_digits"
    assert model.output.shape == (None, 3)
    assert [p for p in model.get_layer("stage1_block1").pathways] == [[2, 3], [2, 7]]
    assert branchzoo.model_card("mpnet")["aliases"] == ["mpnet"]


def test_model_card_fields():
    card = branchzoo.model_card("mpnet2_2x3_2x7_cifar10")
    assert card["aliases"] == []
    for key in ("family", "paper", "config", "parameters", "dataset", "recipe", "metrics", "weights"):
        assert key in card
    assert card["family"] == "mpnet"
    assert card["paper"].startswith("003_4bdb2e82324dbf00.txt")
    assert card["weights"] is None and card["metrics"] is None
    card["config"]["widths"] = [1]  # a copy: the zoo is not changed
    assert branchzoo.model_card("mpnet2_2x3_2x7_cifar10")["config"]["widths"] == [64, 128, 256, 512]


def test_mpnet_tiny_digits_count_by_hand():
    """MPNet2(2:3x3, 2:7x7), widths 8/16/32/64, counted from the layout, not the code."""

    def block(c_in, w):  # per pathway: conv k*k*c_in*w, BN (2w), conv k*k*w*w, BN (2w)
        return sum(k * k * (c_in * w + w * w) + 4 * w for k in (3, 7))

    widths = [8, 16, 32, 64]
    stem = 3 * 3 * 3 * 8 + 2 * 8
    stages = sum(block(c_in, w) + block(w, w) for c_in, w in zip([8] + widths[:-1], widths))
    head = 64 * 10 + 10
    assert stem + stages + head == 1_108_978  # also the PyTorch twin's count (benchmarks/)
    bn_moving = 2 * (8 + sum(2 * 2 * 2 * w for w in widths))  # mean + variance per BN channel
    assert branchzoo.model_card("mpnet_tiny_digits")["parameters"] == {
        "trainable": 1_108_978, "total": 1_108_978 + bn_moving}


def assert_card_parameters(name, model):
    """`model`'s trainable and total (with BN moving statistics) parameter counts are its card's."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert branchzoo.model_card(name)["parameters"] == {"trainable": trainable, "total": model.count_params()}, name


def _built_quickly(name):
    """Entries under 1.5M parameters build in about a second; the others run with -m slow."""
    return branchzoo.model_card(name)["parameters"]["total"] < 1_500_000


@pytest.mark.parametrize("name", [n if _built_quickly(n) else pytest.param(n, marks=pytest.mark.slow)
                                  for n in zoo.list_models()])
def test_parameter_count_matches_card(name):
    assert_card_parameters(name, branchzoo.build(name))


def weights_file_layout(path):
    """Every group and dataset of a ``.weights.h5`` file: (path, layer name, shape), in file order."""
    items = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda key, obj: items.append(
            (key, obj.attrs.get("name"), obj.shape if isinstance(obj, h5py.Dataset) else None)))
    return items


@pytest.mark.parametrize("name", zoo.list_models(pretrained=True))
def test_published_weights_fit_the_built_model(name, tmp_path):
    """The builder makes the published model: same layers, names, classes, order and variable shapes.

    The file's layout (one group per layer, in model order, with the layer's name and its
    variables' shapes) is compared with the file the freshly built model writes; `load_weights`
    then loads it. The slow real-data tests check that the loaded weights give the card's numbers.
    """
    published = zoo.fetch_weights(name)
    model = branchzoo.build(name)
    model.save_weights(tmp_path / "built.weights.h5")
    assert weights_file_layout(tmp_path / "built.weights.h5") == weights_file_layout(published)
    model.load_weights(published)
    assert_card_parameters(name, model)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown model name 'mpnet2_2x3_2x7_cifar'.*mpnet2_2x3_2x7_cifar10"):
        branchzoo.build("mpnet2_2x3_2x7_cifar")
    with pytest.raises(ValueError, match="list_models"):
        branchzoo.model_card("resnet50")
    with pytest.raises(TypeError, match="name"):
        branchzoo.load(3)


def test_unpublished_weights_say_how_to_build(cache_home):
    with pytest.raises(ValueError, match=r"no published weights.*weights=None"):
        branchzoo.load("mpnet2_1x3_2x7_cifar10")
    model = branchzoo.load("mpnet2_1x3_2x7_cifar10", weights=None, widths=[4, 4, 4, 4])
    assert model.output.shape == (None, 10)


def test_load_default_weights_from_origin(tiny_zoo, cache_home):
    model = branchzoo.load("tiny")
    assert _same_weights(model, tiny_zoo["model"])
    cached = cache_home / "weights" / tiny_zoo["weights"].name
    assert cached.exists()


def test_load_from_file_url_mirror(tiny_zoo, tmp_path, cache_home, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.replace(tiny_zoo["weights"], mirror / tiny_zoo["weights"].name)  # only the mirror has it
    monkeypatch.setenv("BRANCHZOO_WEIGHTS_URL", mirror.as_uri())
    model = branchzoo.load("tiny_test")
    assert _same_weights(model, tiny_zoo["model"])


def test_corrupt_cached_file_is_fetched_again(tiny_zoo, cache_home):
    cached = cache_home / "weights" / tiny_zoo["weights"].name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not an h5 file")
    model = branchzoo.load("tiny_test")
    assert _same_weights(model, tiny_zoo["model"])
    assert sha256_of(cached) == tiny_zoo["entry"]["weights"]["sha256"]


def test_corrupt_download_is_an_error_and_caches_nothing(tiny_zoo, cache_home):
    good = tiny_zoo["weights"].read_bytes()
    tiny_zoo["weights"].write_bytes(good[:-10] + b"0123456789")  # same size, wrong bytes
    with pytest.raises(ValueError, match="does not match its sha256"):
        branchzoo.load("tiny_test")
    cache = cache_home / "weights"
    assert list(cache.iterdir()) == []  # neither the file nor a temp folder


def test_missing_origin_is_an_error_and_caches_nothing(tiny_zoo, cache_home):
    tiny_zoo["weights"].unlink()
    with pytest.raises(Exception, match="URL fetch failure"):
        branchzoo.load("tiny_test")
    assert list((cache_home / "weights").iterdir()) == []


def test_load_local_weights_path(tiny_zoo, tmp_path):
    local = tmp_path / "local.weights.h5"
    os.replace(tiny_zoo["weights"], local)
    model = branchzoo.load("tiny_test", weights=str(local))
    assert _same_weights(model, tiny_zoo["model"])
    with pytest.raises(FileNotFoundError, match="weights"):
        branchzoo.load("tiny_test", weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="weights"):
        branchzoo.load("tiny_test", weights=3)


def test_entry_validation(tmp_path, monkeypatch):
    folder = tmp_path / "zoo"
    folder.mkdir()
    (folder / "bad.json").write_text(json.dumps({"name": "bad", "builder": "mpnet"}))
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(folder))
    zoo.clear_cache()
    try:
        with pytest.raises(ValueError, match=r"bad.json lacks the keys \['config', 'dataset', 'recipe'\]"):
            branchzoo.list_models()
    finally:
        zoo.clear_cache()


def test_published_weights_reproduce_card_metrics(cache_home):
    """The shipped digits weights give the accuracy their card states."""
    from branchzoo import data

    card = branchzoo.model_card("mpnet_tiny_digits")
    assert card["weights"] and card["metrics"], "run: python -m branchzoo.publish mpnet_tiny_digits"
    model = branchzoo.load("mpnet_tiny_digits")
    ds = data.load_dataset("digits", "test", 128)
    correct = total = 0
    for x, y in ds:
        pred = np.argmax(model.predict_on_batch(x), axis=-1)
        correct += int(np.sum(pred == y.numpy()))
        total += len(pred)
    assert abs(correct / total - card["metrics"]["top1"]) < 1e-3


def test_download_module_fetches_verified_files(tmp_path, cache_home):
    """Fetching lives in branchzoo.download: a file:// origin, checked by sha256."""
    import hashlib

    from branchzoo import download

    source = tmp_path / "w.bin"
    source.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    path = download.fetch_file(source.as_uri(), "w.bin", digest, subdir="t")
    assert open(path, "rb").read() == b"weights"
    with pytest.raises(ValueError, match="does not match its sha256"):
        download.fetch_file(source.as_uri(), "w2.bin", "0" * 64, subdir="t")
    assert sorted(os.listdir(os.path.dirname(path))) == ["w.bin"]  # nothing half-fetched


def test_unpublished_entry_names_its_alternative_and_its_command():
    entry = zoo.get_entry("resnext_gated_cifar100")
    with pytest.raises(ValueError) as info:
        branchzoo.load("resnext_gated_cifar100")
    message = str(info.value)
    assert "no published weights" in message
    assert entry["pretrained_alternative"] in message
    assert "train" in message and "resnext_gated_cifar100" in message
