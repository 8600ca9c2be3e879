"""Tests of branchzoo.data: readers, source resolution, the cache and the tf.data pipeline.

Every test gets its own cache (BRANCHZOO_HOME) and no BRANCHZOO_DATA_DIR; the
small datasets the readers see are written by the tests themselves. The
`realdata` tests read BRANCHZOO_DATA_DIR as it was when pytest started, and
the session's cache (conftest.session_home), where the real datasets are
decoded once per run.
"""

import dataclasses
import os
import pickle
import socket
import tarfile

import numpy as np
import pytest
from data_helpers import (  # noqa: F401  (home: the autouse fixture)
    HAS_REAL_DATA, NO_REAL_DATA, REAL_DATA_DIR, cache_files, collect, home, make_cifar_python,
    make_idx_dataset, make_image_folder, make_tar, write_idx,
)
from PIL import Image

from branchzoo import data
from branchzoo.data import sources, specs


# --- IDX ----------------------------------------------------------------------------


def test_idx_reader_reads_gzipped_and_raw_files(tmp_path):
    expected = make_idx_dataset(tmp_path / "mnist", seed=1, gz_train=True, gz_test=False)
    for split in ("train", "test"):
        images, labels, class_names = data.load_arrays("mnist", split, data_dir=tmp_path / "mnist")
        assert images.dtype == np.uint8 and images.shape == (len(expected[split][0]), 7, 5, 1)
        np.testing.assert_array_equal(images[..., 0], expected[split][0])
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, expected[split][1])
        assert class_names == tuple(str(i) for i in range(10))
    info = data.dataset_info("fashion_mnist", data_dir=tmp_path / "mnist")
    assert info.class_names[0] == "T-shirt/top" and info.num_examples == {"train": 6, "test": 4}


@pytest.mark.parametrize("problem", ["bad_magic", "truncated", "missing", "label_range"])
def test_idx_reader_errors_name_the_file(tmp_path, problem):
    folder = tmp_path / "mnist"
    make_idx_dataset(folder, seed=2, gz_train=False)
    images_file = folder / "train-images-idx3-ubyte"
    if problem == "bad_magic":
        write_idx(images_file, np.zeros((6, 7, 5)), gz=False, magic=2049)
        error, words = ValueError, ["train-images-idx3-ubyte", "2051", "2049"]
    elif problem == "truncated":
        images_file.write_bytes(images_file.read_bytes()[:-3])
        error, words = ValueError, ["train-images-idx3-ubyte", "truncated"]
    elif problem == "missing":
        os.remove(folder / "t10k-labels-idx1-ubyte")
        error, words = data.DatasetNotFoundError, ["t10k-labels-idx1-ubyte"]
    else:
        write_idx(folder / "train-labels-idx1-ubyte", np.full(6, 12), gz=False)
        error, words = ValueError, ["labels", "[0, 10)", "12"]
    with pytest.raises(error) as info:
        data.load_arrays("mnist", "train", data_dir=folder)
    for word in words:
        assert word in str(info.value)


# --- image folders -----------------------------------------------------------------


def test_image_folder_reader_orders_classes_and_labels(tmp_path):
    root = tmp_path / "pets"
    written = make_image_folder(root, classes=("dog", "ant", "cat"), test_suffix=".jpg")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    os.makedirs(root / "train" / ".hidden")

    images, labels, class_names = data.load_arrays("image_folder", "train", data_dir=root)
    assert class_names == ("ant", "cat", "dog")
    assert images.shape == (6, 5, 6, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(images[2], written[str(root / "train" / "cat" / "000.png")])

    test_images, test_labels, _ = data.load_arrays("image_folder", "test", data_dir=root)
    assert test_images.shape == (6, 5, 6, 3)
    np.testing.assert_array_equal(test_labels, [0, 0, 1, 1, 2, 2])
    # JPEG is lossy: close to what was written, not equal.
    jpeg = written[str(root / "test" / "dog" / "001.jpg")].astype(float)
    assert np.abs(test_images[5].astype(float) - jpeg).mean() < 60


def test_image_folder_grey_images_keep_one_channel(tmp_path):
    root = tmp_path / "grey"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            os.makedirs(root / split / cls)
            Image.fromarray(np.full((4, 4), 200, np.uint8)).save(root / split / cls / "x.png")
    images, _, _ = data.load_arrays("image_folder", "train", data_dir=root)
    assert images.shape == (2, 4, 4, 1)
    # A constant channel has std 0; it is normalised by 1 instead of divided by zero.
    info = data.dataset_info("image_folder", data_dir=root)
    assert info.mean == pytest.approx((200 / 255,)) and info.std == (1.0,)


def test_image_folder_with_mixed_sizes_is_a_clear_error(tmp_path):
    root = tmp_path / "mixed"
    make_image_folder(root, classes=("a", "b"), per_class=1)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "test" / "b" / "big.png")
    with pytest.raises(ValueError, match="share one size") as info:
        data.load_arrays("image_folder", "train", data_dir=root)
    assert "9x9" in str(info.value) and "Resize" in str(info.value)


def test_image_folder_test_class_missing_from_train_is_an_error(tmp_path):
    root = tmp_path / "pets"
    make_image_folder(root, classes=("a", "b"), per_class=1)
    os.makedirs(root / "test" / "zebra")
    with pytest.raises(ValueError, match="zebra"):
        data.load_arrays("image_folder", "train", data_dir=root)


# --- CIFAR python archive ------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_archive_reader(tmp_path, name):
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    meta_names = [f"class{i}" for i in range(10)] if name == "cifar10" else None
    expected = make_cifar_python(folder, name, meta_names=meta_names)
    for split, n in (("train", 15 if name == "cifar10" else 3), ("test", 3)):
        images, labels, class_names = data.load_arrays(name, split, data_dir=folder)
        rows, expected_labels = expected[split]
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(labels, expected_labels)
        # Rows are channel-major: [R plane, G plane, B plane], each row by row.
        assert images[1, 2, 3, 1] == rows[1, 1 * 1024 + 2 * 32 + 3]
        np.testing.assert_array_equal(images[0, :, :, 2], rows[0, 2048:].reshape(32, 32))
    if name == "cifar10":
        assert class_names == tuple(meta_names)
    else:
        assert len(class_names) == 100 and class_names[:2] == ("apple", "aquarium_fish")


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    make_cifar_python(folder, "cifar100")
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": os.getcwd}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        data.load_arrays("cifar100", "train", data_dir=folder)


# --- archives and where the data is found ------------------------------------------


def test_tar_gz_is_extracted_once_and_matches_the_folder(tmp_path, home):
    root = tmp_path / "src" / "pets"
    make_image_folder(root)
    archive = make_tar(tmp_path / "pets.tar.gz", root, arcname="pets")  # nested one level

    from_folder = data.load_arrays("image_folder", "train", data_dir=root)
    from_archive = data.load_arrays("image_folder", "train", data_dir=archive)
    np.testing.assert_array_equal(from_archive[0], from_folder[0])
    np.testing.assert_array_equal(from_archive[1], from_folder[1])
    assert from_archive[2] == from_folder[2]

    extracted = list((home / "extracted").iterdir())
    assert len(extracted) == 1 and extracted[0].name.startswith("pets-")
    stamp = os.stat(extracted[0]).st_mtime_ns, os.stat(extracted[0]).st_ino

    # Without the decoded cache the archive is decoded again, from the same extraction.
    for npz in (home / "datasets").iterdir():
        npz.unlink()
    data.clear_cache()
    again = data.load_arrays("image_folder", "train", data_dir=archive)
    np.testing.assert_array_equal(again[0], from_folder[0])
    assert list((home / "extracted").iterdir()) == extracted
    assert (os.stat(extracted[0]).st_mtime_ns, os.stat(extracted[0]).st_ino) == stamp

    # With the decoded cache, the extraction is not needed at all.
    data.clear_cache()
    for path in sorted(extracted[0].rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    extracted[0].rmdir()
    cached = data.load_arrays("image_folder", "test", data_dir=archive)
    assert cached[0].shape == (6, 5, 6, 3)
    assert not list((home / "extracted").iterdir())


def test_unsafe_tar_member_is_refused(tmp_path, home):
    evil = tmp_path / "evil.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(evil)
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(evil, arcname="../escaped.png")
    with pytest.raises(ValueError, match="extracted safely"):
        data.load_arrays("image_folder", "train", data_dir=archive)
    assert not (home / "escaped.png").exists() and not (home / "extracted" / "escaped.png").exists()
    assert not list((home / "extracted").iterdir())


def test_child_resolution_tells_similar_names_apart(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    mnist = make_idx_dataset(root / "mnist", seed=10)
    fashion = make_idx_dataset(root / "Fashion-MNIST", seed=11)
    cifar10 = make_cifar_python(root / "cifar10" / "cifar-10-batches-py", "cifar10", seed=12)
    src100 = tmp_path / "src" / "cifar-100-python"
    cifar100 = make_cifar_python(src100, "cifar100", seed=13)
    make_tar(root / "cifar-100-python.tar.gz", src100, arcname="cifar-100-python")

    for name, expected in (("mnist", mnist), ("fashion_mnist", fashion)):
        images = data.load_arrays(name, "train", root)[0]
        np.testing.assert_array_equal(images[..., 0], expected["train"][0])
    for name, expected in (("cifar10", cifar10), ("cifar100", cifar100)):
        labels = data.load_arrays(name, "train", root)[1]
        np.testing.assert_array_equal(labels, expected["train"][1])

    # The same rule through the environment variable.
    data.clear_cache()
    monkeypatch.setenv("BRANCHZOO_DATA_DIR", str(root))
    np.testing.assert_array_equal(data.load_arrays("mnist", "test")[1], mnist["test"][1])


def test_child_name_rule(tmp_path):
    for entry in ("cifar10-jpeg.tar.gz", "cifar-100-python", "cifar10", "cifar10.zip",
                  "fashion_mnist", "mnist", "mnist2", "MNIST-raw"):
        path = tmp_path / entry
        path.mkdir() if "." not in entry else path.write_bytes(b"")

    def names(name):
        return [os.path.basename(p) for p in sources.matching_children(name, str(tmp_path))]

    assert names("cifar10") == ["cifar10", "cifar10-jpeg.tar.gz"]
    assert names("cifar100") == ["cifar-100-python"]
    assert names("mnist") == ["MNIST-raw", "mnist"]
    assert names("fashion_mnist") == ["fashion_mnist"]


def test_explicit_data_dir_without_the_dataset_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(sources, "tfds_source", lambda *a: pytest.fail("must not download"))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_arrays("cifar10", "train", data_dir=tmp_path / "empty")
    message = str(info.value)
    assert "data_dir=" in message and "cifar10" in message and "cifar-10-batches-py" in message


# --- tensorflow_datasets fallback ------------------------------------------------


@pytest.fixture
def hosts_reachable(monkeypatch):
    """The download-host probe passes, so failures come from tfds.load itself."""
    monkeypatch.setattr(sources, "unreachable_download_hosts", lambda tfds, name: [])


def test_offline_without_data_dir_explains_how_to_point_at_files(monkeypatch, hosts_reachable):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("cifar100", "train", batch_size=8)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for word in ("cifar100", "data_dir", "--data-dir", "BRANCHZOO_DATA_DIR", "no route to host",
                 "cifar-100-python"):
        assert word in message


def test_unreachable_download_host_fails_fast_naming_the_host(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Builder:
        url_infos = {"https://example.invalid/cifar-100-binary.tar.gz": None,
                     "http://other.invalid:8080/b.gz": None}

        def is_prepared(self):
            return False

    probed = []

    def refuse(address, timeout):
        probed.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(tfds, "builder", lambda name: Builder())
    monkeypatch.setattr(tfds, "load", lambda *a, **k: pytest.fail("must not start a download"))
    monkeypatch.setattr(sources.socket, "create_connection", refuse)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("cifar100", "train", batch_size=8)
    assert sorted(probed) == [("example.invalid", 443), ("other.invalid", 8080)]
    message = str(info.value)
    for word in ("example.invalid:443", "other.invalid:8080", "gaierror", "--data-dir", "cifar-100-python"):
        assert word in message


def test_prepared_tfds_dataset_needs_no_network(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    class Builder:
        url_infos = {"https://example.invalid/x.gz": None}

        def is_prepared(self):
            return True

    monkeypatch.setattr(tfds, "builder", lambda name: Builder())
    monkeypatch.setattr(sources.socket, "create_connection",
                        lambda *a, **k: pytest.fail("must not probe"))
    assert sources.unreachable_download_hosts(tfds, "mnist") == []


def test_offline_with_env_data_dir_lacking_the_dataset(tmp_path, monkeypatch, hosts_reachable):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds, "load", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setenv("BRANCHZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="BRANCHZOO_DATA_DIR=") as info:
        data.dataset_info("mnist")
    assert str(tmp_path) in str(info.value)


def test_tfds_arrays_are_cached(monkeypatch, home, hosts_reachable):
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(3)
    fake = {s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
            for s, n in (("train", 5), ("test", 2))}
    calls = []

    def load(name, split, as_supervised, batch_size):
        calls.append((name, split, as_supervised, batch_size))
        return fake[split]

    monkeypatch.setattr(tfds, "load", load)
    images, labels, class_names = data.load_arrays("cifar10", "train")
    assert sorted(calls) == [("cifar10", "test", True, -1), ("cifar10", "train", True, -1)]
    np.testing.assert_array_equal(images, fake["train"][0])
    assert labels.dtype == np.int64 and class_names[0] == "airplane" and class_names[-1] == "truck"
    [cached] = cache_files(home)
    assert cached.startswith("cifar10-tfds")

    data.clear_cache()
    calls.clear()
    assert data.dataset_info("cifar10").num_examples == {"train": 5, "test": 2}
    assert calls == []


def test_image_folder_needs_a_data_dir():
    with pytest.raises(data.DatasetNotFoundError, match="data_dir"):
        data.load_arrays("image_folder", "train")


# --- arguments ------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"split": "val"}, ["`split`", "'val'"]),
    ({"name": "imagenet"}, ["`name`", "'imagenet'", "digits", "cifar100"]),
    ({"batch_size": 0}, ["`batch_size`", "0"]),
    ({"augment": "yes"}, ["`augment`", "'yes'"]),
    ({"shuffle": 1.5}, ["`shuffle`", "1.5"]),
    ({"seed": "1"}, ["`seed`", "'1'"]),
])
def test_bad_arguments_are_named(kwargs, words):
    args = {"name": "digits", "split": "train", "batch_size": 8, **kwargs}
    with pytest.raises(ValueError) as info:
        data.load_dataset(**args)
    for word in words:
        assert word in str(info.value)


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        data.load_arrays("mnist", "train", data_dir=tmp_path / "nowhere")


# --- digits and the tf.data pipeline ----------------------------------------------


def test_digits_arrays_info_and_cache(monkeypatch, home):
    info = data.dataset_info("digits", data_dir="/ignored/for/digits")
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert sum(info.num_examples.values()) == 1797 and info.num_examples["test"] == 360
    images, labels, _ = data.load_arrays("digits", "train")
    assert images.dtype == np.uint8 and images.max() == 255 and labels.dtype == np.int64
    # Three equal channels; stratified split keeps every class.
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert set(np.unique(labels)) == set(range(10))
    assert not images.flags.writeable

    [cached] = cache_files(home)
    assert cached.startswith("digits-sklearn") and cached.endswith(".npz")
    data.clear_cache()
    spec = data.get_spec("digits")
    monkeypatch.setitem(specs._SPECS, "digits", dataclasses.replace(
        spec, reader=lambda params: pytest.fail("the cache must be reused")))
    again = data.load_arrays("digits", "train")
    np.testing.assert_array_equal(again[0], images)


def test_unreadable_cache_is_rebuilt(home):
    data.dataset_info("digits")
    [cached] = cache_files(home)
    (home / "datasets" / cached).write_bytes(b"not a zip")
    data.clear_cache()
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        assert data.dataset_info("digits").num_examples["train"] == 1437


def test_normalisation_gives_zero_mean_unit_std_on_train():
    images, labels = collect(data.load_dataset("digits", "train", batch_size=500, augment=False))
    assert images.dtype == np.float32 and labels.dtype == np.int32
    # float64: numpy's float32 std over 4.4M values is itself off by 0.2%.
    images = images.astype(np.float64)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_batches_and_dtypes():
    ds = data.load_dataset("digits", "train", batch_size=100, augment=False)
    shapes = [tuple(x.shape) for x, _ in ds]
    assert len(shapes) == 15 and shapes[0] == (100, 32, 32, 3) and shapes[-1] == (37, 32, 32, 3)
    x, y = next(iter(ds))
    assert x.dtype.name == "float32" and y.dtype.name == "int32" and tuple(y.shape) == (100,)
    dropped = data.load_dataset("digits", "test", batch_size=100, drop_remainder=True)
    assert [tuple(x.shape)[0] for x, _ in dropped] == [100, 100, 100]


def test_seeded_shuffling_and_augmentation_are_reproducible():
    _, raw_labels, _ = data.load_arrays("digits", "train")
    a = collect(data.load_dataset("digits", "train", batch_size=256, seed=7))
    b = collect(data.load_dataset("digits", "train", batch_size=256, seed=7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], raw_labels)
    assert sorted(a[1]) == sorted(raw_labels)
    other = collect(data.load_dataset("digits", "train", batch_size=256, seed=8))
    assert not np.array_equal(a[1], other[1])
    # Each epoch (iteration) is shuffled anew.
    ds = data.load_dataset("digits", "train", batch_size=2000, seed=7, augment=False)
    first, second = (next(iter(ds))[1].numpy() for _ in range(2))
    assert not np.array_equal(first, second)


def test_epoch_stream_is_a_pure_function_of_seed_and_epoch():
    """train.py's stream: any iteration, and any resume point, replays the same batches."""
    ds = data.load_dataset("digits", "train", batch_size=500, seed=3, epochs=3)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    again = [(x.numpy(), y.numpy()) for x, y in ds]
    assert len(first) == 3 * 3  # 1437 examples: 3 batches per epoch, epochs back to back
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Epochs differ from each other (order and augmentation) ...
    assert not np.array_equal(first[0][1], first[3][1])
    # ... and resuming at epoch 1 gives exactly epochs 1 and 2.
    tail = data.load_dataset("digits", "train", batch_size=500, seed=3, epochs=2, initial_epoch=1)
    for (xa, ya), (xb, yb) in zip(first[3:], tail):
        np.testing.assert_array_equal(xa, xb.numpy())
        np.testing.assert_array_equal(ya, yb.numpy())
    with pytest.raises(ValueError, match="epochs"):
        data.load_dataset("digits", "train", batch_size=8, epochs=0)
    with pytest.raises(ValueError, match="initial_epoch"):
        data.load_dataset("digits", "train", batch_size=8, epochs=1, initial_epoch=-1)


def test_augmentation_changes_train_but_not_test():
    plain = collect(
        data.load_dataset("digits", "train", batch_size=512, shuffle=False, augment=False)
    )
    augmented = collect(data.load_dataset("digits", "train", batch_size=512, shuffle=False, seed=0))
    np.testing.assert_array_equal(plain[1], augmented[1])
    assert not np.allclose(plain[0], augmented[0])
    test_default = collect(data.load_dataset("digits", "test", batch_size=512))
    test_plain = collect(data.load_dataset("digits", "test", batch_size=512, augment=False))
    np.testing.assert_array_equal(test_default[0], test_plain[0])
    np.testing.assert_array_equal(test_default[1], data.load_arrays("digits", "test")[1])


def matching_offsets(unit_image, raw_image):
    """The (dy, dx) at which `unit_image` is a crop of `raw_image` zero-padded by 4."""
    padded = np.pad(raw_image.astype(np.float32) / 255.0, [(4, 4), (4, 4), (0, 0)])
    h, w = raw_image.shape[:2]
    return {(dy, dx) for dy in range(9) for dx in range(9)
            if np.allclose(padded[dy:dy + h, dx:dx + w], unit_image, atol=1e-4)}


def test_crops_are_drawn_per_example():
    raw, _, _ = data.load_arrays("digits", "train")
    info = data.dataset_info("digits")
    x, _ = next(iter(data.load_dataset("digits", "train", batch_size=32, shuffle=False, seed=1)))
    unit = x.numpy() * np.array(info.std, np.float32) + np.array(info.mean, np.float32)
    offsets = [matching_offsets(unit[i], raw[i]) for i in range(32)]
    # Every image is a padded crop of its original (digits are never flipped) ...
    assert all(offsets)
    # ... and no single offset explains the whole batch, as a batch-wide crop would.
    assert not set.intersection(*offsets)


def test_natural_images_are_also_flipped(tmp_path):
    root = tmp_path / "pets"
    make_image_folder(root, classes=("a", "b"), per_class=16, size=(8, 8))
    raw, _, _ = data.load_arrays("image_folder", "train", data_dir=root)
    info = data.dataset_info("image_folder", data_dir=root)
    ds = data.load_dataset("image_folder", "train", batch_size=32, shuffle=False, seed=2,
                           data_dir=root)
    x = next(iter(ds))[0].numpy() * np.array(info.std, np.float32) + np.array(info.mean, np.float32)
    plain = [bool(matching_offsets(x[i], raw[i])) for i in range(32)]
    flipped = [bool(matching_offsets(x[i][:, ::-1], raw[i])) for i in range(32)]
    assert all(p or f for p, f in zip(plain, flipped))
    assert any(flipped) and any(plain)


# --- real data (opt-in) ------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_REAL_DATA, reason=NO_REAL_DATA)
def test_real_mnist(monkeypatch, session_home):
    monkeypatch.setenv("BRANCHZOO_HOME", session_home)  # decoded once per run (test_train reads it too)
    monkeypatch.setenv("BRANCHZOO_DATA_DIR", REAL_DATA_DIR)
    info = data.dataset_info("mnist")
    assert info.num_examples == {"train": 60000, "test": 10000}
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.mean[0] == pytest.approx(0.1307, abs=1e-4)
    assert info.std[0] == pytest.approx(0.3081, abs=1e-4)
    x, y = next(iter(data.load_dataset("mnist", "train", batch_size=64, seed=0)))
    assert tuple(x.shape) == (64, 28, 28, 1) and y.dtype.name == "int32"


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_REAL_DATA, reason=NO_REAL_DATA)
def test_real_cifar10(monkeypatch, session_home):
    monkeypatch.setenv("BRANCHZOO_HOME", session_home)  # decoded once per run (test_train reads it too)
    info = data.dataset_info("cifar10", data_dir=REAL_DATA_DIR)
    assert info.num_examples == {"train": 50000, "test": 10000}
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.class_names == ("airplane", "automobile", "bird", "cat", "deer",
                                "dog", "frog", "horse", "ship", "truck")
    _, labels, _ = data.load_arrays("cifar10", "test", data_dir=REAL_DATA_DIR)
    assert np.bincount(labels).tolist() == [1000] * 10
    x, y = next(iter(data.load_dataset("cifar10", "test", batch_size=64, data_dir=REAL_DATA_DIR)))
    assert tuple(x.shape) == (64, 32, 32, 3) and y.dtype.name == "int32"
