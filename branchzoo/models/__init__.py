"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet, branched_resnet18
"""

from branchzoo.models.alexnet import alexnet, branched_stem_cnn
from branchzoo.models.branched_resnet import branched_mlp, branched_resnet, branched_resnet18
from branchzoo.models.inception import inception_v1
from branchzoo.models.mpnet import mpnet

__all__ = ["alexnet", "branched_mlp", "branched_resnet", "branched_resnet18", "branched_stem_cnn",
           "inception_v1", "mpnet"]
