"""The IDX format of MNIST and Fashion-MNIST (gzipped or not)."""

import gzip
import math
import os

import numpy as np

from branchzoo.data.errors import DatasetNotFoundError
from branchzoo.data.specs import Layout

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DESCRIPTION = (
    "the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz)"
)


def layout():
    """The IDX `Layout`: any of the four files (or its .gz) marks the folder."""

    def detect(folder):
        entries = set(os.listdir(folder))
        bases = [base for pair in FILES.values() for base in pair]
        return any(base in entries or base + ".gz" in entries for base in bases)

    def files(root):
        return [idx_path(root, base) for pair in FILES.values() for base in pair]

    return Layout("idx", DESCRIPTION, detect, files, read_folder)


def idx_path(folder, base):
    """`folder/base` or `folder/base.gz`, whichever exists."""
    for fname in (base, base + ".gz"):
        path = os.path.join(folder, fname)
        if os.path.isfile(path):
            return path
    raise DatasetNotFoundError(
        f"{folder} holds IDX files but not {base} (or {base}.gz); expected {DESCRIPTION}."
    )


def read_idx(path, magic):
    """The uint8 array stored in the IDX file `path`, checked against its `magic` number."""
    kind = "images" if magic == IMAGES_MAGIC else "labels"
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


def read_folder(folder, spec, params):
    """Both splits of an IDX folder: images [N, H, W, 1], int64 labels, the spec's class names."""
    images, labels = {}, {}
    for split, (images_base, labels_base) in FILES.items():
        images_path, labels_path = idx_path(folder, images_base), idx_path(folder, labels_base)
        images[split] = read_idx(images_path, IMAGES_MAGIC)[..., None]
        labels[split] = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
        if len(images[split]) != len(labels[split]):
            raise ValueError(
                f"{images_path} holds {len(images[split])} images but {labels_path} holds "
                f"{len(labels[split])} labels; they must match."
            )
    return images, labels, spec.class_names
