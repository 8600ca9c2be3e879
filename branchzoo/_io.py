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
