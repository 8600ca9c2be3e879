"""Reusable branched layers. `keras.ops` only: they run on every Keras backend.

Every public layer is registered with
``keras.saving.register_keras_serializable(package="branchzoo")``, so a
``.keras`` file that uses them loads without ``custom_objects``.
"""

from branchzoo.layers.branch_sum import BranchSum
from branchzoo.layers.grouped import BatchedDense, GroupedConv2D
from branchzoo.layers.multipath import MultiPathBlock

__all__ = ["BatchedDense", "BranchSum", "GroupedConv2D", "MultiPathBlock"]
