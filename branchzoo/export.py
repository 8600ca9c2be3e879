"""Writing models: `.keras` files and TensorFlow SavedModels, atomically.

TensorFlow-only (SavedModel export is this module's job).
"""

import os
import shutil
import tempfile

import numpy as np

from branchzoo._io import temp_path


def _replace_path(tmp, path):
    """Moves `tmp` onto `path`, replacing a previous file or folder there."""
    if os.path.isdir(path) and not os.path.islink(path):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(path) or ".")
        os.rename(path, os.path.join(old, "x"))
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_keras_atomic(model, path):
    """`model.save(path)` through a temp file in the same folder, then a rename."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"`path` must end in '.keras'. Received: path={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temp_path(folder, suffix=".keras")  # Keras insists on the suffix
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def export_saved_model(model, path, verify_batch=None, atol=1e-5, rtol=0.0):
    """Exports `model` as a TF SavedModel (``serve`` endpoint) atomically.

    The export is written to a temp folder beside `path` and renamed into
    place once complete. With `verify_batch`, the exported ``serve`` output is
    compared with the Keras model's (inference mode) and an error is raised
    when they differ by more than ``atol + rtol * max|Keras output|`` (a
    mixed-precision model's graph may fuse and round its 16-bit ops
    differently from the eager call: `branchzoo.precision.relative_tolerance`).

    Args:
        model: a Keras model (TensorFlow backend).
        path: the SavedModel folder to write.
        verify_batch: optional input batch (numpy) to check the export on;
            a list (or tuple) of arrays for a model with several inputs
            (e.g. a generator's ``[images, target_classes]``), which the
            ``serve`` endpoint takes as one list.
        atol: largest allowed absolute difference.
        rtol: allowed difference relative to the largest output magnitude.

    Returns:
        The largest absolute difference found (0.0 when not verified).
    """
    import tensorflow as tf

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    target = os.path.join(tmp, "saved_model")
    try:
        model.export(target, format="tf_saved_model", verbose=False)
        diff = 0.0
        if verify_batch is not None:
            reloaded = tf.saved_model.load(target)  # keep a reference: it owns the variables
            if isinstance(verify_batch, (list, tuple)):
                verify_batch = [np.asarray(part) for part in verify_batch]
                served = reloaded.serve([tf.constant(part) for part in verify_batch])
            else:
                served = reloaded.serve(tf.constant(verify_batch))
            expected = np.asarray(model(verify_batch, training=False))
            diff = float(np.max(np.abs(np.asarray(served) - expected)))
            allowed = atol + rtol * float(np.max(np.abs(expected))) if rtol else atol
            if not diff <= allowed:
                raise ValueError(
                    f"The exported SavedModel's output differs from the Keras model's "
                    f"by {diff:.3g} (allowed {allowed:.3g}); nothing was written to {path}."
                )
        _replace_path(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return diff
