"""ModularLossEnsemble: M networks of one architecture evaluated as one layer.

After Webb et al. (2019), Sec. 3.3 and 4: the modules of a jointly trained
ensemble share one architecture, so each of their layers is one batched
operation, and the layer returns the natural parameters of every module,
``[batch, M, K]`` (logits for classification), for `branchzoo.losses.ModularLoss`.

Design: the layer is given a *module spec* (a JSON-able dict naming the
architecture of one module) and builds the batched layers of all ``M``
modules itself, in ``build()``. Module ``m`` owns channel block ``m`` of every
batched tensor (channels ``m*C .. (m+1)*C - 1``, as grouped convolutions and
``BatchedDense`` lay them out):

- ``{"type": "mlp", "hidden_units": [H, ...]}``: the first layer of every
  module reads the same flattened input, so the ``M`` first layers are one
  ``Dense(M*H)`` whose column block ``m`` is module ``m``'s kernel (the
  reference code's broadcast batched matmul computes exactly this product);
  later layers and the output layer are `BatchedDense` (weights ``[M, in,
  out]``).
- ``{"type": "cnn", "filters": [...], "strides": [...], ...}``: the first
  convolution is one ``Conv2D(M*F)`` on the shared input (the reference
  repeats the input M times and uses groups=M: the same kernel and the same
  outputs, without reading the input M times); later convolutions are
  `GroupedConv2D` with ``groups=M``; global average pool, `BatchedDense`
  classifier (Table 3).
- ``{"type": "densenet_bc", "depth": D, "growth_rate": k}``: DenseNet-BC
  (Huang et al. 2017, the layout of Amos & Kolter's PyTorch code that the
  paper uses, Sec. 4.3): 3x3 stem conv with ``2k`` channels, three dense
  blocks of ``(D - 4) / 6`` bottleneck layers (BN-ReLU-1x1 conv ``4k``,
  BN-ReLU-3x3 conv ``k``), transitions (BN-ReLU-1x1 conv to
  ``floor(C * compression)``, 2x2 average pool), BN-ReLU, global average
  pool, classifier (the layout of `branchzoo.layers.densenet_bc`, which
  `branchzoo.models.densenet` follows too). Every conv is grouped (``groups=M``) and the dense
  concatenation stays per module (each module's new ``k`` channels are
  appended to its own block).

Initialisation follows the reference code (PyTorch defaults): MLP and CNN
kernels and biases uniform in ``+-1/sqrt(fan_in)`` of one module; DenseNet
convs normal with std ``sqrt(2 / (kh * kw * out_channels_per_module))``, BN
scale 1 and offset 0, classifier bias 0.

``active_modules`` (indices, or a boolean mask of length M) keeps only those
modules: the output is ``[batch, len(active), K]`` (ascending module order),
so a loss or metric that averages over axis 1 averages the remaining modules.
Every module is still computed (one batched op is cheaper than gathering
weights), only the output is selected. Set it in the constructor or per call
(``layer(x, active_modules=[0, 5])``); `branchzoo.models.modular.sub_ensemble`
builds such a model from a trained one, sharing its weights.
"""

import math
import numbers

import keras
import numpy as np
from keras import layers, ops

from branchzoo._validation import check_int, check_int_list
from branchzoo.layers.densenet_bc import densenet_bc_layout
from branchzoo.layers.grouped import BatchedDense, GroupedConv2D
from branchzoo.precision import head_policy

MODULE_TYPES = ("mlp", "cnn", "densenet_bc")

_DEFAULTS = {
    "mlp": {"hidden_units": [4], "activation": "relu"},
    "cnn": {
        "filters": [32, 64, 64, 128, 128],
        "kernel_size": 3,
        "strides": [1, 2, 1, 2, 1],
        "padding": "valid",
        "activation": "relu",
    },
    "densenet_bc": {"depth": 100, "growth_rate": 12, "compression": 0.5, "bn_momentum": 0.9, "bn_epsilon": 1e-5},
}


def _int_list(value, name, minimum=1):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    return check_int_list(value, name, "be a positive integer or a non-empty list of them", minimum=minimum)


def normalize_module(module):
    """Checks a module spec and returns it complete (every key, defaults filled in).

    Args:
        module: ``"mlp"``, ``"cnn"``, ``"densenet_bc"`` (the defaults of that
            type) or a dict with ``"type"`` and any keys of that type:
            mlp: ``hidden_units`` (int or list), ``activation``;
            cnn: ``filters`` (list), ``kernel_size`` (int), ``strides`` (int or
            list, one per conv), ``padding``, ``activation``;
            densenet_bc: ``depth`` (``(depth - 4) % 6 == 0``), ``growth_rate``,
            ``compression`` (in (0, 1]), ``bn_momentum``, ``bn_epsilon``.

    Returns:
        A new dict.
    """
    given = module
    if isinstance(module, str):
        module = {"type": module}
    if not isinstance(module, dict) or module.get("type") not in MODULE_TYPES:
        raise ValueError(
            f"`module` must be one of {MODULE_TYPES} or a dict with a 'type' among them, e.g. "
            f"{{'type': 'mlp', 'hidden_units': [4]}}. Received: module={given!r}"
        )
    kind = module["type"]
    unknown = sorted(set(module) - set(_DEFAULTS[kind]) - {"type"})
    if unknown:
        raise ValueError(
            f"`module` of type {kind!r} accepts the keys {sorted(_DEFAULTS[kind])}. "
            f"Received unknown keys {unknown} in module={module!r}"
        )
    spec = {"type": kind, **_DEFAULTS[kind], **{k: v for k, v in module.items() if k != "type"}}
    if kind == "mlp":
        spec["hidden_units"] = _int_list(spec["hidden_units"], "hidden_units")
        keras.activations.get(spec["activation"])
    elif kind == "cnn":
        spec["filters"] = _int_list(spec["filters"], "filters")
        spec["kernel_size"] = check_int(spec["kernel_size"], "kernel_size", minimum=1)
        strides = _int_list(spec["strides"], "strides")
        if len(strides) == 1:
            strides = strides * len(spec["filters"])
        if len(strides) != len(spec["filters"]):
            raise ValueError(
                f"`strides` must have one entry per conv layer ({len(spec['filters'])}). "
                f"Received: strides={spec['strides']!r}"
            )
        spec["strides"] = strides
        if spec["padding"] not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'. Received: padding={spec['padding']!r}")
        keras.activations.get(spec["activation"])
    else:
        depth = check_int(spec["depth"], "depth", minimum=10)
        if (depth - 4) % 6:
            raise ValueError(
                "`depth` of a DenseNet-BC must be 6n + 4 (three dense blocks of n bottleneck layers, "
                f"two convs each, plus the stem, two transitions and the classifier). Received: depth={depth}"
            )
        spec["depth"] = depth
        spec["growth_rate"] = check_int(spec["growth_rate"], "growth_rate", minimum=1)
        compression = spec["compression"]
        if isinstance(compression, bool) or not isinstance(compression, numbers.Real) or not 0 < compression <= 1:
            raise ValueError(f"`compression` must be in (0, 1]. Received: compression={compression!r}")
        spec["compression"] = float(compression)
        spec["bn_momentum"] = float(spec["bn_momentum"])
        spec["bn_epsilon"] = float(spec["bn_epsilon"])
    return spec


def normalize_active_modules(active_modules, num_modules):
    """Indices (sorted list of ints) of the kept modules, or None for all.

    Args:
        active_modules: None; a sequence/array of module indices; or a
            boolean mask of length `num_modules` (bools, not 0/1 ints: ints
            are indices).
        num_modules: ``M``.
    """
    if active_modules is None:
        return None
    values = np.asarray(active_modules)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            "`active_modules` must be a non-empty list of module indices or a boolean mask of length "
            f"`num_modules` ({num_modules}). Received: active_modules={active_modules!r}"
        )
    if values.dtype == bool:
        if values.size != num_modules:
            raise ValueError(
                f"A boolean `active_modules` mask must have length `num_modules` ({num_modules}). "
                f"Received: a mask of length {values.size}"
            )
        if not values.any():
            raise ValueError("`active_modules` must keep at least one module. Received: an all-False mask")
        return [int(i) for i in np.flatnonzero(values)]
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            "`active_modules` must hold integer module indices or booleans. "
            f"Received: active_modules={active_modules!r}"
        )
    indices = sorted(int(i) for i in values)
    if indices[0] < 0 or indices[-1] >= num_modules:
        raise ValueError(
            f"`active_modules` indices must be between 0 and `num_modules` - 1 ({num_modules - 1}). "
            f"Received: active_modules={active_modules!r}"
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"`active_modules` must not repeat a module. Received: active_modules={active_modules!r}")
    return indices


def _uniform(fan_in):
    """PyTorch's default for Linear/Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)


def _he_fan_out(kernel_area, out_per_module):
    """The DenseNet reference init: N(0, 2 / (kh * kw * out_channels of one module))."""
    return keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (kernel_area * out_per_module)))


@keras.saving.register_keras_serializable(package="branchzoo")
class ModularLossEnsemble(keras.layers.Layer):
    """``M`` modules of one architecture as one layer, returning ``[batch, M, K]``.

    After Webb et al. (2019), Sec. 3.3 (batched matmuls and grouped
    convolutions) and Sec. 4 (the MLP, CNN and DenseNet-BC modules); train
    it with `branchzoo.losses.ModularLoss`. See the module docstring for the
    layout of the batched layers and the initialisation.

    Args:
        num_modules: ``M``.
        num_classes: ``K``, the natural parameters per module (logits).
        module: the architecture of one module: ``"mlp"``, ``"cnn"``,
            ``"densenet_bc"`` or a dict, see `normalize_module`.
        active_modules: None (all), module indices, or a boolean mask of
            length ``M``; only those modules are returned. A call argument
            of the same name overrides it for that call.

    Returns:
        ``[batch, M, K]`` natural parameters (``[batch, len(active_modules),
        K]`` when modules are dropped). Their mean over axis 1 is the
        ensemble's prediction. Under a mixed dtype policy the modules
        compute in 16 bits and their output layer in float32, so the
        natural parameters (and every average of them) are float32.

    Example:

    >>> import numpy as np
    >>> ens = ModularLossEnsemble(8, 10, module={"type": "mlp", "hidden_units": [4]})
    >>> tuple(ens(np.zeros((2, 28, 28, 1), "float32")).shape)
    (2, 8, 10)
    >>> tuple(ens(np.zeros((2, 28, 28, 1), "float32"), active_modules=[0, 3]).shape)
    (2, 2, 10)
    """

    def __init__(self, num_modules, num_classes, module="mlp", active_modules=None, **kwargs):
        super().__init__(**kwargs)
        self.num_modules = check_int(num_modules, "num_modules", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.module = normalize_module(module)
        self.active_modules = normalize_active_modules(active_modules, self.num_modules)

    # ----------------------------------------------------------------- build
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        builder = {"mlp": self._build_mlp, "cnn": self._build_cnn, "densenet_bc": self._build_densenet}
        builder[self.module["type"]](input_shape)

    def _sub(self, layer, shape):
        layer.build(shape)
        return layer

    def _build_mlp(self, input_shape):
        if len(input_shape) < 2 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                "An MLP module needs inputs whose non-batch dimensions are known. "
                f"Received: input_shape={input_shape}"
            )
        M, spec = self.num_modules, self.module
        features = int(np.prod(input_shape[1:]))
        units = spec["hidden_units"]
        self._features = features
        self.dense1 = self._sub(
            layers.Dense(
                M * units[0], activation=spec["activation"], kernel_initializer=_uniform(features),
                bias_initializer=_uniform(features), dtype=self.dtype_policy, name="dense1",
            ),
            (None, features),
        )
        self.hidden = []
        for i, (n_in, n_out) in enumerate(zip(units[:-1], units[1:]), start=2):
            self.hidden.append(self._batched(n_out, n_in, spec["activation"], f"dense{i}"))
        self.logits = self._batched(self.num_classes, units[-1], None, "logits")

    def _batched(self, units, fan_in, activation, name, zero_bias=False):
        init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))
        # the output layer computes in float32 under a mixed policy: the natural parameters the
        # modular loss averages over modules and exponentiates
        dtype = head_policy(self.dtype_policy) if name == "logits" else self.dtype_policy
        return self._sub(
            BatchedDense(
                units, num_modules=self.num_modules, activation=activation, kernel_initializer=init,
                bias_initializer="zeros" if zero_bias else _uniform(fan_in), dtype=dtype, name=name,
            ),
            (None, self.num_modules, fan_in),
        )

    def _check_image_shape(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"A {self.module['type']} module needs images [batch, height, width, channels] with known "
                f"channels. Received: input_shape={input_shape}"
            )

    def _build_cnn(self, input_shape):
        self._check_image_shape(input_shape)
        M, spec = self.num_modules, self.module
        k = spec["kernel_size"]
        shape, channels = input_shape, input_shape[-1]
        size = list(input_shape[1:3])
        for stride in spec["strides"]:  # a clear error before Keras' own for too-small inputs
            size = [None if n is None else ((n - k) // stride + 1 if spec["padding"] == "valid" else -(-n // stride))
                    for n in size]
            if any(n is not None and n < 1 for n in size):
                raise ValueError(
                    f"The input images are too small for the convolutions of `module` {spec}. "
                    f"Received: input_shape={input_shape}"
                )
        self.convs = []
        for i, (filters, stride) in enumerate(zip(spec["filters"], spec["strides"]), start=1):
            fan_in = k * k * channels
            common = dict(
                kernel_size=k, strides=stride, padding=spec["padding"], activation=spec["activation"],
                kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                bias_initializer=_uniform(fan_in), dtype=self.dtype_policy, name=f"conv{i}",
            )
            if i == 1:  # shared input: one dense conv = the grouped conv on M copies of the input
                conv = layers.Conv2D(M * filters, **common)
            else:
                conv = GroupedConv2D(M * filters, groups=M, **common)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.convs.append(conv)
            channels = filters
        self._last_channels = channels
        self.logits = self._batched(self.num_classes, channels, None, "logits")

    def _build_densenet(self, input_shape):
        self._check_image_shape(input_shape)
        M, spec = self.num_modules, self.module
        k = spec["growth_rate"]
        n = (spec["depth"] - 4) // 6
        bn = dict(momentum=spec["bn_momentum"], epsilon=spec["bn_epsilon"], dtype=self.dtype_policy)
        channels = 2 * k
        spatial = tuple(input_shape[1:3])

        def shape_of(c):
            return (None, *spatial, M * c)

        self.stem_conv = self._sub(
            layers.Conv2D(M * channels, 3, padding="same", use_bias=False, kernel_initializer=_he_fan_out(9, channels),
                          dtype=self.dtype_policy, name="stem_conv"),
            input_shape,
        )
        self.dense_blocks, self.transitions = [], []
        layout = densenet_bc_layout([n] * 3, k, channels, spec["compression"])
        for dense_block in layout:
            block = []
            for prefix, channels, _ in dense_block.layers:
                bn1 = self._sub(layers.BatchNormalization(name=f"{prefix}_bn1", **bn), shape_of(channels))
                conv1 = self._sub(
                    GroupedConv2D(M * 4 * k, 1, groups=M, use_bias=False, kernel_initializer=_he_fan_out(1, 4 * k),
                                  dtype=self.dtype_policy, name=f"{prefix}_conv1"),
                    shape_of(channels),
                )
                bn2 = self._sub(layers.BatchNormalization(name=f"{prefix}_bn2", **bn), shape_of(4 * k))
                conv2 = self._sub(
                    GroupedConv2D(M * k, 3, padding="same", groups=M, use_bias=False,
                                  kernel_initializer=_he_fan_out(9, k), dtype=self.dtype_policy,
                                  name=f"{prefix}_conv2"),
                    shape_of(4 * k),
                )
                block.append((bn1, conv1, bn2, conv2))
            self.dense_blocks.append(block)
            if dense_block.transition:
                prefix, channels, out = dense_block.transition
                t_bn = self._sub(layers.BatchNormalization(name=f"{prefix}_bn", **bn), shape_of(channels))
                t_conv = self._sub(
                    GroupedConv2D(M * out, 1, groups=M, use_bias=False, kernel_initializer=_he_fan_out(1, out),
                                  dtype=self.dtype_policy, name=f"{prefix}_conv"),
                    shape_of(channels),
                )
                self.transitions.append((t_bn, t_conv))
                spatial = tuple(None if s is None else s // 2 for s in spatial)
        channels = layout[-1].layers[-1].out_channels
        self.final_bn = self._sub(layers.BatchNormalization(name="final_bn", **bn), shape_of(channels))
        self._last_channels = channels
        self.logits = self._batched(self.num_classes, channels, None, "logits", zero_bias=True)

    # ------------------------------------------------------------------ call
    def call(self, inputs, training=None, active_modules=None):
        kind = self.module["type"]
        if kind == "mlp":
            eta = self._call_mlp(inputs)
        elif kind == "cnn":
            eta = self._call_cnn(inputs)
        else:
            eta = self._call_densenet(inputs, training)
        active = self.active_modules if active_modules is None else normalize_active_modules(
            active_modules, self.num_modules)
        if active is not None and len(active) < self.num_modules:
            eta = ops.take(eta, np.asarray(active, "int32"), axis=1)
        return eta

    def _per_module(self, x, channels):
        """``[batch, M * channels]`` to ``[batch, M, channels]``."""
        return ops.reshape(x, (-1, self.num_modules, channels))

    def _call_mlp(self, inputs):
        x = ops.reshape(inputs, (-1, self._features))
        x = self._per_module(self.dense1(x), self.module["hidden_units"][0])
        for layer in self.hidden:
            x = layer(x)
        return self.logits(x)

    def _call_cnn(self, inputs):
        x = inputs
        for conv in self.convs:
            x = conv(x)
        x = ops.mean(x, axis=(1, 2))
        return self.logits(self._per_module(x, self._last_channels))

    def _concat_per_module(self, x, new):
        """Appends each module's new channels to its own channel block."""
        M = self.num_modules
        if M == 1:
            return ops.concatenate([x, new], axis=-1)
        shape = ops.shape(x)
        c_old, c_new = x.shape[-1] // M, new.shape[-1] // M
        lead = (shape[0], shape[1], shape[2])
        joined = ops.concatenate(
            [ops.reshape(x, lead + (M, c_old)), ops.reshape(new, lead + (M, c_new))], axis=-1
        )
        return ops.reshape(joined, lead + (M * (c_old + c_new),))

    def _call_densenet(self, inputs, training):
        x = self.stem_conv(inputs)
        for b, block in enumerate(self.dense_blocks):
            for bn1, conv1, bn2, conv2 in block:
                h = conv1(ops.relu(bn1(x, training=training)))
                h = conv2(ops.relu(bn2(h, training=training)))
                x = self._concat_per_module(x, h)
            if b < len(self.transitions):
                t_bn, t_conv = self.transitions[b]
                x = t_conv(ops.relu(t_bn(x, training=training)))
                x = ops.average_pool(x, 2, strides=2, padding="valid")
        x = ops.relu(self.final_bn(x, training=training))
        x = ops.mean(x, axis=(1, 2))
        return self.logits(self._per_module(x, self._last_channels))

    @property
    def num_active_modules(self):
        """How many modules the layer returns by default."""
        return self.num_modules if self.active_modules is None else len(self.active_modules)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_modules": self.num_modules,
                "num_classes": self.num_classes,
                "module": dict(self.module),
                "active_modules": None if self.active_modules is None else list(self.active_modules),
            }
        )
        return config
