"""Where a dataset's arrays come from: bundled, local folders or archives, or tfds.

`data_dir` (default ``$BRANCHZOO_DATA_DIR``) is the dataset's folder itself,
a ``.tar.gz``/``.tgz``/``.tar`` of it, or a parent folder with the dataset as a
child folder or archive whose name matches the spec's `child_patterns` (by
default: starts with the dataset name, lower case, ``-`` and ``_`` dropped,
and no digit right after, so ``cifar10`` skips ``cifar-100-python``); inside
an archive or such a child the dataset may sit one folder deeper. With no
local files, a dataset with a `tfds_name` is fetched with
``tensorflow_datasets`` (except when an explicit `data_dir` lacks it: that is
an error at once). Archives are extracted once, under
``branchzoo_home()/extracted/<archive stem>-<key>/``, `key` from the archive's
absolute path, size and mtime.
"""

import dataclasses
import importlib.metadata
import os
import shutil
import socket
import tarfile
import urllib.parse

import numpy as np

from branchzoo._home import branchzoo_home
from branchzoo._io import temp_path
from branchzoo.data.cache import CACHE_VERSION, SPLITS, fingerprint
from branchzoo.data.errors import DatasetNotFoundError
from branchzoo.data.specs import get_spec

DATA_DIR_ENV = "BRANCHZOO_DATA_DIR"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a dataset's arrays come from: a cache key and how to decode them.

    Attributes:
        key: identifies the source's content (file stats, a library version).
        decode: ``() -> (images by split, labels by split, class names or None)``.
    """

    key: str
    decode: object


def find_source(spec, data_dir, params):
    """Where `spec`'s data comes from: a reader, local files, or tensorflow_datasets."""
    if spec.reader is not None:
        version = spec.reader_version() if callable(spec.reader_version) else spec.reader_version
        return Source(key=f"{version}-v{CACHE_VERSION}", decode=lambda: spec.reader(params))
    explicit = data_dir is not None
    if not explicit:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    origin = "data_dir" if explicit else DATA_DIR_ENV
    if data_dir is not None:
        source, checked = find_local(spec, data_dir, origin, params)
        if source is not None:
            return source
        where = (
            f"{origin}={os.fspath(data_dir)!r} holds no '{spec.name}' data (checked {checked}; "
            f"expected {spec.layout_description})"
        )
        if explicit:
            raise DatasetNotFoundError(
                f"{where}. Give data_dir as the dataset's folder or archive, or a folder "
                f"holding it as a child folder or archive whose name starts with '{spec.name}'."
            )
    else:
        where = f"no data_dir was given (and {DATA_DIR_ENV} is not set)"
    if spec.tfds_name is None:
        raise DatasetNotFoundError(
            f"Dataset '{spec.name}' needs local files, but {where}. Pass data_dir= (CLI: "
            f"--data-dir, or set {DATA_DIR_ENV}) pointing at {spec.layout_description}."
        )
    return tfds_source(spec, where)


def is_archive(path):
    return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def matching_children(spec, folder):
    """Child folders, then archives, of `folder` that may hold `spec` (a spec or a name)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    dirs, archives = [], []
    for entry in sorted(os.listdir(folder)):
        if not spec.matches_child(entry):
            continue
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            dirs.append(path)
        elif is_archive(path):
            archives.append(path)
    return dirs + archives


def find_local(spec, data_dir, origin, params):
    """The local source of `spec` under `data_dir`; returns (source or None, what was checked)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`{origin}` must be an existing folder or archive. "
            f"Received: {origin}={os.fspath(data_dir)!r}"
        )
    if is_archive(path):
        return archive_source(spec, path, params), [path]
    if os.path.isdir(path):
        layout = detect_layout(spec, path)
        if layout is not None:
            return folder_source(spec, path, layout, params), [path]
        children = matching_children(spec, path)
        for child in children:
            if is_archive(child):
                return archive_source(spec, child, params), [path, *children]
            found = nested_layout(spec, child)
            if found is not None:
                return folder_source(spec, *found, params), [path, *children]
        return None, [path, *children]
    return None, [path]


def detect_layout(spec, folder):
    """The first of `spec.layouts` that holds the dataset directly in `folder`, or None."""
    for layout in spec.layouts:
        if layout.detect(folder):
            return layout
    return None


def nested_layout(spec, folder):
    """(root, layout) of `spec` in `folder` or one of its subfolders, or None."""
    layout = detect_layout(spec, folder)
    if layout is not None:
        return folder, layout
    for entry in sorted(os.listdir(folder)):
        child = os.path.join(folder, entry)
        if os.path.isdir(child) and not entry.startswith("."):
            layout = detect_layout(spec, child)
            if layout is not None:
                return child, layout
    return None


def folder_source(spec, root, layout, params):
    return Source(
        key=fingerprint(root, layout.files(root)),
        decode=lambda: layout.read(root, spec, params),
    )


def archive_source(spec, archive, params):
    """An archive keyed by its own stats: a cached decode needs no extraction."""

    def decode():
        extracted = extract(archive)
        found = nested_layout(spec, extracted)
        if found is None:
            raise DatasetNotFoundError(
                f"The archive {archive} holds no '{spec.name}' data: expected "
                f"{spec.layout_description}, at its top level or one folder down."
            )
        root, layout = found
        return layout.read(root, spec, params)

    return Source(key=fingerprint(os.path.dirname(archive), [archive]), decode=decode)


def extract(archive):
    """Extracts `archive` once into the cache; returns the extracted folder.

    Extraction goes to a temporary folder renamed into place, so the folder
    exists only when complete; the "data" filter refuses absolute paths,
    ``..``, links leading out and device files.
    """
    stem = os.path.basename(archive)
    for suffix in ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    root = os.path.join(branchzoo_home(), "extracted")
    target = os.path.join(root, f"{stem}-{fingerprint(os.path.dirname(archive), [archive])}")
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


def tfds_source(spec, where):
    """tensorflow_datasets as the source; a DatasetNotFoundError explains any failure."""
    name = spec.name

    def fail(reason):
        return DatasetNotFoundError(
            f"Dataset '{name}' is not available: {where}, and {reason}. Point branchzoo at local "
            f"files with load_dataset(..., data_dir=...), the --data-dir option or the "
            f"{DATA_DIR_ENV} environment variable. Accepted for '{name}': "
            f"{spec.layout_description}; given directly, as a .tar.gz/.tgz/.tar archive, or as "
            f"a child folder or archive whose name starts with '{name}'."
        )

    try:
        version = importlib.metadata.version("tensorflow-datasets")
    except importlib.metadata.PackageNotFoundError:
        raise fail("tensorflow_datasets is not installed to download it") from None

    def decode():
        try:
            import tensorflow_datasets as tfds

            unreachable = unreachable_download_hosts(tfds, spec.tfds_name)
            if unreachable:  # fail now: tfds itself retries for minutes before giving up
                raise fail(f"its download host cannot be reached ({'; '.join(unreachable)})")
            loaded = {
                split: tfds.load(spec.tfds_name, split=split, as_supervised=True, batch_size=-1)
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
        return images, labels, spec.class_names

    return Source(key=f"tfds{version}-v{CACHE_VERSION}", decode=decode)


def unreachable_download_hosts(tfds, name, timeout=10.0):
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
