"""BranchedGenerator: a class-transfer generator whose branch outputs decompose the image.

After Brokman & Gilboa (2022), Sec. 7 and Appendices D-E, with the layout of
the StarGAN v2 reference code (Choi et al. 2020) that the paper slims down:

    G(x, c) = sum_i G_i(x_i, c) + S(x)                      (Eq. 15)

- ``G_i``: a slim StarGAN v2 generator (encoder of residual blocks with
  instance norm and average-pool downsampling, two bottleneck blocks, a
  decoder of AdaIN residual blocks with nearest upsampling, ``to_rgb``),
  conditioned on the target class through a learned class embedding that
  takes the place of StarGAN v2's style code (the paper does class transfer,
  not diverse synthesis). ``dim_in=8, max_dim=64`` is 594,387 parameters per
  branch at 256 px plus the embedding (StarGAN v2's AFHQ generator, dim_in
  64 / max 512, is 33,892,995).
- The ``N`` branches run side by side as ONE network of grouped
  convolutions (`GroupedConv2D`, ``groups=N``; channels branch-major) and
  per-branch dense layers (`BatchedDense`); instance norm and AdaIN act per
  channel, so branches never mix until the sum.
- ``S``: a fixed Gaussian over-smoothing (`GaussianBlur`), with every
  branch reading ``x`` itself; or the learnt nonlinear diffusion of
  Appendix E (`LearnedDiffusion`), whose residuals are the branch inputs
  ``x_i`` and whose final state is ``S(x)``.

The paper's formulas were lost in the text extraction; where it is silent
(the diffusion residuals' exact discretisation, the class embedding, the
smoothing width, the diffusion CNN's widths) the choices are documented on
each layer.
"""

import math

import keras
import numpy as np
from keras import ops

from branchzoo._validation import check_int
from branchzoo.layers.grouped import BatchedDense, GroupedConv2D
from branchzoo.precision import head_policy, upcast_dtype

SMOOTHINGS = ("gaussian", "learned")
_SQRT2 = math.sqrt(2.0)


def _leaky(x):
    return ops.leaky_relu(x, negative_slope=0.2)


def _check_float(value, name, minimum=None, exclusive=True):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}") from None
    if not math.isfinite(value) or (minimum is not None and (value <= minimum if exclusive else value < minimum)):
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise ValueError(f"`{name}` must be a finite number {bound}. Received: {name}={value!r}")
    return value


def _image_shape(input_shape, layer):
    shape = tuple(input_shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            f"`{layer}` needs images of shape [batch, height, width, channels] with known "
            f"height, width and channels. Received: input_shape={shape}"
        )
    return shape


class _InstanceNorm(keras.layers.Layer):
    """Per-sample, per-channel normalisation over H and W (PyTorch InstanceNorm2d, eps 1e-5).

    Statistics and the affine map in float32 under a mixed policy (as Keras' normalisation
    layers), the output in the compute dtype.
    """

    def __init__(self, affine=True, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.affine = affine
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.affine:
            self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", autocast=False)
            self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", autocast=False)

    def call(self, x):
        dtype = x.dtype
        x = ops.cast(x, upcast_dtype(dtype))
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        centered = x - mean
        variance = ops.mean(ops.square(centered), axis=(1, 2), keepdims=True)
        x = centered * ops.rsqrt(variance + self.epsilon)
        if self.affine:
            x = x * ops.cast(self.gamma, x.dtype) + ops.cast(self.beta, x.dtype)
        return ops.cast(x, dtype)


def _conv(filters, kernel_size, groups, initializer, use_bias=True, padding="same", name=None, dtype=None):
    return GroupedConv2D(filters, kernel_size, padding=padding, groups=groups, use_bias=use_bias,
                         kernel_initializer=initializer, dtype=dtype, name=name)


class _ResBlock(keras.layers.Layer):
    """StarGAN v2's ResBlk for `branches` side-by-side networks (widths per branch)."""

    def __init__(self, dim_in, dim_out, branches=1, normalize=False, downsample=False,
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        self.dim_in, self.dim_out, self.branches = dim_in, dim_out, branches
        self.normalize, self.downsample = normalize, downsample
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        n, init = self.branches, self.kernel_initializer
        shape = tuple(input_shape)
        self.conv1 = _conv(self.dim_in * n, 3, n, init, name="conv1", dtype=self.dtype_policy)
        self.conv2 = _conv(self.dim_out * n, 3, n, init, name="conv2", dtype=self.dtype_policy)
        self.conv1.build(shape)
        inner = shape if not self.downsample else (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
        self.conv2.build(inner)
        if self.normalize:
            self.norm1 = _InstanceNorm(name="norm1", dtype=self.dtype_policy)
            self.norm2 = _InstanceNorm(name="norm2", dtype=self.dtype_policy)
            self.norm1.build(shape)
            self.norm2.build(inner)
        self.shortcut = None
        if self.dim_in != self.dim_out:
            self.shortcut = _conv(self.dim_out * n, 1, n, init, use_bias=False, name="conv1x1",
                                  dtype=self.dtype_policy)
            self.shortcut.build(shape)

    def _pool(self, x):
        return ops.average_pool(x, 2, strides=2, padding="valid") if self.downsample else x

    def call(self, x):
        skip = self._pool(self.shortcut(x) if self.shortcut is not None else x)
        h = self.norm1(x) if self.normalize else x
        h = self._pool(self.conv1(_leaky(h)))
        h = self.norm2(h) if self.normalize else h
        h = self.conv2(_leaky(h))
        return (skip + h) / _SQRT2  # unit variance, as StarGAN v2


class _AdaINResBlock(keras.layers.Layer):
    """StarGAN v2's AdainResBlk (w_hpf=0) for `branches` networks, each with its own style."""

    def __init__(self, dim_in, dim_out, branches, style_dim, upsample=False,
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        self.dim_in, self.dim_out, self.branches = dim_in, dim_out, branches
        self.style_dim, self.upsample = style_dim, upsample
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        n, init = self.branches, self.kernel_initializer
        shape = tuple(input_shape)
        outer = shape if not self.upsample else (shape[0], shape[1] * 2, shape[2] * 2, shape[3])
        self.norm1 = _InstanceNorm(affine=False, name="norm1", dtype=self.dtype_policy)
        self.norm2 = _InstanceNorm(affine=False, name="norm2", dtype=self.dtype_policy)
        self.norm1.build(shape)
        self.norm2.build(outer[:3] + (self.dim_out * n,))
        # (1 + gamma) * norm(x) + beta, gamma and beta from the branch's own style
        self.fc1 = BatchedDense(2 * self.dim_in, kernel_initializer=init, dtype=self.dtype_policy, name="fc1")
        self.fc2 = BatchedDense(2 * self.dim_out, kernel_initializer=init, dtype=self.dtype_policy, name="fc2")
        self.fc1.build((None, n, self.style_dim))
        self.fc2.build((None, n, self.style_dim))
        self.conv1 = _conv(self.dim_out * n, 3, n, init, name="conv1", dtype=self.dtype_policy)
        self.conv2 = _conv(self.dim_out * n, 3, n, init, name="conv2", dtype=self.dtype_policy)
        self.conv1.build(outer)
        self.conv2.build(outer[:3] + (self.dim_out * n,))
        self.shortcut = None
        if self.dim_in != self.dim_out:
            self.shortcut = _conv(self.dim_out * n, 1, n, init, use_bias=False, name="conv1x1",
                                  dtype=self.dtype_policy)
            self.shortcut.build(outer)

    def _adain(self, x, norm, fc, dim, style):
        h = fc(style)  # [batch, N, 2 * dim]
        gamma = ops.reshape(h[..., :dim], (-1, 1, 1, self.branches * dim))
        beta = ops.reshape(h[..., dim:], (-1, 1, 1, self.branches * dim))
        return (1.0 + gamma) * norm(x) + beta

    def _up(self, x):
        return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2) if self.upsample else x

    def call(self, x, style):
        h = _leaky(self._adain(x, self.norm1, self.fc1, self.dim_in, style))
        h = self.conv1(self._up(h))
        h = _leaky(self._adain(h, self.norm2, self.fc2, self.dim_out, style))
        h = self.conv2(h)
        skip = self._up(x)
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        return (h + skip) / _SQRT2


def gaussian_kernel1d(sigma, radius=None):
    """The normalised 1-D Gaussian of `GaussianBlur` (radius ``ceil(3 sigma)`` by default)."""
    radius = int(math.ceil(3.0 * sigma)) if radius is None else int(radius)
    t = np.arange(-radius, radius + 1, dtype="float64")
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype("float32")


@keras.saving.register_keras_serializable(package="branchzoo")
class GaussianBlur(keras.layers.Layer):
    """A fixed Gaussian smoothing of images (separable, reflect-padded): S(x) of Eq. 15.

    After Brokman & Gilboa (2022), Appendix E: "an over-smoothed version of
    x - either learnt smoothing or Gaussian smoothing". The kernel is a
    constant (no weights); borders are reflected so that the smoothed image
    keeps the brightness of the edges. It smooths in float32 (at least)
    whatever the dtype policy: S(x) is part of the generator's output.

    Args:
        sigma: standard deviation in pixels (> 0).
        radius: kernel half-width in pixels (default ``ceil(3 * sigma)``);
            must be smaller than the image height and width.

    Returns:
        The smoothed images, same shape as the input.

    Example:

    >>> import numpy as np
    >>> blur = GaussianBlur(1.5)
    >>> y = blur(np.ones((1, 16, 16, 3), "float32"))
    >>> float(np.abs(np.asarray(y) - 1).max()) < 1e-5   # a constant image stays constant
    True
    """

    def __init__(self, sigma=2.0, radius=None, **kwargs):
        super().__init__(**kwargs)
        self.sigma = _check_float(sigma, "sigma", minimum=0.0)
        self.radius = int(math.ceil(3.0 * self.sigma)) if radius is None else check_int(radius, "radius", minimum=1)

    @property
    def input_dtype(self):
        return upcast_dtype(self.compute_dtype)

    def build(self, input_shape):
        shape = _image_shape(input_shape, "GaussianBlur")
        if self.radius >= min(shape[1], shape[2]):
            raise ValueError(
                f"`radius` ({self.radius}, from sigma={self.sigma}) must be smaller than the image "
                f"height and width (reflect padding). Received: input_shape={shape}"
            )
        self._channels = shape[3]
        self._kernel = gaussian_kernel1d(self.sigma, self.radius)

    def call(self, x):
        r, c = self.radius, self._channels
        k = ops.convert_to_tensor(self._kernel, dtype=x.dtype)
        x = ops.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="reflect")
        vertical = ops.tile(ops.reshape(k, (2 * r + 1, 1, 1, 1)), (1, 1, c, 1))
        horizontal = ops.tile(ops.reshape(k, (1, 2 * r + 1, 1, 1)), (1, 1, c, 1))
        x = ops.depthwise_conv(x, vertical, strides=1, padding="valid")
        return ops.depthwise_conv(x, horizontal, strides=1, padding="valid")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"sigma": self.sigma, "radius": self.radius})
        return config


def bottleneck_widths(filters, num_layers):
    """Hidden widths of `LearnedDiffusion`'s CNN: halving to the middle and back, at least 4.

    >>> bottleneck_widths(32, 8)
    [32, 16, 8, 4, 8, 16, 32]
    """
    hidden = num_layers - 1
    return [max(4, filters // 2 ** min(i, hidden - 1 - i)) for i in range(hidden)]


@keras.saving.register_keras_serializable(package="branchzoo")
class LearnedDiffusion(keras.layers.Layer):
    """A learnt nonlinear diffusion u_{t+1} = u_t + dt * CNN(u_t), with its exact decomposition.

    After Brokman & Gilboa (2022), Appendix E (Eqs. 16-17; the idea of
    Chen & Pock's trainable nonlinear diffusion): one CNN, shared by all
    steps (a recurrent network), drives ``steps`` explicit Euler steps from
    ``u_0 = x``. `decompose` returns the residuals ``phi_t = u_t - u_{t+1}``
    (t = 0..steps-1) and the final state ``u_T``; by telescoping,
    ``sum_t phi_t + u_T = x`` (the discrete reconstruction identity, Eq. 17),
    up to float rounding. In the BranchedGenerator, ``u_T`` is the learnt
    over-smoothing ``S(x)`` and ``phi_t`` is branch ``t``'s input. Under a
    mixed dtype policy the CNN computes in 16 bits and the states and
    residuals stay float32, so the identity holds to float32 rounding.

    The paper's formulas did not survive extraction; our choices: the
    residuals are first differences of the discrete flow (the discretisation
    in which Eq. 17's integrals become sums); the CNN is an ``num_layers``
    bottleneck of 3x3 "same" convolutions with LeakyReLU(0.2) between them
    (`bottleneck_widths`, "8-layer bottleneck CNN" in the paper) and a
    linear last layer back to the image channels.

    Args:
        steps: number of diffusion steps T (>= 1).
        dt: step size (> 0).
        filters: widest hidden width of the CNN.
        num_layers: convolutions in the CNN (>= 2).
        kernel_initializer: initializer of the hidden convolutions.
        velocity_initializer: initializer of the last convolution; default
            ``VarianceScaling(0.1)``, a flow ten times slower than He
            initialisation would give: with He everywhere, the untrained
            flow of a few steps grew images by orders of magnitude.

    Returns:
        ``call(x)``: the final state ``u_T`` (same shape as ``x``);
        ``decompose(x)``: ``(residuals [batch, steps, H, W, C], u_T)``.

    Example:

    >>> import numpy as np
    >>> diffusion = LearnedDiffusion(steps=3)
    >>> x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    >>> residuals, smooth = diffusion.decompose(x)
    >>> tuple(residuals.shape)
    (2, 3, 16, 16, 3)
    >>> float(np.abs(np.sum(residuals, axis=1) + smooth - x).max()) < 1e-5
    True
    """

    def __init__(self, steps, dt=0.2, filters=16, num_layers=8, kernel_initializer="he_normal",
                 velocity_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.steps = check_int(steps, "steps", minimum=1)
        self.dt = _check_float(dt, "dt", minimum=0.0)
        self.filters = check_int(filters, "filters", minimum=1)
        self.num_layers = check_int(num_layers, "num_layers", minimum=2)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if velocity_initializer is None:
            velocity_initializer = keras.initializers.VarianceScaling(scale=0.1, distribution="truncated_normal")
        self.velocity_initializer = keras.initializers.get(velocity_initializer)

    @property
    def input_dtype(self):
        return upcast_dtype(self.compute_dtype)

    def build(self, input_shape):
        shape = _image_shape(input_shape, "LearnedDiffusion")
        widths = bottleneck_widths(self.filters, self.num_layers) + [shape[3]]
        self.convs = []
        current = shape
        for i, width in enumerate(widths, start=1):
            init = self.velocity_initializer if i == len(widths) else self.kernel_initializer
            conv = keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init, dtype=self.dtype_policy,
                                      name=f"conv{i}")
            conv.build(current)
            current = current[:3] + (width,)
            self.convs.append(conv)

    def velocity(self, u):
        """CNN(u): the right-hand side of the flow."""
        for conv in self.convs[:-1]:
            u = _leaky(conv(u))
        return self.convs[-1](u)

    def decompose(self, x):
        """``(residuals [batch, steps, H, W, C], u_T)`` with ``sum(residuals, 1) + u_T == x``."""
        if not self.built:
            self.build(tuple(x.shape))
        u = ops.convert_to_tensor(x)
        u = ops.cast(u, upcast_dtype(u.dtype))  # the states in float32 (at least), the CNN in the compute dtype
        residuals = []
        for _ in range(self.steps):
            nxt = u + self.dt * ops.cast(self.velocity(u), u.dtype)
            residuals.append(u - nxt)  # differences of stored states: the sum telescopes
            u = nxt
        return ops.stack(residuals, axis=1), u

    def call(self, x):
        return self.decompose(x)[1]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "steps": self.steps, "dt": self.dt, "filters": self.filters, "num_layers": self.num_layers,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "velocity_initializer": keras.initializers.serialize(self.velocity_initializer),
        })
        return config


def default_downsamples(size, offset):
    """StarGAN v2's count of downsampling blocks, ``log2(size) - offset``, at least 1."""
    return max(1, int(math.log2(size)) - offset)


def _check_downsamples(num_downsamples, height, width, name):
    factor = 2 ** num_downsamples
    if height % factor or width % factor:
        raise ValueError(
            f"`{name}` ({num_downsamples}) halves the images {num_downsamples} times: height and "
            f"width must be divisible by {factor}. Received: image size {height}x{width}"
        )


@keras.saving.register_keras_serializable(package="branchzoo")
class BranchedGenerator(keras.layers.Layer):
    """G(x, c) = sum_i G_i(x_i, c) + S(x): branched slim StarGAN v2 generators plus a smoothing.

    After Brokman & Gilboa (2022), Sec. 7 and Appendix E (Eq. 15); see the
    module docstring for the architecture. Called as ``gen([images,
    target_classes])`` (images ``[batch, H, W, C]``, classes int ``[batch]``)
    it returns the translated images; with ``return_branches=True`` a dict:
    ``"image"`` ``[batch, H, W, C]``, ``"branches"`` ``[batch, N, H, W, C]``
    (each branch's output image: the decomposition) and ``"smooth"``
    (``S(x)``), where ``image = sum(branches, axis=1) + smooth``.

    Under a mixed dtype policy the branches compute in 16 bits, while the
    images stay float32 on the way in, ``S(x)`` and the sum are computed in
    float32 and every output is float32, so the decomposition identity holds
    to float32 rounding of the output.

    Our choices where the paper is silent: the class embedding (one learned
    ``style_dim`` vector per class and branch, drawn from N(0, 1), in place
    of StarGAN v2's mapping network), the Gaussian's width
    (``smoothing_sigma``), the number of downsamplings at small sizes
    (``num_downsamples``; StarGAN v2's rule ``log2(size) - 4`` leaves one at
    32 px). Outputs are linear (no tanh), as StarGAN v2.

    Args:
        num_branches: N, the number of branches (>= 1).
        num_classes: number of target classes (>= 1).
        dim_in: channels of each branch after ``from_rgb``.
        max_dim: largest channel count of a branch.
        style_dim: size of the class embedding each branch's AdaIN reads.
        num_downsamples: downsampling (and upsampling) blocks; default
            StarGAN v2's ``log2(image size) - 4``, at least 1.
        smoothing: ``"gaussian"`` (`GaussianBlur`; every branch reads the
            image) or ``"learned"`` (`LearnedDiffusion` with N steps; branch i
            reads residual i).
        smoothing_sigma: the Gaussian's standard deviation in pixels.
        diffusion_dt, diffusion_filters, diffusion_layers: `LearnedDiffusion`'s
            ``dt``, ``filters`` and ``num_layers``.
        kernel_initializer: initializer of every convolution and dense layer
            (StarGAN v2 uses He initialisation).
        output_initializer: initializer of each branch's last (``to_rgb``)
            convolution; ``"zeros"`` starts the generator at ``S(x)``.

    Returns:
        The images ``[batch, H, W, C]``, or the dict described above.

    Example:

    >>> import numpy as np
    >>> gen = BranchedGenerator(num_branches=2, num_classes=2, dim_in=4, max_dim=8)
    >>> x = np.zeros((3, 16, 16, 3), "float32")
    >>> out = gen([x, np.array([0, 1, 1])], return_branches=True)
    >>> tuple(out["image"].shape), tuple(out["branches"].shape)
    ((3, 16, 16, 3), (3, 2, 16, 16, 3))
    """

    def __init__(
        self,
        num_branches,
        num_classes,
        dim_in=8,
        max_dim=64,
        style_dim=64,
        num_downsamples=None,
        smoothing="gaussian",
        smoothing_sigma=2.0,
        diffusion_dt=0.2,
        diffusion_filters=16,
        diffusion_layers=8,
        kernel_initializer="he_normal",
        output_initializer="he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_branches = check_int(num_branches, "num_branches", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.dim_in = check_int(dim_in, "dim_in", minimum=1)
        self.max_dim = check_int(max_dim, "max_dim", minimum=1)
        if self.max_dim < self.dim_in:
            raise ValueError(
                f"`max_dim` must be >= `dim_in` ({self.dim_in}). Received: max_dim={self.max_dim}"
            )
        self.style_dim = check_int(style_dim, "style_dim", minimum=1)
        self.num_downsamples = (None if num_downsamples is None
                                else check_int(num_downsamples, "num_downsamples", minimum=1))
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"`smoothing` must be one of {SMOOTHINGS}. Received: smoothing={smoothing!r}")
        self.smoothing = smoothing
        self.smoothing_sigma = _check_float(smoothing_sigma, "smoothing_sigma", minimum=0.0)
        self.diffusion_dt = _check_float(diffusion_dt, "diffusion_dt", minimum=0.0)
        self.diffusion_filters = check_int(diffusion_filters, "diffusion_filters", minimum=1)
        self.diffusion_layers = check_int(diffusion_layers, "diffusion_layers", minimum=2)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2 or \
                not isinstance(input_shape[0], (list, tuple)):
            raise ValueError(
                "`BranchedGenerator` is called on [images, target_classes]. "
                f"Received: input_shape={input_shape!r}"
            )
        shape = _image_shape(input_shape[0], "BranchedGenerator")
        _, height, width, channels = shape
        n = self.num_branches
        downsamples = self.num_downsamples or default_downsamples(min(height, width), 4)
        _check_downsamples(downsamples, height, width, "num_downsamples")
        self._downsamples = downsamples
        self._channels = channels

        if self.smoothing == "gaussian":
            self.smoother = GaussianBlur(self.smoothing_sigma, dtype=self.dtype_policy, name="smoothing")
        else:
            self.smoother = LearnedDiffusion(
                n, dt=self.diffusion_dt, filters=self.diffusion_filters,
                num_layers=self.diffusion_layers, kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy, name="diffusion",
            )
        self.smoother.build(shape)
        self.class_embedding = self.add_weight(
            name="class_embedding", shape=(self.num_classes, n * self.style_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        init = self.kernel_initializer
        self.from_rgb = _conv(self.dim_in * n, 3, n, init, name="from_rgb", dtype=self.dtype_policy)
        self.from_rgb.build((None, height, width, channels * n))
        self.encoder, decoder = [], []
        dim, h, w = self.dim_in, height, width
        for i in range(downsamples):
            out = min(dim * 2, self.max_dim)
            block = _ResBlock(dim, out, n, normalize=True, downsample=True, kernel_initializer=init,
                              dtype=self.dtype_policy, name=f"encode{i + 1}")
            block.build((None, h, w, dim * n))
            h, w = h // 2, w // 2
            up = _AdaINResBlock(out, dim, n, self.style_dim, upsample=True, kernel_initializer=init,
                                dtype=self.dtype_policy, name=f"decode_up{i + 1}")
            up.build((None, h, w, out * n))
            self.encoder.append(block)
            decoder.insert(0, up)
            dim = out
        for i in range(2):
            block = _ResBlock(dim, dim, n, normalize=True, kernel_initializer=init, dtype=self.dtype_policy,
                              name=f"bottleneck{i + 1}")
            block.build((None, h, w, dim * n))
            mid = _AdaINResBlock(dim, dim, n, self.style_dim, kernel_initializer=init,
                                 dtype=self.dtype_policy, name=f"decode_bottleneck{i + 1}")
            mid.build((None, h, w, dim * n))
            self.encoder.append(block)
            decoder.insert(0, mid)
        self.decoder = decoder
        self.to_rgb_norm = _InstanceNorm(name="to_rgb_norm", dtype=self.dtype_policy)
        self.to_rgb_norm.build((None, height, width, self.dim_in * n))
        self.to_rgb = _conv(channels * n, 1, n, self.output_initializer, name="to_rgb", dtype=self.dtype_policy)
        self.to_rgb.build((None, height, width, self.dim_in * n))

    @property
    def input_dtype(self):
        return upcast_dtype(self.compute_dtype)  # the images (classes are integers: never cast)

    def branch_inputs(self, images):
        """``(x_i stacked [batch, N, H, W, C], S(x))``: what each branch reads, and the smoothing."""
        x = ops.convert_to_tensor(images)
        if self.smoothing == "gaussian":
            smooth = self.smoother(x)
            inputs = ops.repeat(ops.expand_dims(x, 1), self.num_branches, axis=1)
        else:
            inputs, smooth = self.smoother.decompose(x)
        return inputs, smooth

    def call(self, inputs, return_branches=False):
        images, classes = inputs
        n, c = self.num_branches, self._channels
        x_i, smooth = self.branch_inputs(images)
        height, width = x_i.shape[2], x_i.shape[3]
        # [batch, N, H, W, C] -> [batch, H, W, N * C]: branch-major channels, as the groups expect
        x = ops.reshape(ops.transpose(x_i, (0, 2, 3, 1, 4)), (-1, height, width, n * c))
        classes = ops.reshape(ops.cast(classes, "int32"), (-1,))
        style = ops.reshape(ops.take(self.class_embedding, classes, axis=0), (-1, n, self.style_dim))
        h = self.from_rgb(x)
        for block in self.encoder:
            h = block(h)
        for block in self.decoder:
            h = block(h, style)
        h = ops.cast(self.to_rgb(_leaky(self.to_rgb_norm(h))), smooth.dtype)
        branches = ops.transpose(ops.reshape(h, (-1, height, width, n, c)), (0, 3, 1, 2, 4))
        image = ops.sum(branches, axis=1) + smooth
        if return_branches:
            return {"image": image, "branches": branches, "smooth": smooth}
        return image

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_branches": self.num_branches,
            "num_classes": self.num_classes,
            "dim_in": self.dim_in,
            "max_dim": self.max_dim,
            "style_dim": self.style_dim,
            "num_downsamples": self.num_downsamples,
            "smoothing": self.smoothing,
            "smoothing_sigma": self.smoothing_sigma,
            "diffusion_dt": self.diffusion_dt,
            "diffusion_filters": self.diffusion_filters,
            "diffusion_layers": self.diffusion_layers,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_initializer": keras.initializers.serialize(self.output_initializer),
        })
        return config


def find_generator(model):
    """The `BranchedGenerator` layer inside `model` (a GAN, a generator model or the layer itself).

    Example:

    >>> layer = BranchedGenerator(2, 2, dim_in=4, max_dim=8)
    >>> find_generator(layer) is layer
    True
    """
    if isinstance(model, BranchedGenerator):
        return model
    found = [l for l in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(l, BranchedGenerator)] if hasattr(model, "_flatten_layers") else []
    if not found:
        raise ValueError(
            "`model` must hold a branchzoo.layers.BranchedGenerator (e.g. a BranchedGAN). "
            f"Received: {getattr(model, 'name', model)!r} ({type(model).__name__}), which has none."
        )
    return found[0]


@keras.saving.register_keras_serializable(package="branchzoo")
class MultiDomainDiscriminator(keras.layers.Layer):
    """StarGAN v2's multi-domain discriminator: one real/fake logit per class.

    After Brokman & Gilboa (2022), Sec. 7 (the discriminator of StarGAN v2,
    Choi et al. 2020): ``from_rgb`` 3x3 conv, ``num_downsamples`` residual
    blocks (no normalisation, average-pool downsampling, widths doubling from
    ``dim_in`` up to ``max_dim``), LeakyReLU(0.2), a conv whose kernel covers
    the remaining map (4x4 at StarGAN v2's sizes) to 1x1, LeakyReLU(0.2), a
    1x1 conv to ``num_classes`` logits. An image is judged as a member of
    class k by logit k (the GAN picks the logit of the image's class).

    Args:
        num_classes: number of classes (one logit each).
        dim_in: channels after ``from_rgb``.
        max_dim: largest channel count.
        num_downsamples: default StarGAN v2's ``log2(image size) - 2``
            (down to 4x4), at least 1.
        kernel_initializer: initializer of every convolution.

    Returns:
        Logits ``[batch, num_classes]``.

    Example:

    >>> import numpy as np
    >>> disc = MultiDomainDiscriminator(num_classes=3, dim_in=4, max_dim=16)
    >>> tuple(disc(np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 3)
    """

    def __init__(self, num_classes, dim_in=16, max_dim=128, num_downsamples=None,
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.dim_in = check_int(dim_in, "dim_in", minimum=1)
        self.max_dim = check_int(max_dim, "max_dim", minimum=1)
        if self.max_dim < self.dim_in:
            raise ValueError(
                f"`max_dim` must be >= `dim_in` ({self.dim_in}). Received: max_dim={self.max_dim}"
            )
        self.num_downsamples = (None if num_downsamples is None
                                else check_int(num_downsamples, "num_downsamples", minimum=1))
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        shape = _image_shape(input_shape, "MultiDomainDiscriminator")
        _, height, width, channels = shape
        downsamples = self.num_downsamples or default_downsamples(min(height, width), 2)
        _check_downsamples(downsamples, height, width, "num_downsamples")
        init = self.kernel_initializer
        self.from_rgb = _conv(self.dim_in, 3, 1, init, name="from_rgb", dtype=self.dtype_policy)
        self.from_rgb.build(shape)
        self.blocks = []
        dim, h, w = self.dim_in, height, width
        for i in range(downsamples):
            out = min(dim * 2, self.max_dim)
            block = _ResBlock(dim, out, 1, downsample=True, kernel_initializer=init, dtype=self.dtype_policy,
                              name=f"block{i + 1}")
            block.build((None, h, w, dim))
            self.blocks.append(block)
            dim, h, w = out, h // 2, w // 2
        self.to_vector = _conv(dim, (h, w), 1, init, padding="valid", name="to_vector", dtype=self.dtype_policy)
        self.to_vector.build((None, h, w, dim))
        # the logits in float32 under a mixed policy (the adversarial losses read them)
        self.to_logits = _conv(self.num_classes, 1, 1, init, name="to_logits", dtype=head_policy(self.dtype_policy))
        self.to_logits.build((None, 1, 1, dim))

    def call(self, images):
        h = self.from_rgb(images)
        for block in self.blocks:
            h = block(h)
        h = self.to_logits(_leaky(self.to_vector(_leaky(h))))
        return ops.reshape(h, (-1, self.num_classes))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "dim_in": self.dim_in,
            "max_dim": self.max_dim,
            "num_downsamples": self.num_downsamples,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
