"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet, branched_gan, BranchedGAN
"""

from branchzoo.models.branched_gan import BranchedGAN, branched_gan
from branchzoo.models.mpnet import mpnet

__all__ = ["BranchedGAN", "branched_gan", "mpnet"]
