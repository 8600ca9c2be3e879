"""Reusable branched layers. `keras.ops` only: they run on every Keras backend.

Every public layer is registered with
``keras.saving.register_keras_serializable(package="branchzoo")``, so a
``.keras`` file that uses them loads without ``custom_objects``.
"""

from branchzoo.layers.branched_generator import (
    BranchedGenerator,
    GaussianBlur,
    LearnedDiffusion,
    MultiDomainDiscriminator,
)
from branchzoo.layers.grouped import BatchedDense, GroupedConv2D
from branchzoo.layers.multipath import MultiPathBlock

__all__ = ["BatchedDense", "BranchedGenerator", "GaussianBlur", "GroupedConv2D", "LearnedDiffusion",
           "MultiDomainDiscriminator", "MultiPathBlock"]
