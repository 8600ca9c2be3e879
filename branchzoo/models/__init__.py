"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet
"""

from branchzoo.models.mpnet import mpnet
from branchzoo.models.resnext import parameter_report, prune_gated, resnext_cifar

__all__ = ["mpnet", "parameter_report", "prune_gated", "resnext_cifar"]
