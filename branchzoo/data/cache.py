"""Decoded datasets: checked, with train statistics, cached in memory and on disk.

On disk, under ``branchzoo_home()/datasets``: ``<name>-<key>.npz`` holding the
decoded uint8 images, int64 labels, class names and train mean/std, written
atomically; `key` says where the arrays came from (see `branchzoo.data.sources`).
"""

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile

import numpy as np

from branchzoo._io import atomic_open

SPLITS = ("train", "test")
# Bump when decoding changes, so caches written by older code are not reused.
CACHE_VERSION = 1

# In-process memo: cache key -> Record.
_MEMO = {}


@dataclasses.dataclass(frozen=True)
class Record:
    """Decoded arrays of both splits.

    Attributes:
        images: ``{split: array}``: uint8 images [N, H, W, C], or float32
            inputs [N, d] for synthetic data.
        labels: ``{split: array}``: int64 labels [N], or float32 targets [N, t].
        class_names: one per label (empty for synthetic data).
        mean, std: per-channel (per-feature) statistics of the train
            images scaled to [0, 1] (of the raw train inputs, for synthetic data).
    """

    images: dict
    labels: dict
    class_names: tuple
    mean: np.ndarray
    std: np.ndarray


def clear_memo():
    _MEMO.clear()


def memo_get(key):
    return _MEMO.get(key)


def memo_put(key, record):
    # Shared through the memo: an edit by one caller must not leak to others.
    for array in (*record.images.values(), *record.labels.values()):
        array.setflags(write=False)
    _MEMO[key] = record
    return record


def make_image_record(name, images, labels, class_names):
    """Checks decoded images and labels and computes the train statistics."""
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
    mean, std = channel_stats(images["train"])
    return Record(
        images={s: np.ascontiguousarray(images[s]) for s in SPLITS},
        labels={s: np.asarray(labels[s]).astype(np.int64) for s in SPLITS},
        class_names=class_names,
        mean=mean,
        std=std,
    )


def make_synthetic_record(inputs, targets):
    """float32 inputs and targets; statistics of the raw train inputs (float64)."""
    train = inputs["train"].astype(np.float64)
    std = train.std(axis=0)
    return Record(
        images={s: np.ascontiguousarray(inputs[s], dtype=np.float32) for s in SPLITS},
        labels={s: np.ascontiguousarray(targets[s], dtype=np.float32) for s in SPLITS},
        class_names=(),
        mean=train.mean(axis=0),
        std=np.where(std > 0, std, 1.0),
    )


def channel_stats(images):
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


def read_cache(path):
    """The record stored at `path`, or None when absent or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            record = Record(
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


def write_cache(path, record):
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


def fingerprint(root, paths):
    """A short hash of the files' paths, sizes and mtimes (and the cache version)."""
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    text = json.dumps([CACHE_VERSION, os.path.abspath(root), stats])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def params_tag(params):
    """A short, stable tag of the dataset parameters that differ from None ('' if none)."""
    set_params = {k: v for k, v in sorted(params.items()) if v is not None}
    if not set_params:
        return ""
    text = json.dumps(set_params, sort_keys=True, default=list)
    return "p" + hashlib.sha256(text.encode()).hexdigest()[:8]
