"""Modular-loss ensembles: the MLP, CNN and DenseNet-BC ensembles of Webb et al. (2019).

Webb et al., "Joint Training of Neural Network Ensembles" (2019), Sec. 4. Every
builder returns a functional model ``images -> ensemble`` whose output is the
``[batch, M, K]`` logits of the ``M`` modules (one `ModularLossEnsemble`
layer named ``ensemble``); train it with `branchzoo.losses.ModularLoss` and
read the ensemble's prediction as the mean over axis 1.

- `modular_mlp`: ``M`` one-hidden-layer ReLU MLPs (Sec. 4.1): 1-M-1024-H,
  16-M-64-H, 64-M-16-H, 256-M-4-H on 784 inputs and 10 classes have 814,090 /
  814,240 / 814,720 / 816,640 parameters.
- `modular_cnn`: ``M`` VGG-style CNNs (Table 3: conv 32-64-64-128-128, 3x3,
  strides 1-2-1-2-1, VALID, ReLU, no BN, global average pool, Dense), 10
  modules on CIFAR-10: 2,790,500 parameters.
- `modular_densenet_bc`: ``M`` DenseNet-BC networks (Sec. 4.3, Table 4):
  DN-100-12-4, DN-82-8-8, DN-64-6-16 on CIFAR-100.
"""

import inspect

import keras

from branchzoo._validation import check_int, check_sequence
from branchzoo.layers import ModularLossEnsemble
from branchzoo.layers.ensemble import normalize_active_modules
from branchzoo.registry import register_builder

PAPER = "004_226906bbadadb648.txt"


def _ensemble_model(layer, input_shape, name):
    input_shape = tuple(check_sequence(input_shape, "input_shape", "be the shape of one example"))
    inputs = keras.Input(shape=input_shape, name="images")
    return keras.Model(inputs, layer(inputs), name=name)


@register_builder("modular_mlp", family="modular", paper=PAPER,
                  title=lambda config: config_title("modular_mlp", config))
def modular_mlp(num_modules, hidden_units, num_classes=10, input_shape=(28, 28, 1), activation="relu",
                active_modules=None, name=None):
    """Builds an ensemble of ``num_modules`` MLPs, the paper's ``M-M-H-H`` configurations.

    After Webb et al. (2019), Sec. 4.1: single hidden-layer ReLU MLPs on
    flattened images; ``modular_mlp(256, 4)`` is 256-M-4-H. The first layers
    of all modules are one ``Dense(M * H)`` on the shared input, the rest
    `BatchedDense` (see `ModularLossEnsemble`).

    Args:
        num_modules: ``M``.
        hidden_units: ``H`` (int) or a list of hidden widths per module.
        num_classes: ``K``.
        input_shape: shape of one example (flattened by the ensemble).
        activation: hidden activation.
        active_modules: modules to keep (indices or boolean mask), None for all.
        name: model name (default e.g. ``modular_mlp_256x4``).

    Returns:
        A `keras.Model` mapping images to ``[batch, M, K]`` logits.

    Example:

    >>> model = modular_mlp(256, 4)
    >>> model.count_params(), tuple(model.output.shape)
    (816640, (None, 256, 10))
    """
    num_modules = check_int(num_modules, "num_modules", minimum=1)
    layer = ModularLossEnsemble(
        num_modules, num_classes, module={"type": "mlp", "hidden_units": hidden_units, "activation": activation},
        active_modules=active_modules, name="ensemble",
    )
    units = "x".join(str(h) for h in layer.module["hidden_units"])
    return _ensemble_model(layer, input_shape, name or f"modular_mlp_{num_modules}x{units}")


@register_builder("modular_cnn", family="modular", paper=PAPER,
                  title=lambda config: config_title("modular_cnn", config))
def modular_cnn(num_modules=10, filters=(32, 64, 64, 128, 128), strides=(1, 2, 1, 2, 1), kernel_size=3,
                padding="valid", num_classes=10, input_shape=(32, 32, 3), active_modules=None, name=None):
    """Builds an ensemble of ``num_modules`` small VGG-style CNNs (Table 3).

    After Webb et al. (2019), Sec. 4.2, Table 3: per module, 3x3 convs
    with 32, 64, 64, 128, 128 filters and strides 1, 2, 1, 2, 1, VALID
    padding (32 -> 30 -> 14 -> 12 -> 5 -> 3), ReLU, no BN, global average
    pool, Dense(K). Ten modules on CIFAR-10 have 2,790,500 parameters.

    Args:
        num_modules: ``M``.
        filters: filters of each conv of one module.
        strides: stride of each conv (or one int for all).
        kernel_size: square kernel size.
        padding: ``"valid"`` (Table 3) or ``"same"``.
        num_classes: ``K``.
        input_shape: ``(H, W, C)``.
        active_modules: modules to keep (indices or boolean mask), None for all.
        name: model name (default ``modular_cnn_<M>``).

    Returns:
        A `keras.Model` mapping images to ``[batch, M, K]`` logits.

    Example:

    >>> model = modular_cnn(2, filters=(4, 8), strides=(1, 2))
    >>> tuple(model.output.shape)
    (None, 2, 10)
    """
    num_modules = check_int(num_modules, "num_modules", minimum=1)
    layer = ModularLossEnsemble(
        num_modules, num_classes,
        module={"type": "cnn", "filters": list(filters), "strides": strides if isinstance(strides, int) else list(strides),
                "kernel_size": kernel_size, "padding": padding},
        active_modules=active_modules, name="ensemble",
    )
    return _ensemble_model(layer, input_shape, name or f"modular_cnn_{num_modules}")


@register_builder("modular_densenet_bc", family="modular", paper=PAPER,
                  title=lambda config: config_title("modular_densenet_bc", config))
def modular_densenet_bc(depth=100, growth_rate=12, num_modules=4, compression=0.5, num_classes=100,
                        input_shape=(32, 32, 3), bn_momentum=0.9, bn_epsilon=1e-5, active_modules=None, name=None):
    """Builds an ensemble of ``num_modules`` DenseNet-BC networks, DN-depth-k-M (Table 4).

    After Webb et al. (2019), Sec. 4.3 (DenseNet-BC of Huang et al.
    2017 in the layout of Amos & Kolter's code): DN-100-12-4, DN-82-8-8 and
    DN-64-6-16 on CIFAR-100. Grouped convolutions (groups = M) with the dense
    concatenation kept per module (see `ModularLossEnsemble`).

    Args:
        depth: ``6n + 4`` (n bottleneck layers per dense block).
        growth_rate: ``k``.
        num_modules: ``M``.
        compression: transition compression (0.5 for BC).
        num_classes: ``K``.
        input_shape: ``(H, W, C)``.
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's
            momentum 0.1 is 0.9 here; epsilon 1e-5).
        active_modules: modules to keep (indices or boolean mask), None for all.
        name: model name (default e.g. ``modular_dn100_12x4``).

    Returns:
        A `keras.Model` mapping images to ``[batch, M, K]`` logits.

    Example:

    >>> model = modular_densenet_bc(depth=10, growth_rate=2, num_modules=3, num_classes=5)
    >>> tuple(model.output.shape)
    (None, 3, 5)
    """
    num_modules = check_int(num_modules, "num_modules", minimum=1)
    layer = ModularLossEnsemble(
        num_modules, num_classes,
        module={"type": "densenet_bc", "depth": depth, "growth_rate": growth_rate, "compression": compression,
                "bn_momentum": bn_momentum, "bn_epsilon": bn_epsilon},
        active_modules=active_modules, name="ensemble",
    )
    return _ensemble_model(layer, input_shape, name or f"modular_dn{depth}_{growth_rate}x{num_modules}")


def modular_title(layer_or_model):
    """The paper's name of an ensemble: ``256-M-4-H``, ``DN-100-12-4``, ``10 x CNN(32-64-64-128-128)``."""
    layer = ensemble_layer(layer_or_model) if isinstance(layer_or_model, keras.Model) else layer_or_model
    spec, M = layer.module, layer.num_modules
    if spec["type"] == "mlp":
        return f"{M}-M-{'-'.join(str(h) for h in spec['hidden_units'])}-H"
    if spec["type"] == "cnn":
        return f"{M} x CNN({'-'.join(str(f) for f in spec['filters'])})"
    return f"DN-{spec['depth']}-{spec['growth_rate']}-{M}"


def config_title(builder, config):
    """`modular_title` from a zoo entry's builder name and config, without building the model.

    Example:

    >>> config_title("modular_densenet_bc", {"depth": 64, "growth_rate": 6, "num_modules": 16})
    'DN-64-6-16'
    """
    defaults = {"modular_mlp": modular_mlp, "modular_cnn": modular_cnn, "modular_densenet_bc": modular_densenet_bc}
    if builder not in defaults:
        raise ValueError(f"`builder` must be one of {sorted(defaults)}. Received: builder={builder!r}")
    args = {k: p.default for k, p in inspect.signature(defaults[builder]).parameters.items()}
    args.update(config)
    M = args["num_modules"]
    if builder == "modular_mlp":
        units = args["hidden_units"]
        units = [units] if isinstance(units, int) else units
        return f"{M}-M-{'-'.join(str(h) for h in units)}-H"
    if builder == "modular_cnn":
        return f"{M} x CNN({'-'.join(str(f) for f in args['filters'])})"
    return f"DN-{args['depth']}-{args['growth_rate']}-{M}"


def ensemble_layer(model):
    """The `ModularLossEnsemble` layer of `model`; ValueError when it has none or several."""
    found = [l for l in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(l, ModularLossEnsemble)]
    if len(found) != 1:
        raise ValueError(
            "Expected a model with exactly one ModularLossEnsemble layer (e.g. from modular_mlp). "
            f"Received: model {model.name!r} with {len(found)}"
        )
    return found[0]


def sub_ensemble(model, active_modules, name=None):
    """A model that shares `model`'s weights and returns only the `active_modules`.

    After Webb et al. (2019), Sec. 4.1 ("Robustness"): partial
    evaluation of an ensemble. The result maps the same inputs to ``[batch,
    len(active_modules), K]``; its mean over axis 1 is the sub-ensemble's
    prediction.

    Args:
        model: a functional model holding one `ModularLossEnsemble` (any zoo
            ``modular_*`` model, trained or loaded from ``.keras``).
        active_modules: module indices or a boolean mask of length ``M``.
        name: model name (default ``<model name>_sub<n>``).

    Returns:
        A `keras.Model`.

    Example:

    >>> full = modular_mlp(16, 4)
    >>> tuple(sub_ensemble(full, [0, 2, 7]).output.shape)
    (None, 3, 10)
    """
    layer = ensemble_layer(model)
    active = normalize_active_modules(active_modules, layer.num_modules)
    outputs = layer(layer.input, active_modules=active)
    return keras.Model(model.inputs, outputs, name=name or f"{model.name}_sub{len(active)}")
