"""Small file helpers: atomic writes and hashing."""

import contextlib
import hashlib
import json
import os
import re
import uuid

# Lists of scalars stay on one line: entries and run configs read like tables.
_SCALAR_LIST = re.compile(r"\[\s*((?:[-\w.\"+]+\s*,\s*)*[-\w.\"+]+)\s*\]")


def dumps(obj):
    """Pretty JSON with short scalar lists kept on one line."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    return _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def temp_path(folder, suffix=""):
    """A fresh hidden name in `folder` for a file or folder to be renamed into place.

    (Not `tempfile`'s: it creates private 0600/0700 entries, which would keep
    those modes once renamed.)
    """
    return os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}{suffix}")


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Opens a temp file beside `path` for writing; renames it onto `path` when done.

    `path` never holds a half-written file: the data is flushed to disk before
    the rename, and an error inside the block removes the temp file instead.

    Args:
        path: the file to write.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb'. Received: mode={mode!r}")
    tmp = temp_path(os.path.dirname(os.path.abspath(path)))
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj):
    """Writes `obj` as JSON to `path` atomically (see `atomic_open`)."""
    with atomic_open(path) as f:
        f.write(dumps(obj) + "\n")


def sha256_of(path):
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_writable(path, argument, folder=True):
    """Raises ValueError unless `path` can be written, as a folder or (``folder=False``) a file.

    The first missing folder on the way is what will be created, so its parent
    is tried: a scratch folder is made there and removed at once. (Permission
    bits say nothing to root, and nothing about /proc or a read-only mount.)

    Args:
        path: the folder or file to be written.
        argument: its name in messages (e.g. ``"output"``).
        folder: whether `path` is a folder (else a file, written beside its
            temp file in its parent folder).
    """
    full = os.path.abspath(path)
    if os.path.exists(full) and os.path.isdir(full) != folder:
        expected = "a folder" if folder else "a file, not a folder"
        raise ValueError(f"`{argument}` must be {expected}; {full} is "
                         f"{'a file' if folder else 'a folder'}. Received: {argument}={path!r}")
    probe = full if folder and os.path.isdir(full) else os.path.dirname(full)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"`{argument}` must be a path that can be created, but {probe} is a file. "
                         f"Received: {argument}={path!r}")
    scratch = temp_path(probe)
    try:
        os.mkdir(scratch)
    except OSError as e:
        raise ValueError(f"`{argument}` must be a path that can be created and written, but {probe} "
                         f"refuses new entries ({e.strerror}). Received: {argument}={path!r}") from None
    os.rmdir(scratch)
