"""Branches run side by side: grouped convolutions and batched dense layers.

Every family in the zoo evaluates C parallel branches as one layer: ResNeXt /
GatedConnect blocks are grouped 3x3 convolutions (groups = cardinality), the
modular ensembles of Webb et al. (2019) are M networks
run as grouped convolutions (groups = M) and batched matmuls (weights
``[M, in, out]``).

``GroupedConv2D`` is ``keras.layers.Conv2D(groups=G)`` (same arguments, same
``kernel``/``bias`` shapes and layout, weights move between the two
unchanged) whose convolution is computed by the fastest route for the backend
and device. Keras' own grouped ``Conv2D`` on the TensorFlow backend compiles
every grouped convolution with XLA, which on CPU is one to two orders of
magnitude slower than a dense convolution of the same channels
(benchmarks/README.md).

Routes (``implementation=``):

- ``"native"``: ``keras.ops.conv`` with the grouped kernel (cuDNN / PyTorch /
  XLA grouped convolution).
- ``"split"``: the input is split along channels into ``groups /
  groups_per_conv`` slices, each convolved by one ordinary (groups=1)
  convolution, outputs concatenated. With ``groups_per_conv > 1`` adjacent
  groups are merged into one convolution with a block-diagonal kernel (zeros
  off the diagonal blocks, so the maths is unchanged): fewer, wider
  convolutions for tiny per-group widths, at ``groups_per_conv`` times the
  multiply-adds. On TensorFlow these are oneDNN convolutions where TensorFlow
  runs oneDNN, Eigen ones elsewhere.
- ``"depthwise"``: only when every group has one input channel
  (``groups == input channels``): ``keras.ops.depthwise_conv`` with
  multiplier ``filters / groups``.

``"auto"`` (default) decides once per layer, at build time:

- one group, the PyTorch backend, or an accelerator in
  ``keras.distribution.list_devices()`` (GPU/TPU; looked up once per
  process): ``"native"``;
- CPU, TensorFlow backend: ``"depthwise"`` when groups == input channels,
  otherwise ``"split"`` with the smallest ``groups_per_conv`` (a divisor of
  ``groups``) whose convolutions have at least 16 x 16 input x output
  channels (``groups_per_conv * in_per_group * groups_per_conv *
  out_per_group >= 256``): 8 -> 8 channel groups are merged in pairs, 16 -> 16
  and wider are not; oneDNN is inefficient on very narrow convolutions and
  each extra convolution costs a split/concat pass;
- CPU, JAX backend: ``"split"`` with a target of 8 x 8 (64); XLA:CPU's grouped
  and depthwise convolutions are the slow ones there, so depthwise cases are
  split too (groups of 8 channels);
- any other backend: ``"native"``.

These thresholds come from the measurements in benchmarks/README.md: the
rule was set on a 2-core Intel Sapphire Rapids VM (TF 2.21 / JAX 0.10) and
rechecked on a 2-core AMD EPYC Zen 4 VM (both with AVX-512, where TensorFlow
runs oneDNN), where merging 16 -> 16 groups in pairs was again slower. The
ratios to PyTorch move between CPUs (on a 2-core AMD EPYC without AVX-512,
GroupedConv2D / PyTorch read 1.68, 1.45 and 0.94 on three shapes
where the Zen 4 VM read 0.62, 1.39 and 0.96); each table there names its
machine. The rule looks at the devices of the process, not at a surrounding
``tf.device`` scope.

Every CPU trains every route. No route calls TensorFlow's own grouped
kernel (``tf.nn.conv2d`` with a grouped kernel), whose CPU gradients exist
only with oneDNN, which TensorFlow leaves off by default on CPUs without
AVX-512 VNNI/BF16 or AMX (``import branchzoo`` turns it on on x86-64 unless
``TF_ENABLE_ONEDNN_OPTS`` is set, but a user may set it to 0, or import
TensorFlow first): ``"split"`` runs groups=1 convolutions,
``"depthwise"`` depthwise ones, and ``"native"`` goes through Keras, which
compiles grouped convolutions with XLA on TensorFlow. TensorFlow's CPU
``Conv2D`` has no NCHW without oneDNN either, so with
``data_format="channels_first"`` a TensorFlow CPU-only process runs every
route channels_last inside (one transpose in, one out; in a scratch run on
the Sapphire Rapids VM this was also faster than oneDNN's own NCHW path).
"""

import functools

import keras
import numpy as np
from keras import ops

from branchzoo._validation import check_int

IMPLEMENTATIONS = ("auto", "native", "split", "depthwise")

# "split" route: each convolution at least (width x width) in x out channels, per CPU backend.
_SPLIT_MIN_WIDTH = {"tensorflow": 16, "jax": 8}


@functools.lru_cache(maxsize=None)
def _has_accelerator(backend_name):
    """True when Keras sees a GPU or TPU (cached: devices do not change)."""
    del backend_name  # cache key only
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # backends without a distribution API (torch): CPU
        return False
    return any(not str(d).lower().startswith("cpu") for d in devices)


def _cpu_convolutions_need_nhwc(backend_name):
    """True on a TensorFlow CPU-only process: there NCHW convolutions need oneDNN, which not every CPU gets."""
    return backend_name == "tensorflow" and not _has_accelerator(backend_name)


def choose_implementation(groups, in_channels, filters, backend=None, accelerator=None):
    """Returns the ``(implementation, groups_per_conv)`` that ``"auto"`` picks.

    Args:
        groups: number of groups.
        in_channels: input channels of the convolution.
        filters: output channels.
        backend: Keras backend name (default ``keras.config.backend()``).
        accelerator: whether a GPU/TPU is present (default: looked up once
            with ``keras.distribution.list_devices()``).

    Returns:
        ``("native", None)``, ``("depthwise", None)`` or ``("split", m)``.
    """
    backend = backend or keras.config.backend()
    if groups == 1 or backend not in _SPLIT_MIN_WIDTH:
        return "native", None
    if accelerator is None:
        accelerator = _has_accelerator(backend)
    if accelerator:
        return "native", None
    if backend == "tensorflow" and in_channels == groups:
        return "depthwise", None
    return "split", _merge_factor(groups, in_channels // groups, filters // groups, _SPLIT_MIN_WIDTH[backend])


def _merge_factor(groups, group_in, group_out, min_width):
    # smallest divisor m of groups whose convolution is (m*in) x (m*out) >= min_width^2
    for m in range(1, groups + 1):
        if groups % m == 0 and (m * group_in) * (m * group_out) >= min_width * min_width:
            return m
    return groups


def _block_diagonal_mask(m, group_in, group_out):
    mask = np.zeros((1, 1, m * group_in, m * group_out), dtype="float32")
    for g in range(m):
        mask[..., g * group_in : (g + 1) * group_in, g * group_out : (g + 1) * group_out] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="branchzoo")
class GroupedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D(groups=G)`` computed by the fastest route per backend.

    Same constructor arguments, weights (``kernel`` of shape ``(kh, kw,
    in_channels // groups, filters)``, output channel ``o`` belongs to group
    ``o // (filters // groups)``; ``bias`` of shape ``(filters,)``) and
    outputs as Keras' grouped ``Conv2D`` (Xie et al. 2017, "Aggregated
    Residual Transformations", form C), so ``set_weights`` /
    ``get_weights`` move between the two unchanged. Only the convolution is
    computed differently; see the module docstring for the routes and the
    ``"auto"`` rule.

    Args:
        filters, kernel_size, strides, padding, data_format, dilation_rate,
        groups, activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as ``keras.layers.Conv2D``;
            ``groups`` must divide both the input channels and ``filters``.
        implementation: ``"auto"`` (default), ``"native"``, ``"split"`` or
            ``"depthwise"`` (needs groups == input channels).
        groups_per_conv: for ``"split"`` (and ``"auto"`` when it splits):
            how many adjacent groups each convolution computes
            (block-diagonal kernel); must divide ``groups``. ``None``
            (default) uses the ``"auto"`` rule's value (1 on backends
            without a rule).

    Returns:
        The convolution output, as ``Conv2D``.

    Example:

    >>> import numpy as np
    >>> conv = GroupedConv2D(64, 3, padding="same", groups=8)
    >>> tuple(conv(np.zeros((2, 8, 8, 64), "float32")).shape)
    (2, 8, 8, 64)
    >>> tuple(conv.kernel.shape)
    (3, 3, 8, 64)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        implementation="auto",
        groups_per_conv=None,
        **kwargs,
    ):
        filters = check_int(filters, "filters", minimum=1)
        groups = check_int(groups, "groups", minimum=1)
        if filters % groups:
            raise ValueError(
                f"`filters` must be divisible by `groups` ({groups}). "
                f"Received: filters={filters}, groups={groups}"
            )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}. "
                f"Received: implementation={implementation!r}"
            )
        if groups_per_conv is not None:
            if implementation not in ("auto", "split"):
                raise ValueError(
                    '`groups_per_conv` applies to implementation "split" (and "auto" when it splits). '
                    f"Received: groups_per_conv={groups_per_conv!r}, implementation={implementation!r}"
                )
            groups_per_conv = check_int(groups_per_conv, "groups_per_conv", minimum=1, maximum=groups)
            if groups % groups_per_conv:
                raise ValueError(
                    f"`groups_per_conv` must divide `groups` ({groups}). "
                    f"Received: groups_per_conv={groups_per_conv}"
                )
        super().__init__(
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        self.implementation = implementation
        self.groups_per_conv = groups_per_conv
        self._route = None
        self._route_groups_per_conv = None
        self._mask = None
        self._nhwc_inside = False

    @property
    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        in_channels = input_shape[self._channel_axis]
        if in_channels is None:
            raise ValueError(
                "The channel dimension of the inputs must be known. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        if in_channels % self.groups:
            raise ValueError(
                f"The input channels must be divisible by `groups` ({self.groups}). "
                f"Received: {in_channels} input channels (input_shape={tuple(input_shape)}), "
                f"groups={self.groups}"
            )
        if self.implementation == "depthwise" and in_channels != self.groups:
            raise ValueError(
                '`implementation="depthwise"` needs `groups` equal to the input channels '
                f"({in_channels}). Received: groups={self.groups}"
            )
        super().build(input_shape)
        route, merge = self.implementation, self.groups_per_conv
        if route == "auto":
            route, auto_merge = choose_implementation(self.groups, in_channels, self.filters)
            merge = merge if merge is not None else auto_merge
        if route == "split" and merge is None:
            merge = _merge_factor(
                self.groups,
                in_channels // self.groups,
                self.filters // self.groups,
                _SPLIT_MIN_WIDTH.get(keras.config.backend(), 1),
            )
        self._route = route
        self._route_groups_per_conv = merge if route == "split" else None
        if route == "split" and merge > 1:
            self._mask = _block_diagonal_mask(merge, in_channels // self.groups, self.filters // self.groups)
        # TensorFlow's CPU Conv2D kernel has NCHW only with oneDNN (not on CPUs without
        # AVX-512 or with TF_ENABLE_ONEDNN_OPTS=0): every route runs NHWC inside there.
        backend = keras.config.backend()
        self._nhwc_inside = self.data_format == "channels_first" and _cpu_convolutions_need_nhwc(backend)

    @property
    def resolved_implementation(self):
        """The route this built layer runs, e.g. ``"split(groups_per_conv=2)"``."""
        if self._route == "split":
            return f"split(groups_per_conv={self._route_groups_per_conv})"
        return self._route

    def _conv(self, inputs, kernel, data_format):
        return ops.conv(
            inputs,
            kernel,
            strides=list(self.strides),
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=data_format,
        )

    def convolution_op(self, inputs, kernel):
        if self._nhwc_inside:
            outputs = self._route_op(ops.transpose(inputs, (0, 2, 3, 1)), kernel, "channels_last")
            return ops.transpose(outputs, (0, 3, 1, 2))
        return self._route_op(inputs, kernel, self.data_format)

    def _route_op(self, inputs, kernel, data_format):
        if self._route == "split":
            return self._split_conv(inputs, kernel, data_format)
        if self._route == "depthwise":
            kh, kw = self.kernel_size
            channels = kernel.shape[2] * self.groups
            kernel = ops.reshape(kernel, (kh, kw, channels, self.filters // channels))
            return ops.depthwise_conv(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding,
                data_format=data_format,
                dilation_rate=self.dilation_rate,
            )
        return self._conv(inputs, kernel, data_format)

    def _split_conv(self, inputs, kernel, data_format):
        axis = -1 if data_format == "channels_last" else 1
        num_convs = self.groups // self._route_groups_per_conv
        if num_convs == 1:
            xs, ks = [inputs], [kernel]
        else:
            xs = ops.split(inputs, num_convs, axis=axis)
            ks = ops.split(kernel, num_convs, axis=-1)
        if self._mask is not None:
            # (kh, kw, cin, m*cout) -> block-diagonal (kh, kw, m*cin, m*cout)
            mask = ops.cast(self._mask, kernel.dtype)
            ks = [ops.tile(k, (1, 1, self._route_groups_per_conv, 1)) * mask for k in ks]
        ys = [self._conv(x, k, data_format) for x, k in zip(xs, ks)]
        return ys[0] if len(ys) == 1 else ops.concatenate(ys, axis=axis)

    def get_config(self):
        config = super().get_config()
        config.update({"implementation": self.implementation, "groups_per_conv": self.groups_per_conv})
        return config


def _per_module_initializer(initializer, num_modules):
    """Initializer for a ``[M, in, out]`` kernel that treats each module as a Dense.

    Keras computes fans of a 3-D shape as ``fan_in = M * in``, ``fan_out = M *
    out``; a ``VarianceScaling`` initializer (glorot, he, lecun) is therefore
    drawn once with ``scale * M``, which gives every module exactly the
    distribution of ``Dense(out)`` on ``in`` inputs. Element-wise
    initializers (normal, uniform, constant, ...) are drawn once for the
    whole tensor. Shape-dependent ones (e.g. ``Orthogonal``) are called once
    per module, with the seed advanced by the module index, and stacked.
    """
    elementwise = (
        keras.initializers.RandomNormal,
        keras.initializers.RandomUniform,
        keras.initializers.TruncatedNormal,
        keras.initializers.Constant,
        keras.initializers.Zeros,
        keras.initializers.Ones,
    )

    def init(shape, dtype=None):
        if isinstance(initializer, keras.initializers.VarianceScaling):
            scaled = keras.initializers.VarianceScaling(
                scale=initializer.scale * num_modules,
                mode=initializer.mode,
                distribution=initializer.distribution,
                seed=initializer.seed,
            )
            return scaled(shape, dtype=dtype)
        if isinstance(initializer, elementwise) or not hasattr(initializer, "get_config"):
            return initializer(shape, dtype=dtype)
        seed = getattr(initializer, "seed", None)
        parts = []
        for i in range(num_modules):
            module_init = initializer
            if isinstance(seed, int):
                config = initializer.get_config()
                config["seed"] = seed + i
                module_init = type(initializer).from_config(config)
            parts.append(module_init(tuple(shape[1:]), dtype=dtype))
        return ops.stack(parts, axis=0)

    return init


@keras.saving.register_keras_serializable(package="branchzoo")
class BatchedDense(keras.layers.Layer):
    """``M`` independent dense layers evaluated as one batched matmul.

    Module ``m`` maps ``inputs[..., m, :]`` to ``outputs[..., m, :]`` with its
    own ``kernel[m]`` (``in x units``) and ``bias[m]``: the modular MLP
    ensembles of Webb et al. (2019) run their ``M`` members this way.

    The kernel initializer acts per module: each ``kernel[m]`` has the
    distribution a ``keras.layers.Dense(units)`` on ``in`` inputs would get
    (see ``_per_module_initializer``). Regularizers and constraints see the
    whole ``[M, in, units]`` kernel and ``[M, units]`` bias (an L1/L2 penalty
    is thus the sum of the per-module penalties).

    Args:
        units: output width of every module.
        num_modules: ``M``; ``None`` (default) takes it from the inputs'
            second-to-last dimension, an int is checked against it.
        activation, use_bias, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as ``keras.layers.Dense``.

    Returns:
        ``[..., M, units]`` for inputs ``[..., M, in]``.

    Example:

    >>> import numpy as np
    >>> layer = BatchedDense(16)
    >>> tuple(layer(np.zeros((2, 4, 8), "float32")).shape)
    (2, 4, 16)
    >>> tuple(layer.kernel.shape), tuple(layer.bias.shape)
    ((4, 8, 16), (4, 16))
    """

    def __init__(
        self,
        units,
        num_modules=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = check_int(units, "units", minimum=1)
        self.num_modules = None if num_modules is None else check_int(num_modules, "num_modules", minimum=1)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None or input_shape[-2] is None:
            raise ValueError(
                "`BatchedDense` needs inputs of shape [..., num_modules, features] with both "
                f"last dimensions known. Received: input_shape={tuple(input_shape)}"
            )
        modules, features = int(input_shape[-2]), int(input_shape[-1])
        if self.num_modules is not None and modules != self.num_modules:
            raise ValueError(
                f"The inputs' second-to-last dimension must equal `num_modules` ({self.num_modules}). "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-2: modules, -1: features})
        self.kernel = self.add_weight(
            name="kernel",
            shape=(modules, features, self.units),
            initializer=_per_module_initializer(self.kernel_initializer, modules),
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(modules, self.units),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def call(self, inputs):
        # One batched matmul over the modules ([M, N, in] x [M, in, out]): TensorFlow's einsum
        # "...mi,mio->...mo" took 3x as long for 256 modules of 4 -> 10 units (forward + gradients).
        modules, features = self.kernel.shape[0], self.kernel.shape[1]
        x = ops.transpose(ops.reshape(inputs, (-1, modules, features)), (1, 0, 2))
        outputs = ops.transpose(ops.matmul(x, self.kernel), (1, 0, 2))
        if len(inputs.shape) != 3:
            outputs = ops.reshape(outputs, tuple(ops.shape(inputs)[:-1]) + (self.units,))
        if self.bias is not None:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_modules": self.num_modules,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            }
        )
        return config
