"""branchzoo: a Keras 3 model zoo of branched neural networks and tools to study them.

    >>> import branchzoo
    >>> branchzoo.list_models("mpnet*")[:1]
    ['mpnet2_1x3_2x7_cifar10']
    >>> model = branchzoo.load("mpnet_tiny_digits", weights=None)   # untrained
    >>> model.output.shape
    (None, 10)
"""

__version__ = "0.1.0"

from branchzoo import _tfenv  # noqa: E402

_tfenv.enable_onednn()  # TensorFlow's oneDNN CPU kernels on every x86-64 CPU (see _tfenv.onednn_default)
_tfenv.quiet_tensorflow_startup()  # before the first import of TensorFlow (through keras, below)

from branchzoo import layers  # noqa: F401  (registers the serialisable layers)
from branchzoo import losses  # noqa: F401  (registers the losses and metrics recipes name)
from branchzoo import models  # noqa: F401  (registers the model builders)
from branchzoo import optimizers  # noqa: F401  (registers the optimizers recipes build)
from branchzoo.zoo import build, list_models, load, model_card  # noqa: F401

__all__ = ["build", "list_models", "load", "model_card", "layers", "models"]
