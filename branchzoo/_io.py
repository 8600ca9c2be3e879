"""Small file helpers: atomic JSON writes and hashing."""

import hashlib
import json
import os
import re

# Lists of scalars stay on one line: entries and run configs read like tables.
_SCALAR_LIST = re.compile(r"\[\s*((?:[-\w.\"+]+\s*,\s*)*[-\w.\"+]+)\s*\]")


def dumps(obj):
    """Pretty JSON with short scalar lists kept on one line."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    return _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


def write_json_atomic(path, obj):
    """Writes `obj` as JSON to `path` via a temp file + rename (never half-written)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_of(path):
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
