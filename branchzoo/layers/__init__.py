"""Reusable branched layers. `keras.ops` only: they run on every Keras backend.

Every public layer is registered with
``keras.saving.register_keras_serializable(package="branchzoo")``, so a
``.keras`` file that uses them loads without ``custom_objects``.
"""

from branchzoo.layers.ensemble import ModularLossEnsemble
from branchzoo.layers.gated import GatedConnect
from branchzoo.layers.branch_sum import BranchSum
from branchzoo.layers.branched_generator import (
    BranchedGenerator,
    GaussianBlur,
    LearnedDiffusion,
    MultiDomainDiscriminator,
)
from branchzoo.layers.grouped import BatchedDense, GroupedConv2D
from branchzoo.layers.multipath import MultiPathBlock
from branchzoo.layers.resnext import ResNeXtModule

__all__ = [
    "BatchedDense",
    "GroupedConv2D",
    "ModularLossEnsemble",
    "MultiPathBlock",
    "GatedConnect",
    "ResNeXtModule",
    "BranchSum",
    "BranchedGenerator",
    "GaussianBlur",
    "LearnedDiffusion",
    "MultiDomainDiscriminator",
]
