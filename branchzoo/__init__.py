"""branchzoo: a Keras 3 model zoo of branched neural networks and tools to study them.

    >>> import branchzoo
    >>> branchzoo.list_models("mpnet*")[:1]
    ['mpnet2_1x3_2x7_cifar10']
    >>> model = branchzoo.load("mpnet_tiny_digits", weights=None)   # untrained
    >>> model.output.shape
    (None, 10)

Importing branchzoo imports neither TensorFlow, Keras nor matplotlib:
listing and model cards read JSON. Submodules (``branchzoo.models``,
``branchzoo.layers``, ...) load on first use (PEP 562). A ``.keras`` file of
branchzoo layers loads with ``keras.models.load_model`` and no
``custom_objects`` once `register_keras_objects` has run (or the module
defining them is imported: ``import branchzoo.layers``); evaluate.py and
`branchzoo.load` see to it themselves.
"""

__version__ = "0.1.0"

from branchzoo import _tfenv  # noqa: E402

_tfenv.enable_onednn()  # TensorFlow's oneDNN CPU kernels on every x86-64 CPU (see _tfenv.onednn_default)
_tfenv.quiet_tensorflow_startup()  # before branchzoo first imports TensorFlow (any submodule loads after this)

from branchzoo.zoo import build, list_models, load, model_card  # noqa: E402  (Keras only once a model is built)

# Submodules `branchzoo.<name>` gives on first use.
_SUBMODULES = (
    "analysis", "callbacks", "data", "distributed", "download", "export", "gan_task", "gpu_check", "launch",
    "layers", "losses", "models", "optimizers", "precision", "publish", "registry", "tasks", "training", "zoo",
)


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"branchzoo.{name}")
    raise AttributeError(f"module 'branchzoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))


def register_keras_objects():
    """Registers every serialisable branchzoo object with Keras (imports the modules defining them).

    Layers, losses and metrics, optimizers and models (`BranchedGAN`): after
    this, ``keras.models.load_model`` reads any branchzoo ``.keras`` file
    without ``custom_objects``.
    """
    from branchzoo import layers, losses, models, optimizers  # noqa: F401


__all__ = ["build", "list_models", "load", "model_card", "register_keras_objects", "layers", "models"]
