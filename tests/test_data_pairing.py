"""Class subsets, class-transfer pairs, normalisations and the generic (seed, epoch) stream."""

import os

import numpy as np
import pytest
from data_helpers import (  # noqa: F401  (home: the autouse fixture)
    HAS_REAL_DATA, NO_REAL_DATA, REAL_DATA_DIR, collect, home, make_cifar_python,
)
from PIL import Image

from branchzoo import data


def subset_stats(images):
    """Per-channel mean/std of uint8 images in [0, 1], float64 (independent of the cache code)."""
    unit = images.astype(np.float64) / 255.0
    return unit.mean(axis=(0, 1, 2)), unit.std(axis=(0, 1, 2))


def test_class_subset_relabels_in_the_given_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    expected = make_cifar_python(folder, "cifar10", seed=4, per_file=12)
    rows, labels = expected["train"]
    images, subset_labels, names = data.load_arrays("cifar10", "train", data_dir=folder,
                                                    classes=["dog", "cat"])
    keep = np.isin(labels, [5, 3])  # dog = 5, cat = 3 in CIFAR-10's label order
    assert names == ("dog", "cat")
    np.testing.assert_array_equal(subset_labels, np.where(labels[keep] == 5, 0, 1))
    np.testing.assert_array_equal(
        images, rows[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

    info = data.dataset_info("cifar10", data_dir=folder, classes=["dog", "cat"])
    assert info.num_classes == 2 and info.class_names == ("dog", "cat")
    test_labels = expected["test"][1]
    assert info.num_examples == {"train": int(keep.sum()),
                                 "test": int(np.isin(test_labels, [5, 3]).sum())}
    mean, std = subset_stats(images)
    np.testing.assert_allclose(info.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(info.std, std, rtol=1e-12)
    assert info.options["classes"] == ["dog", "cat"]
    # The full dataset is untouched (and still 10 classes).
    assert data.dataset_info("cifar10", data_dir=folder).num_classes == 10


@pytest.mark.parametrize("classes, words", [
    (["cat", "kat"], ["`classes`", "'kat'", "airplane"]),
    (["cat", "cat"], ["`classes`", "distinct"]),
    ("cat", ["`classes`", "'cat'"]),
    ([], ["`classes`", "non-empty"]),
])
def test_bad_class_subsets_are_named(tmp_path, classes, words):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_python(folder, "cifar10", seed=5, per_file=8)
    with pytest.raises(ValueError) as info:
        data.load_arrays("cifar10", "train", data_dir=folder, classes=classes)
    for word in words:
        assert word in str(info.value)


def paired(ds):
    """(images, source labels, target labels) of a paired stream, concatenated."""
    parts = [(x.numpy(), s.numpy(), t.numpy()) for (x, s), t in ds]
    return tuple(np.concatenate(p) for p in zip(*parts))


def test_paired_stream_targets_another_class_and_keeps_the_plain_stream():
    options = {"classes": ["0", "1", "2"], "seed": 11}
    plain = collect(data.load_dataset("digits", "train", 128, **options))
    images, sources, targets = paired(
        data.load_dataset("digits", "train", 128, pairing="target_class", **options))
    # The (image, source) part is the unpaired stream, batch for batch.
    np.testing.assert_array_equal(images, plain[0])
    np.testing.assert_array_equal(sources, plain[1])
    assert targets.dtype == np.int32
    assert np.all(targets != sources) and set(np.unique(targets)) == {0, 1, 2}
    # Uniform among the other two classes: each alternative about half of the time.
    for source in range(3):
        picks = targets[sources == source]
        share = np.mean(picks == (source + 1) % 3)
        assert 0.35 < share < 0.65, (source, share)


def test_two_classes_pair_each_with_the_other():
    _, sources, targets = paired(data.load_dataset(
        "digits", "test", 64, classes=["7", "1"], pairing="target_class", seed=0))
    np.testing.assert_array_equal(targets, 1 - sources)
    assert set(sources) == {0, 1}


def test_paired_epochs_are_a_pure_function_of_seed_and_epoch():
    args = dict(classes=["3", "5", "8"], pairing="target_class", seed=3)
    ds = data.load_dataset("digits", "train", 200, epochs=3, **args)
    first, again = list(ds), list(ds)
    tail = list(data.load_dataset("digits", "train", 200, epochs=2, initial_epoch=1, **args))
    per_epoch = len(first) // 3
    assert len(first) == 3 * per_epoch and len(tail) == 2 * per_epoch
    for ((xa, sa), ta), ((xb, sb), tb) in zip(first, again):
        np.testing.assert_array_equal(ta.numpy(), tb.numpy())
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
    for ((xa, sa), ta), ((xb, sb), tb) in zip(first[per_epoch:], tail):
        np.testing.assert_array_equal(sa.numpy(), sb.numpy())
        np.testing.assert_array_equal(ta.numpy(), tb.numpy())
    targets = [np.concatenate([t.numpy() for _, t in first[e * per_epoch:(e + 1) * per_epoch]])
               for e in range(2)]
    assert not np.array_equal(targets[0], targets[1])


def make_afhq(root, size=(6, 6)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "wild"):
            os.makedirs(root / split / cls)
            for i in range(2):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"flickr_{cls}_{i:06d}.png")


def test_paired_datasets_pair_by_default(tmp_path):
    make_afhq(tmp_path / "afhq")
    info = data.dataset_info("afhq", data_dir=tmp_path)
    assert info.kind == "paired" and info.class_names == ("cat", "dog", "wild")
    assert info.num_examples == {"train": 6, "test": 6}
    (x, source), target = next(iter(data.load_dataset("afhq", "train", 6, data_dir=tmp_path,
                                                      seed=0, image_size=4)))
    assert tuple(x.shape) == (6, 4, 4, 3) and np.all(source.numpy() != target.numpy())
    x, label = next(iter(data.load_dataset("afhq", "test", 6, data_dir=tmp_path, pairing="none")))
    assert tuple(x.shape) == (6, 6, 6, 3) and tuple(label.shape) == (6,)
    # Any StarGAN-v2-style tree also works as a plain image folder (val/ as the test split).
    folder_info = data.dataset_info("image_folder", data_dir=tmp_path / "afhq")
    assert folder_info.class_names == ("cat", "dog", "wild") and folder_info.kind == "classification"


def test_pairing_needs_two_classes_and_known_values():
    with pytest.raises(ValueError, match="at least 2 classes"):
        data.load_dataset("digits", "train", 8, classes=["4"], pairing="target_class")
    with pytest.raises(ValueError, match="`pairing`.*'cycle'"):
        data.load_dataset("digits", "train", 8, pairing="cycle")


@pytest.mark.parametrize("normalization, expected", [
    ("unit", lambda raw: raw / 255.0),
    ("symmetric", lambda raw: raw / 127.5 - 1.0),
])
def test_normalizations(normalization, expected):
    raw, _, _ = data.load_arrays("digits", "test")
    x, _ = collect(data.load_dataset("digits", "test", 500, normalization=normalization))
    np.testing.assert_allclose(x, expected(raw.astype(np.float64)), atol=1e-6)


def test_epoch_stream_is_generic_and_resumable():
    def example(index, key):
        return index

    ds = data.epoch_stream(10, example, batch_size=4, seed=5, epochs=3)
    epochs = np.concatenate([b.numpy() for b in ds]).reshape(3, 10)
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert len({tuple(e) for e in epochs}) == 3
    tail = data.epoch_stream(10, example, batch_size=4, seed=5, epochs=1, initial_epoch=2)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in tail]), epochs[2])
    unshuffled = data.epoch_stream(10, example, batch_size=4, seed=5, shuffle=False, epochs=1,
                                   drop_remainder=True)
    assert [b.numpy().tolist() for b in unshuffled] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_REAL_DATA, reason=NO_REAL_DATA)
def test_real_cifar10_cat_dog_pairs(monkeypatch, session_home):
    """The GAN's data: cat <-> dog pairs from the real CIFAR-10 through data_dir."""
    monkeypatch.setenv("BRANCHZOO_HOME", session_home)  # decoded once per run, not once per test
    options = {"classes": ["cat", "dog"], "pairing": "target_class"}
    info = data.dataset_info("cifar10", data_dir=REAL_DATA_DIR, **options)
    assert info.kind == "paired" and info.class_names == ("cat", "dog")
    assert info.num_examples == {"train": 10000, "test": 2000}
    (x, source), target = next(iter(data.load_dataset(
        "cifar10", "train", 256, data_dir=REAL_DATA_DIR, seed=0, normalization="symmetric",
        **options)))
    assert tuple(x.shape) == (256, 32, 32, 3)
    assert float(x.numpy().min()) >= -1.0 and float(x.numpy().max()) <= 1.0
    np.testing.assert_array_equal(target.numpy(), 1 - source.numpy())
