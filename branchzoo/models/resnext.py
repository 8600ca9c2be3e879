"""ResNeXt for CIFAR with learned connectivity between branches (GatedConnect).

After Ahmed & Torresani (2017), Sec. 2 and Table 1, on the CIFAR ResNeXt-29
of Xie et al. (form C), in the layout of its reference code (docs/papers.md):

- stem: 3x3 conv 3 -> ``stem_width`` (no bias), BN, ReLU;
- three stages of ``(depth - 2) / 9`` modules (`ResNeXtModule`: ``C`` residual
  blocks run as grouped convolutions); stride 2 in the first module of
  stages 2 and 3; block bottleneck width ``width * 2^s`` in stage ``s``
  (0-based); block output widths ``stage_widths`` (canonical 256, 512, 1024;
  the paper's small models use 64, 128, 256);
- between modules ``i - 1`` and ``i``, a `GatedConnect` named
  ``module{i}_gate`` gives block ``j`` of module ``i`` the mean of the ``K``
  block outputs its gates select; the blocks of the first module read the
  stem; the last module's blocks are averaged for the head;
- head: ReLU, global average pool, ``Dense(num_classes)`` (logits).

The BN after the blocks' last 1x1 conv is one per block (``output_bn=
"per_block"``, the layout that gives the paper's small models' counts,
{29,8,8} 0.86M) or one over the block output width (``"shared"``, Xie et
al.'s form C: ResNeXt-29 8x64d 34.4M); by default ``"shared"`` with the
canonical stage widths 256/512/1024 and ``"per_block"`` with any others.
A shared BN normalises each block of a gated module with statistics pooled
over its ``C`` blocks, and the mean of the blocks in Fixed-Full: with it,
Learned ``K = C`` equals Fixed-Full at inference but not in training.

``connectivity="full"`` (Fixed-Full) has no gate layers: every block reads
the mean of the previous module's outputs, so each module reads ONE shared
input and returns the mean of its blocks (a plain ResNeXt; computing the
identical inputs once is what makes it as cheap as ResNeXt).

`prune_gated` removes the blocks that no gate reads (Table 1's "Test"
parameters, `parameter_report`).
"""

import keras
import numpy as np
from keras import layers

from branchzoo._validation import check_int, check_int_list
from branchzoo.layers import GatedConnect, ResNeXtModule
from branchzoo.layers.gated import CONNECTIVITIES
from branchzoo.layers.resnext import OUTPUT_BN
from branchzoo.models._common import batch_norm, check_input_shape, conv_stem
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "002_6ffcaba31e771062.txt"
CANONICAL_STAGE_WIDTHS = (256, 512, 1024)


def resnext_name(depth, width, cardinality, fan_in, connectivity):
    """A Keras-safe model name, e.g. ``resnext29_8x64d_gated_k4`` or ``resnext29_8x8d_full``."""
    base = f"resnext{depth}_{cardinality}x{width}d"
    if connectivity == "full":
        return f"{base}_full"
    kind = "gated" if connectivity == "learned" else "random"
    return f"{base}_{kind}_k{fan_in}"


def resnext_title(config):
    """The paper's name of a configuration, e.g. ``ResNeXt {29,8,8} Learned K=4``.

    Non-canonical block output widths are appended (``, widths 16/32/64``).
    """
    depth, width, cardinality = config.get("depth", 29), config.get("width", 64), config.get("cardinality", 8)
    connectivity = config.get("connectivity", "full")
    fan_in = config.get("fan_in") or cardinality
    kind = {"full": "Fixed-Full", "learned": f"Learned K={fan_in}", "random": f"Fixed-Random K={fan_in}"}
    title = f"ResNeXt {{{depth},{width},{cardinality}}} {kind.get(connectivity, connectivity)}"
    widths = list(config.get("stage_widths") or CANONICAL_STAGE_WIDTHS)
    if widths != list(CANONICAL_STAGE_WIDTHS):
        title += ", widths " + "/".join(str(w) for w in widths)
    return title


@register_builder("resnext_cifar", family="resnext_gated", paper=PAPER, title=resnext_title)
def resnext_cifar(
    depth=29,
    width=64,
    cardinality=8,
    fan_in=None,
    connectivity="full",
    stage_widths=None,
    output_bn=None,
    num_classes=10,
    input_shape=(32, 32, 3),
    stem_width=64,
    seed=None,
    frozen=False,
    include_top=True,
    classifier_activation=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    kernel_initializer="he_normal",
    name=None,
):
    """Builds a CIFAR ResNeXt {D, w, C} whose modules are connected by GatedConnect.

    After Ahmed & Torresani (2017), Sec. 2, Table 1 (architectures {D, w, C},
    connectivities Fixed-Full, Learned K, Fixed-Random K).

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu``, ``module{i}``
    (`ResNeXtModule`, ``i = 1 .. M``, M = 3 * (depth - 2) / 9),
    ``module{i}_gate`` (`GatedConnect`, ``i = 2 .. M``, not with
    ``connectivity="full"``), ``head_relu``, ``avg_pool``, ``predictions``.

    Args:
        depth: D = 2 + 9 * (modules per stage): 29 (3 per stage), 20 (2), ...
        width: w, bottleneck width of a block in stage 1 (doubles per stage).
        cardinality: C, blocks per module.
        fan_in: K, inputs per block; default (None) ``C``, which ``"full"``
            requires.
        connectivity: ``"full"`` (Fixed-Full, ResNeXt), ``"learned"``
            (GateConnect) or ``"random"`` (Fixed-Random).
        stage_widths: output width of the blocks of each of the three stages;
            None: the canonical ResNeXt-29 (256, 512, 1024). The paper's
            small models ({29,8,8}: 0.86M, {20,4,8}: 0.28M) use (64, 128, 256).
        output_bn: the BN after the blocks' last 1x1 conv (`ResNeXtModule`):
            ``"shared"``, one BN over the block output width (Xie et al.'s
            form C; in gated modules one gamma and beta per channel for
            the ``C`` blocks, statistics pooled over them), or
            ``"per_block"``, one BN per block. None (default): ``"shared"``
            with the canonical stage widths (256, 512, 1024: 34.4M for
            {29,64,8}), ``"per_block"`` with any others (the paper's small
            models' counts: {29,8,8} 0.86M).
        num_classes: size of the classifier (10 or 100 for CIFAR).
        input_shape: ``(H, W, channels)``.
        stem_width: output channels of the stem conv (64).
        seed: int or None; gate ``module{i}_gate`` gets ``seed + i``
            (``"random"``: the fixed connections; ``"learned"``: the
            sampling noise).
        frozen: build learned gates frozen (top-K, not trained).
        include_top: add the head; else return the averaged last module.
        classifier_activation: None gives logits, ``"softmax"`` probabilities.
        bn_momentum, bn_epsilon: BatchNormalization settings.
        kernel_initializer: conv kernel initializer.
        name: model name (default e.g. ``resnext29_8x8d_gated_k4``).

    Returns:
        A `keras.Model` mapping images to logits.

    Example:

    >>> model = resnext_cifar(depth=11, width=2, cardinality=4, fan_in=2,
    ...                       connectivity="learned", stage_widths=(8, 16, 32), seed=0)
    >>> [l.name for l in model.layers if "gate" in l.name]
    ['module2_gate', 'module3_gate']
    >>> tuple(model.output.shape)
    (None, 10)
    """
    depth = check_int(depth, "depth", minimum=11)
    if (depth - 2) % 9:
        raise ValueError(
            f"`depth` must be 2 + 9 * (modules per stage), e.g. 11, 20, 29. Received: depth={depth}"
        )
    width = check_int(width, "width", minimum=1)
    cardinality = check_int(cardinality, "cardinality", minimum=1)
    fan_in = cardinality if fan_in is None else check_int(fan_in, "fan_in")
    if not 1 <= fan_in <= cardinality:
        raise ValueError(
            f"`fan_in` must be between 1 and `cardinality` ({cardinality}). Received: fan_in={fan_in}"
        )
    if connectivity not in CONNECTIVITIES:
        raise ValueError(
            f"`connectivity` must be one of {CONNECTIVITIES}. Received: connectivity={connectivity!r}"
        )
    if connectivity == "full" and fan_in != cardinality:
        raise ValueError(
            f'`fan_in` must equal `cardinality` ({cardinality}) with connectivity="full". '
            f"Received: fan_in={fan_in}"
        )
    if stage_widths is None:
        stage_widths = CANONICAL_STAGE_WIDTHS
    stage_widths = check_int_list(stage_widths, "stage_widths", "list the block output width of the 3 stages",
                                  minimum=1, length=3)
    if output_bn is None:
        output_bn = "shared" if tuple(stage_widths) == CANONICAL_STAGE_WIDTHS else "per_block"
    if output_bn not in OUTPUT_BN:
        raise ValueError(f"`output_bn` must be one of {OUTPUT_BN} or None. Received: output_bn={output_bn!r}")
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    stem_width = check_int(stem_width, "stem_width", minimum=1)
    input_shape = check_input_shape(input_shape)
    if seed is None and connectivity == "random":
        seed = int(np.random.SeedSequence().entropy % (2**30))
    elif seed is not None:
        seed = check_int(seed, "seed", minimum=0)

    per_stage = (depth - 2) // 9
    num_modules = 3 * per_stage
    full = connectivity == "full"

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv_stem(inputs, stem_width, batch_norm(bn_momentum, bn_epsilon), kernel_initializer=kernel_initializer)
    i = 0
    for s, out in enumerate(stage_widths):
        for b in range(per_stage):
            i += 1
            if i > 1 and not full:
                x = GatedConnect(
                    cardinality, fan_in, connectivity=connectivity,
                    seed=None if seed is None else seed + i, frozen=frozen, name=f"module{i}_gate",
                )(x)
            x = ResNeXtModule(
                cardinality, width * 2**s, out, strides=2 if (s > 0 and b == 0) else 1,
                shared_input=full or i == 1, aggregate=full or i == num_modules,
                kernel_initializer=kernel_initializer, output_bn=output_bn, bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon, name=f"module{i}",
            )(x)
    if include_top:
        x = layers.ReLU(name="head_relu")(x)
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(num_classes, activation=classifier_activation, dtype=head_policy(), name="predictions")(x)
    return keras.Model(
        inputs, x, name=name or resnext_name(depth, width, cardinality, fan_in, connectivity)
    )


def modules_and_gates(model):
    """The `ResNeXtModule`s of `model` in forward order, and ``{i: GatedConnect}`` before module i.

    Raises ValueError when `model` has no GatedConnect layer.
    """
    modules = [l for l in model.layers if isinstance(l, ResNeXtModule)]
    gates = [l for l in model.layers if isinstance(l, GatedConnect)]
    if not gates:
        raise ValueError(
            f"Model '{model.name}' has no GatedConnect layer: nothing to prune or draw "
            "(a Fixed-Full ResNeXt, connectivity='full', reads every block)."
        )
    order = {id(l): n for n, l in enumerate(model.layers)}
    by_module = {}
    for gate in gates:
        after = [m for m in modules if order[id(m)] > order[id(gate)]]
        if not after:
            raise ValueError(f"GatedConnect '{gate.name}' feeds no ResNeXtModule in model '{model.name}'.")
        by_module[modules.index(after[0])] = gate
    return modules, by_module


def connectivity_masks(model):
    """Binary inference-time connections of every gate, ``[blocks_i, blocks_{i-1}]`` per gate, in order."""
    _, gates = modules_and_gates(model)
    return [gates[i].binary_gates() for i in sorted(gates)]


def active_blocks(masks, last_blocks=None):
    """Which blocks of each module some block of the next module reads, back from the head.

    Args:
        masks: binary connections per gate, ``masks[i]`` of shape
            ``[blocks of module i + 1, blocks of module i]`` (0-based modules,
            module 0 reads the stem).
        last_blocks: blocks of the last module (default ``masks[-1].shape[0]``);
            all are read (averaged for the head).

    Returns:
        A list of boolean arrays, one per module (``len(masks) + 1``): False
        marks a superfluous block, read by no surviving block of the next
        module (so also blocks that fed only superfluous ones).

    Example:

    >>> import numpy as np
    >>> m = [np.array([[1, 0], [1, 0]]), np.array([[0, 1], [0, 1]])]
    >>> [a.tolist() for a in active_blocks(m)]
    [[True, False], [False, True], [True, True]]
    """
    masks = [np.asarray(m) > 0 for m in masks]
    last = masks[-1].shape[0] if last_blocks is None else last_blocks
    active = [np.ones(last, bool)]
    for mask in reversed(masks):
        active.insert(0, mask[active[0]].any(axis=0))
    return active


def _block_channels(keep, per_block):
    return np.concatenate([np.arange(j * per_block, (j + 1) * per_block) for j in keep])


def _pruned_module(module, keep, shared_input):
    """A copy of `module` with only the blocks `keep` (indices), weights sliced from it."""
    config = module.get_config()
    config.update(cardinality=len(keep), shared_input=shared_input)
    pruned = ResNeXtModule.from_config(config)
    w, f = module.width, module.filters
    in_shape = (None, None, None, module.in_channels if shared_input else len(keep) * module.in_channels)
    pruned.build(in_shape)
    wide = _block_channels(keep, w)
    out = _block_channels(keep, f)
    for name, cols in (("conv1", wide), ("conv2", wide), ("conv3", out)):
        getattr(pruned, name).kernel.assign(np.asarray(getattr(module, name).kernel)[..., cols])
    # a shared bn3 (one per channel, statistics pooled over the blocks) is kept whole
    bn3_cols = out if module.output_bn == "per_block" else slice(None)
    for name, cols in (("bn1", wide), ("bn2", wide), ("bn3", bn3_cols)):
        for src, dst in zip(getattr(module, name).weights, getattr(pruned, name).weights):
            dst.assign(np.asarray(src)[cols])
    if module.projects:
        pruned.shortcut_kernel.assign(np.asarray(module.shortcut_kernel))
        for src, dst in zip(module.shortcut_bn.weights, pruned.shortcut_bn.weights):
            dst.assign(np.asarray(src))
    return pruned


def prune_gated(model, name=None):
    """A new model without the blocks that no gate of the next module reads.

    After Ahmed & Torresani (2017), Sec. 2.1 and Table 1 ("Test" params):
    working back from the head, a block of module ``i`` is kept when a kept
    block of module ``i + 1`` reads it through its inference-time (top-K)
    gates. Kept blocks keep their weights; the gates become fixed binary
    connections between the kept blocks (frozen GatedConnect layers with
    ``num_inputs`` = kept blocks of the previous module). At inference the
    pruned model computes the same function as `model`.

    Args:
        model: a model from `resnext_cifar` with learned or random connectivity
            (a chain: every layer reads the previous one).
        name: name of the new model (default ``<model.name>_pruned``).

    Returns:
        A new `keras.Model`; `model` is not changed.

    Example:

    >>> m = resnext_cifar(depth=11, width=2, cardinality=4, fan_in=1,
    ...                   connectivity="random", stage_widths=(8, 8, 8), seed=3)
    >>> pruned = prune_gated(m)
    >>> pruned.count_params() <= m.count_params()
    True
    """
    modules, gates = modules_and_gates(model)
    masks = []
    for i in range(1, len(modules)):
        if i not in gates:
            raise ValueError(f"Module '{modules[i].name}' of model '{model.name}' has no GatedConnect before it.")
        masks.append(gates[i].binary_gates())
    active = active_blocks(masks, last_blocks=modules[-1].cardinality)
    keep = [np.flatnonzero(a) for a in active]
    replacements = {}
    for i, module in enumerate(modules):
        replacements[id(module)] = _pruned_module(module, keep[i], shared_input=module.shared_input)
        if i in gates:
            gate = gates[i]
            config = gate.get_config()
            config.update(cardinality=len(keep[i]), num_inputs=len(keep[i - 1]), frozen=True)
            config["fan_in"] = gate.fan_in
            new_gate = GatedConnect.from_config(config)
            new_gate.build((None, len(keep[i - 1]) * modules[i - 1].filters))
            # binary gates: top-K of each row is exactly the kept connections
            new_gate.gates.assign(masks[i - 1][np.ix_(keep[i], keep[i - 1])])
            replacements[id(gate)] = new_gate

    inputs = keras.Input(shape=model.inputs[0].shape[1:], name=model.inputs[0].name)
    x = inputs
    previous = model.inputs[0]
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        node_inputs = layer._inbound_nodes[0].input_tensors
        if len(layer._inbound_nodes) != 1 or len(node_inputs) != 1 or node_inputs[0] is not previous:
            raise ValueError(
                f"prune_gated needs a chain of layers; layer '{layer.name}' of model "
                f"'{model.name}' does not read the previous layer's output."
            )
        previous = layer.output
        if id(layer) in replacements:
            x = replacements[id(layer)](x)
        else:
            clone = layer.__class__.from_config(layer.get_config())
            x = clone(x)
            clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=name or f"{model.name}_pruned")


def parameter_report(model, pruned=None):
    """Train vs test parameters, Table 1's columns (Ahmed & Torresani 2017).

    Args:
        model: a model from `resnext_cifar`.
        pruned: its pruned copy (default: ``prune_gated(model)``; a model
            without gates is its own test model).

    Returns:
        A dict: ``train`` (trainable parameters without the real-valued
        gates, as the paper counts them), ``test`` (the same count after
        pruning), ``gates`` (real-valued gate entries), ``blocks_train`` and
        ``blocks_test`` (blocks per module before and after pruning).
    """
    try:
        modules, gates = modules_and_gates(model)
    except ValueError:
        modules, gates = [l for l in model.layers if isinstance(l, ResNeXtModule)], {}
        pruned = model
    if pruned is None:
        pruned = prune_gated(model)
    gate_count = sum(int(np.prod(g.gates.shape)) for g in gates.values())

    def weights_count(m):
        gate_ids = {id(l.gates) for l in m.layers if isinstance(l, GatedConnect)}
        return int(sum(np.prod(w.shape) for w in m.trainable_weights if id(w) not in gate_ids))

    return {
        "train": weights_count(model),
        "test": weights_count(pruned),
        "gates": gate_count,
        "blocks_train": [m.cardinality for m in modules],
        "blocks_test": [m.cardinality for m in pruned.layers if isinstance(m, ResNeXtModule)],
    }


__all__ = [
    "active_blocks",
    "connectivity_masks",
    "modules_and_gates",
    "parameter_report",
    "prune_gated",
    "resnext_cifar",
    "resnext_title",
]
