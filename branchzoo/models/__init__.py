"""Model families: one module per family, each builder registered in the zoo.

    >>> from branchzoo.models import mpnet, vgg16, resnet34, densenet18, modular_mlp, branched_resnet18, BranchedGAN
"""

from branchzoo.models.densenet import densenet, densenet18
from branchzoo.models.modular import modular_cnn, modular_densenet_bc, modular_mlp
from branchzoo.models.alexnet import alexnet, branched_stem_cnn
from branchzoo.models.branched_resnet import branched_mlp, branched_resnet, branched_resnet18
from branchzoo.models.inception import inception_v1
from branchzoo.models.branched_gan import BranchedGAN, branched_gan
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
    "alexnet",
    "branched_mlp",
    "branched_resnet",
    "branched_resnet18",
    "branched_stem_cnn",
    "inception_v1",
    "BranchedGAN",
    "branched_gan",
]
