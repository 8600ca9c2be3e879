"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet, branched_resnet18
"""

from branchzoo.models.branched_resnet import branched_mlp, branched_resnet, branched_resnet18
from branchzoo.models.mpnet import mpnet

__all__ = ["branched_mlp", "branched_resnet", "branched_resnet18", "mpnet"]
