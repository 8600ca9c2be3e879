"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet, vgg16, resnet34, densenet18, modular_mlp
"""

from branchzoo.models.densenet import densenet, densenet18
from branchzoo.models.modular import modular_cnn, modular_densenet_bc, modular_mlp
from branchzoo.models.mpnet import mpnet
from branchzoo.models.resnet import resnet, resnet18, resnet34
from branchzoo.models.vgg import vgg, vgg16

from branchzoo.models.resnext import parameter_report, prune_gated, resnext_cifar

__all__ = [
    "mpnet",
    "vgg",
    "vgg16",
    "resnet",
    "resnet18",
    "resnet34",
    "densenet",
    "densenet18",
    "modular_cnn",
    "modular_densenet_bc",
    "modular_mlp",
    "parameter_report",
    "prune_gated",
    "resnext_cifar",
]
