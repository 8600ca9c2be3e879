"""Branched models whose output is the sum of N identical branches (BranchSum).

After Brokman & Gilboa (2022): the CIFAR-10 classifier of Sec. 6 (each
branch a slim ResNet18, CIFAR layout of the pytorch-cifar reference [15];
logits summed, then clamped) and small branched MLPs for the toy and Hessian
studies of Secs. 4.1 and 5.

The N branches run side by side, branch-major along the channels (see
`branchzoo.layers.branch_sum`): the stem is one ``Conv2D(N * w)`` on the image,
every later convolution a `GroupedConv2D` with ``groups=N``, BatchNorm acts
per channel and so per branch, the heads are one `BatchedDense` on
``[batch, N, features]``, and `BranchSum` adds the N logit vectors.

ResNet18, CIFAR layout (kuangliu/pytorch-cifar, ``ResNet18()``), per branch
at base width w:

- stem: 3x3 conv 3 -> w (stride 1, no bias), BN, ReLU;
- 4 stages of widths w, 2w, 4w, 8w, 2 BasicBlocks each, stride 2 in the
  first block of stages 2-4; BasicBlock: 3x3 conv (stride), BN, ReLU, 3x3
  conv, BN, plus the shortcut (identity, or 1x1 conv with the stride + BN
  when the shape changes), ReLU;
- global average pool (the reference's 4x4 average pool on 32x32 inputs),
  Dense(num_classes) with bias.

Trainable parameters per branch: 11,173,962 at w = 64 (the reference
ResNet18), 2,797,610 at w = 32, 701,466 at w = 16 (our slim choice: the paper's sizes are lost from the extracted text);
tests/test_branch_sum.py counts them by hand.
"""

import keras
from keras import layers

from branchzoo._validation import check_int, check_int_list, check_sequence
from branchzoo.layers import BatchedDense, BranchSum, GroupedConv2D
from branchzoo.layers.branch_sum import normalize_clamp
from branchzoo.models._common import basic_block, batch_norm, check_input_shape, conv_stem
from branchzoo.precision import head_policy
from branchzoo.registry import register_builder

PAPER = "000_a8fb4f73aa903839.txt"

# The branch-sum layer of every model here: analyses find it by this name or by type.
BRANCH_SUM = "branch_sum"
BRANCH_LOGITS = "branch_logits"


def branched_resnet(
    num_branches,
    blocks_per_stage=(2, 2, 2, 2),
    base_width=16,
    num_classes=10,
    input_shape=(32, 32, 3),
    logit_clamp=None,
    return_branches=False,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    kernel_initializer="he_normal",
    implementation="auto",
    name=None,
):
    """Builds N CIFAR-layout BasicBlock ResNets summed by a `BranchSum`.

    After Brokman & Gilboa (2022), Sec. 6 (branches: slim ResNet18s of the
    pytorch-cifar reference code).

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu``,
    ``stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,add,relu2}``,
    ``stage{s}_block{b}_shortcut_{conv,bn}`` (projection shortcuts),
    ``avg_pool``, ``branch_features`` (``[batch, N, 8w]``), ``branch_logits``
    (`BatchedDense`, ``[batch, N, num_classes]``) and ``branch_sum``
    (`BranchSum`). Channel ``c`` of every feature map belongs to branch
    ``c // (channels / N)``.

    Args:
        num_branches: N, the number of summed branches.
        blocks_per_stage: BasicBlocks in each of the stages (ResNet18:
            ``(2, 2, 2, 2)``); stage s has width ``base_width * 2**s``.
        base_width: w, the width of the stem and stage 1 of every branch.
        num_classes: logits per branch (and of the sum).
        input_shape: ``(H, W, C)``.
        logit_clamp: clamp of the summed logits (`BranchSum`): None, ``c``
            for ``[-c, c]``, or ``(low, high)``.
        return_branches: if True the model returns ``(logits, branch_logits)``
            (for analysis; train the single-output model).
        bn_momentum, bn_epsilon: BatchNormalization settings (PyTorch's
            defaults).
        kernel_initializer: convolution initializer; ``"he_normal"`` draws
            every branch from the distribution of a single-branch model
            (Keras' fan-in of a grouped kernel is per group).
        implementation: `GroupedConv2D` route (``"auto"``: per backend/device).
        name: model name.

    Returns:
        A `keras.Model` mapping images to summed logits ``[batch, num_classes]``.

    Example:

    >>> model = branched_resnet(3, blocks_per_stage=(1, 1), base_width=4)
    >>> tuple(model.output.shape), tuple(model.get_layer("branch_logits").output.shape)
    ((None, 10), (None, 3, 10))
    """
    num_branches = check_int(num_branches, "num_branches", minimum=1)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    input_shape = check_input_shape(input_shape)
    base_width = check_int(base_width, "base_width", minimum=1)
    blocks_per_stage = check_int_list(blocks_per_stage, "blocks_per_stage",
                                      "be a non-empty list of block counts, e.g. [2, 2, 2, 2]", minimum=1)
    normalize_clamp(logit_clamp)
    n = num_branches
    bn = batch_norm(bn_momentum, bn_epsilon)

    def conv(filters, kernel_size, strides, layer_name):
        return GroupedConv2D(
            filters, kernel_size, strides=strides, padding="same", groups=n, use_bias=False,
            kernel_initializer=kernel_initializer, implementation=implementation, name=layer_name,
        )

    inputs = keras.Input(shape=input_shape, name="images")
    x = conv_stem(inputs, n * base_width, bn, kernel_initializer=kernel_initializer)
    for s, blocks in enumerate(blocks_per_stage, start=1):
        width = base_width * 2 ** (s - 1)
        for b in range(1, blocks + 1):
            stride = 2 if (b == 1 and s > 1) else 1
            x = basic_block(x, n * width, stride, f"stage{s}_block{b}", conv, bn, last_relu="relu2")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Reshape((n, width), name="branch_features")(x)
    x = BatchedDense(num_classes, num_modules=n, dtype=head_policy(), name=BRANCH_LOGITS)(x)
    outputs = BranchSum(n, logit_clamp=logit_clamp, return_branches=return_branches, dtype=head_policy(),
                        name=BRANCH_SUM)(x)
    return keras.Model(inputs, outputs, name=name or f"branched_resnet_{n}x{base_width}")


def _title(config):
    """The README's architecture column, e.g. ``BranchSum(8 x ResNet18, width 4), clamp 5``."""
    title = f"BranchSum({config.get('num_branches', 8)} x ResNet18, width {config.get('base_width', 16)})"
    clamp = config.get("logit_clamp")
    return title + (f", clamp {clamp:g}" if clamp else "")


@register_builder("branched_resnet18", family="branchsum", paper=PAPER, title=_title)
def branched_resnet18(
    num_branches=8,
    base_width=16,
    num_classes=10,
    input_shape=(32, 32, 3),
    logit_clamp=None,
    return_branches=False,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    kernel_initializer="he_normal",
    implementation="auto",
    name=None,
):
    """N slim CIFAR ResNet18 branches whose logits are summed (and clamped).

    After Brokman & Gilboa (2022), Sec. 6: the CIFAR-10 classifier whose
    branches specialise (Figs. 5-8). Base width 16 gives 0.70M parameters per
    branch (701,466 with 10 classes), 64 the full ResNet18 (11.17M).
    See `branched_resnet` for the layout, layer names and arguments.

    Returns:
        A `keras.Model` mapping images to logits ``[batch, num_classes]``.

    Example:

    >>> model = branched_resnet18(2, base_width=4, logit_clamp=5.0)
    >>> model.get_layer("branch_sum").logit_clamp
    [-5.0, 5.0]
    """
    num_branches = check_int(num_branches, "num_branches", minimum=1)
    base_width = check_int(base_width, "base_width", minimum=1)
    return branched_resnet(
        num_branches, (2, 2, 2, 2), base_width, num_classes, input_shape, logit_clamp,
        return_branches, bn_momentum, bn_epsilon, kernel_initializer, implementation,
        name=name or f"branched_resnet18_{num_branches}x{base_width}",
    )


@register_builder("branched_mlp", family="branchsum", paper=PAPER)
def branched_mlp(
    num_branches=4,
    hidden_units=(16,),
    num_classes=10,
    input_shape=(8, 8, 1),
    activation="relu",
    output_activation=None,
    logit_clamp=None,
    return_branches=False,
    kernel_initializer="glorot_uniform",
    dtype=None,
    name=None,
):
    """N small MLP branches whose outputs are summed: a BranchSum model small enough for a Hessian.

    After Brokman & Gilboa (2022), Secs. 4.1 and 5 (toy branches; the
    Hessian of a branched model). The input is flattened; the first hidden
    layer of all branches is one ``Dense(N * units)`` (the branches share
    only their input), the later ones and the heads are `BatchedDense`.
    With ``hidden_units=()`` every branch is ``output_activation(w_i . x +
    b_i)`` (linear by default; ``output_activation="relu"`` gives the scalar
    ReLU branches of Sec. 4.1's toy problems, which use LeakyReLU there).

    Layer names: ``flatten``, ``hidden1`` (Dense), ``branch_hidden1``
    (``[batch, N, units]``), ``hidden{l}`` (BatchedDense, l >= 2),
    ``branch_logits``, ``branch_sum``.

    Args:
        num_branches: N.
        hidden_units: widths of each branch's hidden layers.
        num_classes: outputs per branch (1 for scalar regression).
        input_shape: shape of one input example.
        activation: hidden activation (default ``"relu"``, as the paper's
            branches; a ReLU unit that is off on an example has a zero
            Jacobian there, which Sec. 8's block-diagonal Hessian needs).
        output_activation: activation of each branch's output, before the
            sum (default None: linear logits, as the classifier's heads;
            ``"relu"`` lets a whole branch be silent on an example).
        logit_clamp: clamp of the sum (`BranchSum`).
        return_branches: also return the per-branch outputs.
        kernel_initializer: Dense initializer (per branch for `BatchedDense`).
        dtype: layer dtype (e.g. ``"float64"`` for Hessian checks).
        name: model name.

    Returns:
        A `keras.Model`: inputs to ``[batch, num_classes]``.

    Example:

    >>> model = branched_mlp(3, hidden_units=(5,), num_classes=1, input_shape=(2,))
    >>> tuple(model.get_layer("branch_logits").output.shape)
    (None, 3, 1)
    """
    num_branches = check_int(num_branches, "num_branches", minimum=1)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    input_shape = tuple(check_sequence(input_shape, "input_shape", "be a non-empty tuple"))
    hidden_units = check_int_list(hidden_units, "hidden_units", "be a list of widths", minimum=1, allow_empty=True)
    normalize_clamp(logit_clamp)
    n = num_branches
    head = dtype if dtype is not None else head_policy()  # float32 heads under a mixed policy
    inputs = keras.Input(shape=input_shape, name="inputs", dtype=dtype)
    x = layers.Flatten(name="flatten", dtype=dtype)(inputs)
    if hidden_units:
        x = layers.Dense(n * hidden_units[0], activation=activation, kernel_initializer=kernel_initializer,
                         name="hidden1", dtype=dtype)(x)
        x = layers.Reshape((n, hidden_units[0]), name="branch_hidden1", dtype=dtype)(x)
        for l, units in enumerate(hidden_units[1:], start=2):
            x = BatchedDense(units, num_modules=n, activation=activation,
                             kernel_initializer=kernel_initializer, name=f"hidden{l}", dtype=dtype)(x)
    else:  # linear branches: every branch reads the whole input
        x = layers.RepeatVector(n, name="branch_inputs", dtype=dtype)(x)
    x = BatchedDense(num_classes, num_modules=n, activation=output_activation,
                     kernel_initializer=kernel_initializer, name=BRANCH_LOGITS, dtype=head)(x)
    outputs = BranchSum(n, logit_clamp=logit_clamp, return_branches=return_branches,
                        name=BRANCH_SUM, dtype=head)(x)
    return keras.Model(inputs, outputs, name=name or f"branched_mlp_{n}")
