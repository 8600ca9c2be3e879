"""Mixed precision: the dtype policies of train.py's ``--precision`` and the parts kept in float32.

Under Keras' ``mixed_bfloat16`` and ``mixed_float16`` policies every variable
is float32 and layers compute in 16 bits (Keras' mixed precision guide;
``mixed_float16`` trains with loss scaling, which ``Model.compile`` adds).
branchzoo's layers follow the policy except where 16 bits would spoil the
result, which stays float32 whatever the policy: every model output
(classifier heads, ensemble logits, the generator's images), the gates of
`GatedConnect` with their top-K and Gumbel-top-k draw, batch and instance
normalisation statistics, `BranchSum`'s sum and clamp, the generator's
smoothing and the sum ``branches + S(x)``, the losses, and the features
analyses read. Nothing here imports TensorFlow.

    >>> import keras
    >>> with dtype_policy("mixed_bfloat16"):
    ...     keras.config.dtype_policy().name
    'mixed_bfloat16'
    >>> keras.config.dtype_policy().name
    'float32'
"""

import contextlib

import keras
import numpy as np
from keras import ops

# train.py's --precision and a recipe's "precision"; float32 is the default.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DEFAULT = "float32"
_HALF = ("float16", "bfloat16")


def check_precision(precision, name="precision"):
    """Returns `precision` if it is one of `PRECISIONS`, else raises ValueError naming `name`."""
    if precision not in PRECISIONS:
        raise ValueError(f"`{name}` must be one of {PRECISIONS}. Received: {name}={precision!r}")
    return precision


# Unit roundoff of each compute dtype (half the spacing of the floats in [1, 2)).
UNIT_ROUNDOFF = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def relative_tolerance(precision):
    """How far outputs under `precision` may drift from float32's, relative to their size.

    Eight unit roundoffs of the compute dtype: every layer rounds its
    output once (relative error at most u), and through up to 64 such
    stages independent rounding errors grow like a random walk,
    ``sqrt(64) * u``. That is 2^-5 (3.1%) for ``mixed_bfloat16`` and 2^-8
    (0.4%) for ``mixed_float16``; 0 for ``float32``, whose outputs are the
    reference. The zoo's CPU-sized models stayed within 6 u (bfloat16,
    RMS of the difference over RMS of the float32 output).

    >>> relative_tolerance("mixed_bfloat16")
    0.03125
    """
    check_precision(precision)
    if precision == DEFAULT:
        return 0.0
    return 8 * UNIT_ROUNDOFF[keras.dtype_policies.get(precision).compute_dtype]


@contextlib.contextmanager
def dtype_policy(precision):
    """Keras' global dtype policy set to `precision` inside the block, the previous one restored after it.

    Layers take the global policy when they are created, so a model built
    inside the block keeps its policy after it; nothing built later
    (another test, another model) inherits it.

    Args:
        precision: one of `PRECISIONS`.
    """
    check_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def is_mixed(policy=None):
    """Whether `policy` (default: the global one) computes in 16 bits with float32 variables."""
    policy = keras.config.dtype_policy() if policy is None else keras.dtype_policies.get(policy)
    return policy.compute_dtype in _HALF and policy.variable_dtype != policy.compute_dtype


def head_policy(policy=None):
    """The dtype of a layer that must compute and output in float32 under a mixed policy.

    Returns ``"float32"`` when `policy` (default: the global policy) is
    mixed, else `policy` itself (None for the global one): passed as a
    layer's ``dtype``, it changes nothing outside mixed precision, and never
    a variable's name, shape or order.
    """
    return "float32" if is_mixed(policy) else policy


def upcast_dtype(dtype):
    """``"float32"`` for float16 / bfloat16, else `dtype` (float64 stays float64)."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in _HALF else dtype


def upcast(x):
    """`x` as a tensor of at least 32-bit floats: float16 / bfloat16 become float32, the rest is unchanged."""
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    return ops.cast(x, "float32") if dtype in _HALF else x


def to_numpy(x):
    """`x` as a NumPy array, 16-bit floats (float16, bfloat16) widened to float32: what analyses compute on."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype.name in _HALF else x


def model_precision(model):
    """The `PRECISIONS` name a built model computes in: the 16-bit type of any of its layers, else float32."""
    computes = {layer.dtype_policy.compute_dtype
                for layer in model._flatten_layers(include_self=True, recursive=True)}
    if "float16" in computes:
        return "mixed_float16"
    if "bfloat16" in computes:
        return "mixed_bfloat16"
    return DEFAULT
