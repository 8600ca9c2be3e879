"""Datasets as tf.data pipelines: decoded once, cached, normalised, augmented.

Every dataset is served as batches of ``(image float32 [H, W, C], label int32)``,
scaled to [0, 1] and normalised per channel with the mean/std of its train split.

- ``digits``: scikit-learn's bundled 8x8 digits, the offline default (no
  download, no `data_dir`): values 0..16 scaled to 0..255, resized bilinearly
  to 32x32 and replicated to 3 channels so every CIFAR-shaped model accepts
  it; a fixed stratified 80/20 split (``random_state=0``): 1437 train, 360 test.
- ``mnist``, ``fashion_mnist``: the official IDX files (gzipped or not).
- ``cifar10``, ``cifar100``: the official python archive
  (``cifar-10-batches-py/``, ``cifar-100-python/``; fine labels) or an image
  folder ``train/<class>/*``, ``test/<class>/*``.
- ``image_folder``: ``train/<class>/*``, ``test/<class>/*`` (png, jpg, jpeg,
  bmp; one image size throughout); classes are the sorted folders of train.

Where the files are: `data_dir` (default ``$BRANCHZOO_DATA_DIR``) is the
dataset's folder itself, a ``.tar.gz``/``.tgz``/``.tar`` of it, or a parent
folder with the dataset as a child folder or archive whose name starts with
the dataset name (lower case, ``-`` and ``_`` dropped, and no digit right
after, so ``cifar10`` skips ``cifar-100-python``); inside an archive or such
a child the dataset may sit one folder deeper. With no local files, mnist,
fashion_mnist, cifar10 and cifar100 are fetched with ``tensorflow_datasets``
(except when an explicit `data_dir` lacks them: that is an error at once).

The cache, under ``branchzoo.zoo.branchzoo_home()``:

- ``datasets/<name>-<key>.npz``: the decoded uint8 images, int64 labels,
  class names and train mean/std; `key` derives from the source's path, sizes
  and mtimes (a fixed ``sklearn<version>`` / ``tfds<version>`` key for digits
  and tensorflow_datasets), so edited files are decoded again;
- ``extracted/<archive stem>-<key>/``: an archive given as data, extracted
  once; `key` derives from the archive's absolute path, size and mtime.

    >>> from branchzoo import data
    >>> ds = data.load_dataset("digits", "train", batch_size=32, seed=0)
    >>> images, labels = next(iter(ds))
    >>> tuple(images.shape), labels.dtype.name
    ((32, 32, 32, 3), 'int32')
"""

import dataclasses
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import pickle
import shutil
import socket
import tarfile
import urllib.parse
import warnings
import zipfile
from concurrent import futures

import numpy as np
import tensorflow as tf

from branchzoo._io import atomic_open, temp_path
from branchzoo._validation import check_int
from branchzoo.zoo import branchzoo_home

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "image_folder")
SPLITS = ("train", "test")
DATA_DIR_ENV = "BRANCHZOO_DATA_DIR"

# Bump when decoding changes, so caches written by older code are not reused.
_CACHE_VERSION = 1
_PAD = 4
# Flipped digits change meaning; these images do not.
_FLIPPABLE = frozenset({"cifar10", "cifar100", "fashion_mnist", "image_folder"})
_TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_DIGITS_SIZE = 32
_DIGITS_TEST_SIZE = 0.2
_DIGITS_RANDOM_STATE = 0
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_PYTHON = {
    "cifar10": {
        "files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "labels": b"labels", "meta": "batches.meta", "names": b"label_names",
    },
    "cifar100": {
        "files": {"train": ["train"], "test": ["test"]},
        "labels": b"fine_labels", "meta": "meta", "names": b"fine_label_names",
    },
}
_CIFAR_SIZE = 32

_DIGIT_NAMES = tuple(str(i) for i in range(10))
_CLASS_NAMES = {
    "digits": _DIGIT_NAMES,
    "mnist": _DIGIT_NAMES,
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
    "cifar100": tuple("""
        apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl
        boy bridge bus butterfly camel can castle caterpillar cattle chair
        chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
        dolphin elephant flatfish forest fox girl hamster house kangaroo
        keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
        motorcycle mountain mouse mushroom oak_tree orange orchid otter
        palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
        rabbit raccoon ray road rocket rose sea seal shark shrew skunk
        skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper
        table tank telephone television tiger tractor train trout tulip turtle
        wardrobe whale willow_tree wolf woman worm""".split()),
}

_IDX_LAYOUT = (
    "the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz)"
)
_FOLDER_LAYOUT = "an image folder train/<class>/*, test/<class>/* (png, jpg, jpeg, bmp)"
_LAYOUTS = {
    "mnist": _IDX_LAYOUT,
    "fashion_mnist": _IDX_LAYOUT,
    "cifar10": "the official python archive cifar-10-batches-py/ (data_batch_1..5, "
               f"test_batch) or {_FOLDER_LAYOUT}",
    "cifar100": f"the official python archive cifar-100-python/ (train, test) or {_FOLDER_LAYOUT}",
    "image_folder": _FOLDER_LAYOUT,
}

# In-process memo: cache file path -> _Record.
_MEMO = {}


class DatasetNotFoundError(FileNotFoundError):
    """No local files and no download for a dataset; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: the canonical dataset name.
        num_classes: number of classes.
        image_shape: ``(height, width, channels)``.
        class_names: one name per label, in label order.
        num_examples: ``{"train": n, "test": n}``.
        mean: per-channel mean of the train images scaled to [0, 1].
        std: per-channel standard deviation of the same.
    """

    name: str
    num_classes: int
    image_shape: tuple
    class_names: tuple
    num_examples: dict
    mean: tuple
    std: tuple


@dataclasses.dataclass(frozen=True)
class _Record:
    """Decoded arrays of both splits, as held by the cache."""

    images: dict
    labels: dict
    class_names: tuple
    mean: np.ndarray
    std: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a dataset's arrays come from: a cache key and how to decode them."""

    key: str
    decode: object  # () -> (images by split, labels by split, class names)


def load_dataset(name, split, batch_size, augment=None, data_dir=None, shuffle=None,
                 seed=None, drop_remainder=False, epochs=None, initial_epoch=0,
                 steps_per_epoch=None):
    """A batched, normalised and (for training) augmented tf.data pipeline.

    Augmentation: a 4-pixel zero pad (in [0, 1] space, before normalisation)
    and a random crop back to the image size, plus a random horizontal flip
    for natural images (cifar10, cifar100, fashion_mnist, image_folder; not
    digits or mnist, whose flipped digits change meaning), drawn per example.

    Epoch ``e`` is a pure function of ``(seed, e)``: its order comes from a
    stateless shuffle and every example's crop and flip from stateless image
    ops keyed by ``(seed, e, position)``. So iterating the dataset again, on
    more replicas, or after a resume gives exactly the same batches. (Keras'
    RandomCrop/RandomFlip layers draw from a stateful seed generator, whose
    state depends on how often the pipeline was iterated before: a
    MirroredStrategy run then sees other batches than a single-device run,
    and a resumed run cannot replay an epoch. Hence TF's stateless image ops.)

    Args:
        name: one of `DATASETS`.
        split: ``"train"`` or ``"test"``.
        batch_size: examples per batch.
        augment: None (augment the train split only), True (always) or False.
        data_dir: local data (see the module docstring); default
            ``$BRANCHZOO_DATA_DIR``. Ignored by ``digits``.
        shuffle: None (shuffle the train split only), True or False.
        seed: int seeding the shuffle and the augmentation; None draws one.
        drop_remainder: drop the last, smaller batch of each epoch.
        epochs: None: one epoch per iteration, each iteration with a new
            epoch key (fresh order and augmentation, as ``model.fit`` expects
            of a finite dataset). An int: that many epochs back to back,
            numbered from `initial_epoch`, identical on every iteration (for
            ``fit(..., steps_per_epoch=...)``; train.py resumes this way).
        initial_epoch: number of the first epoch when `epochs` is an int.
        steps_per_epoch: keep only the first that many batches of each
            (shuffled) epoch: short runs on big datasets.

    Returns:
        A `tf.data.Dataset` of ``(images float32 [B, H, W, C], labels int32 [B])``.
    """
    name = _canonical_name(name)
    split = _check_split(split)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    for arg, value in (("augment", augment), ("shuffle", shuffle)):
        if value not in (None, True, False):
            raise ValueError(f"`{arg}` must be None, True or False. Received: {arg}={value!r}")
    if seed is not None:
        check_int(seed, "seed")
    if epochs is not None:
        check_int(epochs, "epochs", minimum=1)
    check_int(initial_epoch, "initial_epoch", minimum=0)
    if steps_per_epoch is not None:
        check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
    seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)

    record = _load_record(name, data_dir)
    images = tf.constant(record.images[split])
    labels = tf.constant(record.labels[split].astype(np.int32))
    count = int(labels.shape[0])
    augment = split == "train" if augment is None else augment
    shuffle = split == "train" if shuffle is None else shuffle
    pad_crop = _augmenter(tuple(images.shape[1:]), flip=name in _FLIPPABLE)
    mean = tf.constant(record.mean, tf.float32)
    std = tf.constant(record.std, tf.float32)

    def one_epoch(epoch_key):
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch_key, tf.int64)])
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=key)

        def example(position, index):
            image = tf.cast(tf.gather(images, index), tf.float32) / 255.0
            if augment:
                image = pad_crop(image, tf.stack([key[0] * 1_000_003 + key[1], position]))
            return (image - mean) / std, tf.gather(labels, index)

        ds = tf.data.Dataset.from_tensor_slices((tf.range(count, dtype=tf.int64), order))
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds if steps_per_epoch is None else ds.take(steps_per_epoch)

    if epochs is None:
        # One random epoch key per iteration: a new epoch each time fit() iterates.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        keys = tf.data.Dataset.range(initial_epoch, initial_epoch + epochs)
    batches = count // batch_size if drop_remainder else -(-count // batch_size)
    if steps_per_epoch is not None:
        batches = min(batches, steps_per_epoch)
    # flat_map hides the length; stating it gives Keras progress bars a total
    # and spares it the "ran out of data" guess at the end of each pass.
    ds = keys.flat_map(one_epoch).apply(
        tf.data.experimental.assert_cardinality(batches * (epochs or 1))
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_info(name, data_dir=None):
    """Number of classes, image shape, split sizes and train statistics of a dataset.

    Loads (and caches) the arrays when they are not cached yet.

    Args:
        name: one of `DATASETS`.
        data_dir: local data, as for `load_dataset`.

    Returns:
        A `DatasetInfo`.
    """
    name = _canonical_name(name)
    record = _load_record(name, data_dir)
    return DatasetInfo(
        name=name,
        num_classes=len(record.class_names),
        image_shape=tuple(int(d) for d in record.images["train"].shape[1:]),
        class_names=record.class_names,
        num_examples={split: int(len(record.labels[split])) for split in SPLITS},
        mean=tuple(float(m) for m in record.mean),
        std=tuple(float(s) for s in record.std),
    )


def load_arrays(name, split, data_dir=None):
    """The raw decoded arrays of one split, as the cache holds them.

    Args:
        name: one of `DATASETS`.
        split: ``"train"`` or ``"test"``.
        data_dir: local data, as for `load_dataset`.

    Returns:
        ``(images uint8 [N, H, W, C], labels int64 [N], class_names tuple)``;
        the arrays are shared and read-only: copy them before editing.
    """
    name = _canonical_name(name)
    split = _check_split(split)
    record = _load_record(name, data_dir)
    return record.images[split], record.labels[split], record.class_names


def clear_cache():
    """Forgets the arrays held in memory; the cache files on disk stay."""
    _MEMO.clear()


def _canonical_name(name):
    """`name` lower-cased with ``-`` read as ``_``, checked against `DATASETS`."""
    if isinstance(name, str):
        canonical = name.strip().lower().replace("-", "_")
        if canonical in DATASETS:
            return canonical
    raise ValueError(
        f"Unknown dataset `name`. Expected one of: {', '.join(DATASETS)}. Received: name={name!r}"
    )


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    return split


def _augmenter(image_shape, flip):
    """Per-example pad + random crop (+ horizontal flip), stateless in `seed`."""
    height, width, channels = (int(d) for d in image_shape)

    def augment(image, seed):
        image = tf.pad(image, [[_PAD, _PAD], [_PAD, _PAD], [0, 0]])
        image = tf.image.stateless_random_crop(image, (height, width, channels), seed=seed)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=seed + [0, 1])
        return image

    return augment


# --- records and the cache -------------------------------------------------------


def _load_record(name, data_dir):
    """The decoded dataset: from memory, the cache file, or decoded and cached."""
    source = _find_source(name, data_dir)
    path = os.path.join(branchzoo_home(), "datasets", f"{name}-{source.key}.npz")
    record = _MEMO.get(path) or _read_cache(path)
    if record is None:
        images, labels, class_names = source.decode()
        record = _make_record(name, images, labels, class_names)
        _write_cache(path, record)
    # Shared through the memo: an edit by one caller must not leak to others.
    for array in (*record.images.values(), *record.labels.values()):
        array.setflags(write=False)
    _MEMO[path] = record
    return record


def _make_record(name, images, labels, class_names):
    """Checks the decoded arrays and computes the train statistics."""
    class_names = tuple(str(c) for c in class_names)
    for split in SPLITS:
        x, y = images[split], labels[split]
        if x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"Decoded '{name}' {split} data must be uint8 images [N, H, W, C] with N labels. "
                f"Received: images {x.dtype} {x.shape}, labels {y.shape}"
            )
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(
                f"'{name}' {split} labels must lie in [0, {len(class_names)}) (one per class). "
                f"Received: labels from {y.min()} to {y.max()}"
            )
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise ValueError(
            f"'{name}' train and test images must share one shape. Received: train "
            f"{images['train'].shape[1:]}, test {images['test'].shape[1:]}"
        )
    mean, std = _channel_stats(images["train"])
    return _Record(
        images={s: np.ascontiguousarray(images[s]) for s in SPLITS},
        labels={s: labels[s].astype(np.int64) for s in SPLITS},
        class_names=class_names,
        mean=mean,
        std=std,
    )


def _channel_stats(images):
    """Per-channel mean and std of uint8 images scaled to [0, 1], in float64.

    Two passes over chunks: a float64 copy of CIFAR-10 at once would take 1.2 GB.
    """
    pixels_per_image = images.shape[1] * images.shape[2]
    chunk = max(1, (1 << 21) // max(1, pixels_per_image * images.shape[3]))
    count = len(images) * pixels_per_image
    total = np.zeros(images.shape[3])
    for start in range(0, len(images), chunk):
        total += images[start:start + chunk].sum(axis=(0, 1, 2), dtype=np.float64)
    mean = total / 255.0 / count
    squares = np.zeros_like(mean)
    for start in range(0, len(images), chunk):
        centred = images[start:start + chunk].astype(np.float64) / 255.0 - mean
        squares += (centred * centred).sum(axis=(0, 1, 2))
    std = np.sqrt(squares / count)
    # A constant channel would otherwise be divided by zero.
    return mean, np.where(std > 0, std, 1.0)


def _read_cache(path):
    """The record stored at `path`, or None when absent or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            record = _Record(
                images={s: z[f"{s}_images"] for s in SPLITS},
                labels={s: z[f"{s}_labels"] for s in SPLITS},
                class_names=tuple(str(c) for c in z["class_names"]),
                mean=z["mean"],
                std=z["std"],
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        warnings.warn(f"Ignoring the unreadable dataset cache {path} ({e}); decoding again.")
        return None
    return record


def _write_cache(path, record):
    """Stores `record` at `path` atomically (temp file in the same folder + rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(
            f,
            **{f"{s}_images": record.images[s] for s in SPLITS},
            **{f"{s}_labels": record.labels[s] for s in SPLITS},
            class_names=np.array(record.class_names, dtype=str),
            mean=record.mean,
            std=record.std,
        )


def _fingerprint(root, paths):
    """A short hash of the files' paths, sizes and mtimes (and the cache version)."""
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    text = json.dumps([_CACHE_VERSION, os.path.abspath(root), stats])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- finding the data ------------------------------------------------------------


def _find_source(name, data_dir):
    """Where `name` comes from: bundled, local files, or tensorflow_datasets."""
    if name == "digits":
        version = importlib.metadata.version("scikit-learn")
        return _Source(key=f"sklearn{version}-v{_CACHE_VERSION}", decode=_decode_digits)
    explicit = data_dir is not None
    if not explicit:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    origin = "data_dir" if explicit else DATA_DIR_ENV
    if data_dir is not None:
        source, checked = _find_local(name, data_dir, origin)
        if source is not None:
            return source
        where = (
            f"{origin}={os.fspath(data_dir)!r} holds no '{name}' data (checked {checked}; "
            f"expected {_LAYOUTS[name]})"
        )
        if explicit:
            raise DatasetNotFoundError(
                f"{where}. Give data_dir as the dataset's folder or archive, or a folder "
                f"holding it as a child folder or archive whose name starts with '{name}'."
            )
    else:
        where = f"no data_dir was given (and {DATA_DIR_ENV} is not set)"
    if name not in _TFDS_DATASETS:
        raise DatasetNotFoundError(
            f"Dataset '{name}' needs local files, but {where}. Pass data_dir= (CLI: --data-dir, "
            f"or set {DATA_DIR_ENV}) pointing at {_LAYOUTS[name]}."
        )
    return _tfds_source(name, where)


def _normalised(text):
    return text.lower().replace("-", "").replace("_", "")


def _matching_children(name, folder):
    """Child folders, then archives, of `folder` named after dataset `name`."""
    prefix = _normalised(name)
    dirs, archives = [], []
    for entry in sorted(os.listdir(folder)):
        normalised = _normalised(entry)
        rest = normalised[len(prefix):]
        if not normalised.startswith(prefix) or rest[:1].isdigit():
            continue
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            dirs.append(path)
        elif _is_archive(path):
            archives.append(path)
    return dirs + archives


def _is_archive(path):
    return os.path.isfile(path) and path.lower().endswith(_ARCHIVE_SUFFIXES)


def _find_local(name, data_dir, origin):
    """The local source of `name` under `data_dir`; returns (source or None, what was checked)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`{origin}` must be an existing folder or archive. "
            f"Received: {origin}={os.fspath(data_dir)!r}"
        )
    if _is_archive(path):
        return _archive_source(name, path), [path]
    if os.path.isdir(path):
        layout = _layout(name, path)
        if layout is not None:
            return _folder_source(name, path, layout), [path]
        children = _matching_children(name, path)
        for child in children:
            if _is_archive(child):
                return _archive_source(name, child), [path, *children]
            found = _nested_layout(name, child)
            if found is not None:
                return _folder_source(name, *found), [path, *children]
        return None, [path, *children]
    return None, [path]


def _layout(name, folder):
    """How `folder` holds `name` directly: "idx", "cifar_python", "image_folder" or None."""
    entries = set(os.listdir(folder))
    if name in ("mnist", "fashion_mnist"):
        bases = [base for pair in _IDX_FILES.values() for base in pair]
        if any(base in entries or base + ".gz" in entries for base in bases):
            return "idx"
        return None
    if name in _CIFAR_PYTHON:
        first = _CIFAR_PYTHON[name]["files"]["train"][0]
        if os.path.isfile(os.path.join(folder, first)):
            return "cifar_python"
    if os.path.isdir(os.path.join(folder, "train")):
        return "image_folder"
    return None


def _nested_layout(name, folder):
    """(root, layout) of `name` in `folder` or one of its subfolders, or None."""
    layout = _layout(name, folder)
    if layout is not None:
        return folder, layout
    for entry in sorted(os.listdir(folder)):
        child = os.path.join(folder, entry)
        if os.path.isdir(child) and not entry.startswith("."):
            layout = _layout(name, child)
            if layout is not None:
                return child, layout
    return None


def _layout_files(name, root, layout):
    """The files a layout's decoder reads (their stats key the cache)."""
    if layout == "idx":
        return [_idx_path(root, base) for pair in _IDX_FILES.values() for base in pair]
    if layout == "cifar_python":
        return sorted(
            os.path.join(root, f) for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))
        )
    _, files = _list_image_folder(root)
    return [path for split in SPLITS for path, _ in files[split]]


def _folder_source(name, root, layout):
    return _Source(
        key=_fingerprint(root, _layout_files(name, root, layout)),
        decode=lambda: _decode_folder(name, root, layout),
    )


def _archive_source(name, archive):
    """An archive keyed by its own stats: a cached decode needs no extraction."""

    def decode():
        extracted = _extract(archive)
        found = _nested_layout(name, extracted)
        if found is None:
            raise DatasetNotFoundError(
                f"The archive {archive} holds no '{name}' data: expected {_LAYOUTS[name]}, at its "
                "top level or one folder down."
            )
        return _decode_folder(name, *found)

    return _Source(key=_fingerprint(os.path.dirname(archive), [archive]), decode=decode)


def _extract(archive):
    """Extracts `archive` once into the cache; returns the extracted folder.

    Extraction goes to a temporary folder renamed into place, so the folder
    exists only when complete; the "data" filter refuses absolute paths,
    ``..``, links leading out and device files.
    """
    stem = os.path.basename(archive)
    for suffix in _ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    root = os.path.join(branchzoo_home(), "extracted")
    target = os.path.join(root, f"{stem}-{_fingerprint(os.path.dirname(archive), [archive])}")
    if os.path.isdir(target):
        return target
    tmp = temp_path(root)
    os.makedirs(tmp)
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError) as e:
            raise ValueError(
                f"`data_dir` archive {archive} could not be extracted safely: {e}. Expected a "
                ".tar.gz/.tgz/.tar with relative member paths inside the archive."
            ) from None
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same extraction first: use its copy.
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tfds_source(name, where):
    """tensorflow_datasets as the source; a DatasetNotFoundError explains any failure."""

    def fail(reason):
        return DatasetNotFoundError(
            f"Dataset '{name}' is not available: {where}, and {reason}. Point branchzoo at local "
            f"files with load_dataset(..., data_dir=...), the --data-dir option or the "
            f"{DATA_DIR_ENV} environment variable. Accepted for '{name}': {_LAYOUTS[name]}; "
            f"given directly, as a .tar.gz/.tgz/.tar archive, or as a child folder or archive "
            f"whose name starts with '{name}'."
        )

    try:
        version = importlib.metadata.version("tensorflow-datasets")
    except importlib.metadata.PackageNotFoundError:
        raise fail("tensorflow_datasets is not installed to download it") from None

    def decode():
        try:
            import tensorflow_datasets as tfds

            unreachable = _unreachable_download_hosts(tfds, name)
            if unreachable:  # fail now: tfds itself retries for minutes before giving up
                raise fail(f"its download host cannot be reached ({'; '.join(unreachable)})")
            loaded = {
                split: tfds.load(name, split=split, as_supervised=True, batch_size=-1)
                for split in SPLITS
            }
        except DatasetNotFoundError:
            raise
        except Exception as e:  # offline failures come as many different types
            first_line = (str(e).strip().splitlines() or [""])[0]
            summary = f"{type(e).__name__}: {first_line}"[:300]
            raise fail(f"downloading it with tensorflow_datasets failed ({summary})") from e
        images = {split: np.asarray(loaded[split][0]) for split in SPLITS}
        labels = {split: np.asarray(loaded[split][1]).astype(np.int64) for split in SPLITS}
        return images, labels, _CLASS_NAMES[name]

    return _Source(key=f"tfds{version}-v{_CACHE_VERSION}", decode=decode)


def _unreachable_download_hosts(tfds, name, timeout=10.0):
    """`host:port (error)` for each download host of tfds' `name` that a TCP connect fails on.

    Empty when the dataset is already prepared in tfds' data_dir (nothing to download).
    """
    builder = tfds.builder(name)
    if builder.is_prepared():
        return []
    ports = {"https": 443, "http": 80}
    hosts = sorted({(u.hostname, u.port or ports.get(u.scheme, 443))
                    for u in map(urllib.parse.urlsplit, builder.url_infos or {}) if u.hostname})
    unreachable = []
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            unreachable.append(f"{host}:{port}: {type(e).__name__}: {e}")
    return unreachable


# --- decoders --------------------------------------------------------------------


def _decode_folder(name, root, layout):
    if layout == "idx":
        return _read_idx_folder(name, root)
    if layout == "cifar_python":
        return _read_cifar_python(name, root)
    images, labels, class_names = _read_image_folder(root)
    if name in _CLASS_NAMES and len(class_names) != len(_CLASS_NAMES[name]):
        raise ValueError(
            f"The '{name}' image folder {root} must hold {len(_CLASS_NAMES[name])} class "
            "folders in train/. "
            f"Received: {len(class_names)} ({', '.join(class_names[:12])}"
            f"{', ...' if len(class_names) > 12 else ''})"
        )
    return images, labels, class_names


def _decode_digits():
    """scikit-learn's 8x8 digits at 32x32x3 uint8, split 80/20 (stratified, fixed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    scaled = digits.images.astype(np.float32)[..., None] * (255.0 / 16.0)
    resized = tf.image.resize(scaled, (_DIGITS_SIZE, _DIGITS_SIZE), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=_DIGITS_TEST_SIZE, stratify=labels,
        random_state=_DIGITS_RANDOM_STATE,
    )
    images = {"train": x_train, "test": x_test}
    return images, {"train": y_train, "test": y_test}, _CLASS_NAMES["digits"]


def _idx_path(folder, base):
    for fname in (base, base + ".gz"):
        path = os.path.join(folder, fname)
        if os.path.isfile(path):
            return path
    raise DatasetNotFoundError(
        f"{folder} holds IDX files but not {base} (or {base}.gz); expected {_IDX_LAYOUT}."
    )


def _read_idx(path, magic):
    """The uint8 array stored in the IDX file `path`, checked against its `magic` number."""
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError) as e:
        raise ValueError(f"IDX file {path} is not a readable gzip file: {e}") from None
    received = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if received != magic:
        raise ValueError(
            f"{path} is not an IDX {kind} file: expected magic number {magic}. Received: {received}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise ValueError(
            f"IDX file {path} is truncated or corrupt: its header declares shape {dims}, "
            f"{expected} bytes in all. Received: {len(raw)} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_idx_folder(name, folder):
    images, labels = {}, {}
    for split, (images_base, labels_base) in _IDX_FILES.items():
        images_path, labels_path = _idx_path(folder, images_base), _idx_path(folder, labels_base)
        images[split] = _read_idx(images_path, _IDX_IMAGES_MAGIC)[..., None]
        labels[split] = _read_idx(labels_path, _IDX_LABELS_MAGIC).astype(np.int64)
        if len(images[split]) != len(labels[split]):
            raise ValueError(
                f"{images_path} holds {len(images[split])} images but {labels_path} holds "
                f"{len(labels[split])} labels; they must match."
            )
    return images, labels, _CLASS_NAMES[name]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run any code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a CIFAR python-archive pickle: {e}") from None


def _read_cifar_python(name, folder):
    """The official CIFAR python archive: pickled dicts of [N, 3072] CHW rows."""
    spec = _CIFAR_PYTHON[name]
    images, labels = {}, {}
    for split, fnames in spec["files"].items():
        parts_x, parts_y = [], []
        for fname in fnames:
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise DatasetNotFoundError(
                    f"{folder} holds part of the {name} python archive but not {fname}; "
                    f"expected {', '.join(f for fs in spec['files'].values() for f in fs)}."
                )
            batch = _unpickle(path)
            if not isinstance(batch, dict) or b"data" not in batch or spec["labels"] not in batch:
                received = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
                raise ValueError(
                    f"{path} must be a dict with keys b'data' and {spec['labels']!r}. "
                    f"Received: {received}"
                )
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * _CIFAR_SIZE * _CIFAR_SIZE:
                raise ValueError(
                    f"{path}: b'data' must have shape [N, {3 * _CIFAR_SIZE * _CIFAR_SIZE}]. "
                    f"Received: {data.shape}"
                )
            parts_x.append(data.reshape(-1, 3, _CIFAR_SIZE, _CIFAR_SIZE).transpose(0, 2, 3, 1))
            parts_y.append(np.asarray(batch[spec["labels"]], dtype=np.int64))
        images[split] = np.concatenate(parts_x)
        labels[split] = np.concatenate(parts_y)
    class_names = _CLASS_NAMES[name]
    meta = os.path.join(folder, spec["meta"])
    if os.path.isfile(meta):
        stored = _unpickle(meta)
        if isinstance(stored, dict) and spec["names"] in stored:
            class_names = tuple(
                n.decode() if isinstance(n, bytes) else str(n) for n in stored[spec["names"]]
            )
    return images, labels, class_names


def _list_image_folder(root):
    """Class names (sorted train folders) and ``{split: [(path, label), ...]}``."""
    split_dirs = {split: os.path.join(root, split) for split in SPLITS}
    for split, folder in split_dirs.items():
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"The image folder {root} has no {split}/ folder; expected {_FOLDER_LAYOUT}."
            )

    def subfolders(folder):
        return sorted(e for e in os.listdir(folder)
                      if not e.startswith(".") and os.path.isdir(os.path.join(folder, e)))

    class_names = subfolders(split_dirs["train"])
    files = {}
    for split, folder in split_dirs.items():
        unknown = sorted(set(subfolders(folder)) - set(class_names))
        if unknown:
            raise ValueError(
                f"{folder} has class folders that train/ lacks: {', '.join(unknown)}. Every test "
                "class must also be a train class."
            )
        files[split] = [
            (os.path.join(folder, cls, fname), label)
            for label, cls in enumerate(class_names)
            if os.path.isdir(os.path.join(folder, cls))
            for fname in sorted(os.listdir(os.path.join(folder, cls)))
            if fname.lower().endswith(_IMAGE_SUFFIXES) and not fname.startswith(".")
        ]
        if not files[split]:
            raise DatasetNotFoundError(
                f"{folder} holds no images; expected {split}/<class>/* with "
                f"{', '.join(_IMAGE_SUFFIXES)} files."
            )
    return tuple(class_names), files


def _decode_image(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L" if image.mode in ("1", "L", "LA") else "RGB"))
    except OSError as e:
        raise ValueError(f"Cannot decode the image {path}: {e}") from None


def _read_image_folder(root):
    """Decodes an image folder (threads: PIL releases the GIL while decoding)."""
    class_names, files = _list_image_folder(root)
    paths = [path for split in SPLITS for path, _ in files[split]]
    with futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(_decode_image, paths))
    size = decoded[0].shape[:2]
    odd = [i for i, image in enumerate(decoded) if image.shape[:2] != size]
    if odd:
        first = odd[0]
        raise ValueError(
            f"All images of an image folder must share one size: {paths[0]} is "
            f"{size[0]}x{size[1]} but {paths[first]} is "
            f"{decoded[first].shape[0]}x{decoded[first].shape[1]} ({len(odd)} of {len(paths)} "
            "images differ). Resize them to one size first, e.g. with PIL: "
            "Image.open(p).resize((width, height)).save(p)."
        )
    # Grey images join colour ones as three equal channels.
    channels = 3 if any(image.ndim == 3 for image in decoded) else 1
    stacked = np.stack([
        image if image.ndim == 3 else np.repeat(image[..., None], channels, axis=-1)
        for image in decoded
    ])
    n_train = len(files["train"])
    images = {"train": stacked[:n_train], "test": stacked[n_train:]}
    labels = {
        split: np.array([label for _, label in files[split]], dtype=np.int64) for split in SPLITS
    }
    return images, labels, class_names
