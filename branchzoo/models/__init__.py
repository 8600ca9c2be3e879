"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet
"""

from branchzoo.models.modular import modular_cnn, modular_densenet_bc, modular_mlp
from branchzoo.models.mpnet import mpnet

__all__ = ["modular_cnn", "modular_densenet_bc", "modular_mlp", "mpnet"]
