"""The official CIFAR-10 / CIFAR-100 python archives: pickled dicts of [N, 3072] CHW rows."""

import os
import pickle

import numpy as np

from branchzoo.data.errors import DatasetNotFoundError
from branchzoo.data.specs import Layout

SIZE = 32


def layout(folder_name, train_files, test_files, labels_key, meta_file, names_key):
    """The `Layout` of one CIFAR python archive.

    Args:
        folder_name: the archive's folder (for messages), e.g. ``cifar-10-batches-py``.
        train_files, test_files: the pickles of each split.
        labels_key: the label list in each pickle (``b"labels"``, ``b"fine_labels"``).
        meta_file: the pickle holding the class names.
        names_key: the class-name list in it.

    Returns:
        A `Layout`; the first train file marks the folder.
    """
    files_by_split = {"train": tuple(train_files), "test": tuple(test_files)}
    description = (
        f"the official python archive {folder_name}/ "
        f"({_compact_list(train_files)}, {_compact_list(test_files)})"
    )

    def detect(folder):
        return os.path.isfile(os.path.join(folder, files_by_split["train"][0]))

    def files(root):
        return sorted(
            os.path.join(root, f) for f in os.listdir(root) if os.path.isfile(os.path.join(root, f))
        )

    def read(folder, spec, params):
        return read_archive(folder, spec, files_by_split, labels_key, meta_file, names_key)

    return Layout("cifar_python", description, detect, files, read)


def _compact_list(names):
    names = list(names)
    return f"{names[0]}..{names[-1].rsplit('_', 1)[-1]}" if len(names) > 2 else ", ".join(names)


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


def unpickle(path):
    """The pickle at `path`, refusing anything but containers and numpy arrays."""
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path} is not a CIFAR python-archive pickle: {e}") from None


def read_archive(folder, spec, files_by_split, labels_key, meta_file, names_key):
    """Both splits as uint8 [N, 32, 32, 3] HWC images, int64 labels and the class names."""
    images, labels = {}, {}
    all_files = [f for fs in files_by_split.values() for f in fs]
    for split, fnames in files_by_split.items():
        parts_x, parts_y = [], []
        for fname in fnames:
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise DatasetNotFoundError(
                    f"{folder} holds part of the {spec.name} python archive but not {fname}; "
                    f"expected {', '.join(all_files)}."
                )
            batch = unpickle(path)
            if not isinstance(batch, dict) or b"data" not in batch or labels_key not in batch:
                received = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
                raise ValueError(
                    f"{path} must be a dict with keys b'data' and {labels_key!r}. "
                    f"Received: {received}"
                )
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
                raise ValueError(
                    f"{path}: b'data' must have shape [N, {3 * SIZE * SIZE}]. "
                    f"Received: {data.shape}"
                )
            parts_x.append(data.reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1))
            parts_y.append(np.asarray(batch[labels_key], dtype=np.int64))
        images[split] = np.concatenate(parts_x)
        labels[split] = np.concatenate(parts_y)
    class_names = spec.class_names
    meta = os.path.join(folder, meta_file)
    if os.path.isfile(meta):
        stored = unpickle(meta)
        if isinstance(stored, dict) and names_key in stored:
            class_names = tuple(
                n.decode() if isinstance(n, bytes) else str(n) for n in stored[names_key]
            )
    return images, labels, class_names
