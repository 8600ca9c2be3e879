"""Keras callbacks: crash-safe backups for resumable training, TensorBoard.

TensorFlow-only (summaries). Analysis callbacks that log branchzoo.analysis
figures to TensorBoard come with the analysis reports.
"""

import glob
import json
import os

import keras

from branchzoo._io import temp_path, write_json_atomic

_METADATA = "training_metadata.json"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups survive a kill at any moment.

    Keras writes the weights and then the epoch counter in place, so a kill
    between the two (or during the weights write) resumes from a corrupt or
    mismatched state. Here each epoch's weights (model and optimizer state)
    go to a new file that is renamed into place, then the metadata naming
    that file is replaced atomically, and only then is the older file
    removed: the metadata always points at a complete checkpoint of the
    epoch it names.

    Args:
        backup_dir: folder for the backup; deleted after training finishes
            (``delete_checkpoint=True``).
        delete_checkpoint: as in Keras.
    """

    def __init__(self, backup_dir, delete_checkpoint=True):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)

    @property
    def metadata_path(self):
        return os.path.join(self.backup_dir, _METADATA)

    def read_metadata(self):
        """The last completed backup's metadata, or None when there is none."""
        if not os.path.exists(self.metadata_path):
            return None
        with open(self.metadata_path) as f:
            return json.load(f)

    def _load_model(self):
        metadata = self.read_metadata()
        if metadata is None:
            return
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model before fit().")
        weights = os.path.join(self.backup_dir, metadata["weights"])
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        self.model._initial_epoch = metadata["epoch"]

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch = self._current_epoch
        name = f"epoch-{epoch:04d}.weights.h5"
        tmp = temp_path(self.backup_dir, suffix=f"-{name}")  # Keras insists on the suffix
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, os.path.join(self.backup_dir, name))
        write_json_atomic(self.metadata_path, {"epoch": epoch, "batch": 0, "weights": name})
        for old in glob.glob(os.path.join(self.backup_dir, "*.weights.h5")):
            if os.path.basename(old) != name:
                os.remove(old)


class TensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` that also writes the op graph.

    Keras 3 (checked on 3.15) only writes the train-function graph when that
    function is itself a `tf.function`, which it no longer is, so the Graphs
    dashboard showed nothing but the conceptual Keras model. This writes the
    graph of the model's forward pass instead, once, at the first batch.
    """

    def _write_keras_model_train_graph(self):
        import tensorflow as tf

        model = self.model
        specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
        forward = tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False))
        with self._train_writer.as_default():
            tf.summary.graph(forward.get_concrete_function(*specs).graph)
