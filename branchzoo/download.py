"""Fetching files into the cache: published weights, verified by sha256.

The zoo (`branchzoo.zoo`) says what a model's weights are; this module gets
them, from the entry's origin or a mirror, so that nothing half-downloaded or
corrupt is ever left in the cache.
"""

import os
import shutil
import tempfile
import urllib.parse
import urllib.request

from branchzoo import _progress as progress
from branchzoo._home import branchzoo_home
from branchzoo._io import sha256_of


def weights_origin(entry):
    """Where the weights of `entry` are fetched from.

    ``$BRANCHZOO_WEIGHTS_URL`` (a mirror, or ``file://`` folder for
    air-gapped machines) + file name when set; else the entry's ``origin``,
    which may be relative to the zoo folder.
    """
    w = entry["weights"]
    base = os.environ.get("BRANCHZOO_WEIGHTS_URL")
    if base:
        return base.rstrip("/") + "/" + urllib.parse.quote(w["file"])
    origin = w.get("origin") or w["file"]
    if "://" not in origin:
        origin = "file://" + urllib.request.pathname2url(
            os.path.abspath(os.path.join(os.path.dirname(entry["_path"]), origin))
        )
    return origin


def fetch_weights(entry):
    """Fetches the published weights of a zoo `entry` into the cache; returns the path."""
    w = entry["weights"]
    return fetch_file(weights_origin(entry), w["file"], w["sha256"], subdir="weights")


def fetch_file(origin, fname, sha256, subdir="weights"):
    """Downloads `origin` as ``<cache>/<subdir>/<fname>``, verified by sha256.

    A cached file with the wrong hash is fetched again. The download goes to
    a temporary folder in the cache and is moved into place only once its
    hash matches, so a corrupt or interrupted download leaves nothing behind.
    """
    import keras  # deferred: reading cards must not need the framework

    cache = os.path.join(branchzoo_home(), subdir)
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, fname)
    if os.path.exists(target):
        if sha256_of(target) == sha256:
            return target
        print(f"Cached {target} does not match sha256 {sha256}; fetching it again.")
        os.remove(target)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=cache)
    # Keras prints "Downloading data from ..." and a progress bar; not under --quiet.
    interactive = keras.config.is_interactive_logging_enabled()
    if progress.quiet():
        keras.config.disable_interactive_logging()
    try:
        try:
            path = keras.utils.get_file(
                fname=fname, origin=origin, file_hash=sha256, hash_algorithm="sha256",
                cache_dir=tmp, cache_subdir="dl",
            )
        except ValueError as e:
            raise ValueError(
                f"The file fetched from {origin} does not match its sha256 {sha256}; "
                f"nothing was cached. ({e})"
            ) from None
        os.replace(path, target)
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
        shutil.rmtree(tmp, ignore_errors=True)
    return target

