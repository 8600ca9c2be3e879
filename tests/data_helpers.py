"""Helpers of the data tests: an isolated cache per test and writers of tiny datasets.

Each data test module imports `home` (an autouse fixture) from here, so every
test gets its own BRANCHZOO_HOME and no BRANCHZOO_DATA_DIR.
"""

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from branchzoo import data

REAL_DATA_DIR = os.environ.get("BRANCHZOO_DATA_DIR")
HAS_REAL_DATA = bool(
    REAL_DATA_DIR
    and os.path.isdir(os.path.join(REAL_DATA_DIR, "mnist"))
    and os.path.isfile(os.path.join(REAL_DATA_DIR, "cifar10-jpeg.tar.gz"))
)
NO_REAL_DATA = "needs BRANCHZOO_DATA_DIR holding mnist/ and cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """An empty cache and no data folder from the environment."""
    path = tmp_path / "home"
    monkeypatch.setenv("BRANCHZOO_HOME", str(path))
    monkeypatch.delenv("BRANCHZOO_DATA_DIR", raising=False)
    data.clear_cache()
    yield path
    data.clear_cache()


# --- helpers that write small datasets ---------------------------------------------


def write_idx(path, array, gz, magic=None):
    """Writes `array` (uint8) as an IDX file; `magic` overrides the correct one."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x800 + array.ndim
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw += array.tobytes()
    if gz:
        path = str(path) + ".gz"
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)
    return path


def make_idx_dataset(folder, seed, n_train=6, n_test=4, gz_train=True, gz_test=False):
    """An IDX dataset of random 7x5 images; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    layout = (("train", n_train, gz_train, "train"), ("test", n_test, gz_test, "t10k"))
    for split, n, gz, prefix in layout:
        images = rng.integers(0, 256, (n, 7, 5), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), images, gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels, gz)
        arrays[split] = (images, labels)
    return arrays


def make_image_folder(root, classes=("dog", "ant", "cat"), per_class=2, size=(5, 6), seed=0,
                      test_suffix=".png"):
    """train/<class>/*.png and test/<class>/*<test_suffix> of random RGB images (H, W = size)."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, suffix in (("train", ".png"), ("test", test_suffix)):
        for cls in classes:
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                path = os.path.join(root, split, cls, f"{i:03d}{suffix}")
                Image.fromarray(pixels).save(path)
                written[path] = pixels
    return written


def make_cifar_python(folder, name, seed=0, per_file=3, meta_names=None):
    """A tiny official-layout CIFAR python archive; returns {split: (data rows, labels)}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    if name == "cifar10":
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key, num_classes = b"labels", 10
        meta_file, names_key = "batches.meta", b"label_names"
    else:
        files = {"train": ["train"], "test": ["test"]}
        label_key, num_classes = b"fine_labels", 100
        meta_file, names_key = "meta", b"fine_label_names"
    expected = {}
    for split, fnames in files.items():
        rows, labels = [], []
        for fname in fnames:
            batch_rows = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            batch_labels = [int(v) for v in rng.integers(0, num_classes, per_file)]
            with open(os.path.join(folder, fname), "wb") as f:
                pickle.dump({b"data": batch_rows, label_key: batch_labels, b"batch_label": b"x"}, f)
            rows.append(batch_rows)
            labels += batch_labels
        expected[split] = (np.concatenate(rows), np.array(labels))
    if meta_names is not None:
        with open(os.path.join(folder, meta_file), "wb") as f:
            pickle.dump({names_key: [n.encode() for n in meta_names]}, f)
    return expected


def make_tar(path, folder, arcname):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return path


def cache_files(home):
    folder = home / "datasets"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def collect(ds):
    """All batches of `ds` concatenated: (images, labels) as NumPy arrays."""
    batches = list(ds)
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]))
