"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet
"""

from branchzoo.models.mpnet import mpnet

__all__ = ["mpnet"]
