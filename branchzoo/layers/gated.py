"""GatedConnect: the learned connections between two multi-branch modules.

After Ahmed & Torresani (2017), Eq. 1, Sec. 2.2 and Algorithm 1, with the
choices of its reference code where the paper is silent (docs/papers.md).

Block ``j`` of module ``i`` reads ``K`` (the fan-in) of the ``C`` block
outputs of module ``i - 1``, chosen by a binary gate row ``g_j`` with
``sum(g_j) = K``. The binary gates come from real-valued gates kept in
``[0, 1]``:

- training: ``K`` DISTINCT indices drawn from the normalised gate row
  (successive sampling without replacement, done exactly by the Gumbel-top-k
  trick), straight-through gradient from the binary gates to the real ones;
- inference, and ``frozen=True`` (the fine-tuning phase): the top ``K`` real
  gates of each row.

The plain functions `sample_gates` and `top_k_gates` are the two rules, usable
on their own. Both rank in float32 (at least) whatever the dtype policy: a
16-bit gate row would tie gates that float32 tells apart.
"""

import keras
import numpy as np
from keras import ops

from branchzoo._validation import check_int
from branchzoo.precision import upcast

CONNECTIVITIES = ("learned", "full", "random")

# Gates clipped to exactly 0 are floored before the log: never drawn while K
# positive gates remain, drawn uniformly among themselves when they must be.
_GATE_FLOOR = 1e-12
# Uniform noise kept away from 0 and 1 so the Gumbel transform stays finite.
_UNIFORM_EPS = 1e-7


def top_k_gates(gates, fan_in):
    """Binary gates: 1 at the ``fan_in`` largest entries of each row (deterministic).

    Ties go to the lower index (``keras.ops.top_k``). float16 / bfloat16
    gates are ranked as float32.

    Args:
        gates: real gates ``[..., C]``.
        fan_in: K, ones per row (1 <= K <= C).

    Returns:
        A float tensor (float32 for 16-bit gates, else the gates' dtype) with
        exactly ``fan_in`` ones per row.

    Example:

    >>> import numpy as np
    >>> np.asarray(top_k_gates(np.array([[0.1, 0.9, 0.5]], "float32"), 2)).tolist()
    [[0.0, 1.0, 1.0]]
    """
    gates = upcast(gates)
    _, indices = ops.top_k(gates, fan_in)
    return ops.sum(ops.one_hot(indices, gates.shape[-1], dtype=gates.dtype), axis=-2)


def sample_gates(gates, fan_in, seed=None):
    """Binary gates with ``fan_in`` DISTINCT ones per row, drawn from the normalised row.

    Successive sampling without replacement from ``p = g / sum(g)``: the first
    index with probability ``p_a``, the next among the rest with ``p_b / (1 -
    p_a)``, and so on (Algorithm 1 of Ahmed & Torresani 2017). The
    Gumbel-top-k trick draws exactly this: the ``K`` largest of ``log g_k +
    Gumbel noise`` (the normalising constant shifts a row and cannot change
    its order, so rows need not be normalised).

    The noise, the logarithms and the ranking are float32 (float64 for
    float64 gates) whatever the dtype policy.

    Args:
        gates: non-negative real gates ``[..., C]``; every row is one
            distribution.
        fan_in: K, distinct indices per row (1 <= K <= C).
        seed: a ``keras.random.SeedGenerator``, an int or None.

    Returns:
        A float tensor (float32 for 16-bit gates, else the gates' dtype)
        holding exactly ``fan_in`` ones per row.

    Example:

    >>> import numpy as np
    >>> g = sample_gates(np.full((3, 5), 0.5, "float32"), 2, seed=0)
    >>> np.asarray(g).sum(axis=-1).tolist()
    [2.0, 2.0, 2.0]
    """
    gates = upcast(gates)
    u = keras.random.uniform(ops.shape(gates), seed=seed, dtype=gates.dtype)
    u = ops.clip(u, _UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
    scores = ops.log(ops.maximum(gates, _GATE_FLOOR)) - ops.log(-ops.log(u))
    return top_k_gates(scores, fan_in)


def random_connectivity(cardinality, num_inputs, fan_in, seed):
    """A fixed binary gate matrix ``[cardinality, num_inputs]``: ``fan_in`` random ones per row.

    Each row is an independent uniform draw of ``fan_in`` distinct inputs
    (NumPy's generator seeded with `seed`): the Fixed-Random baseline of
    Ahmed & Torresani (2017), Table 1.
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros((cardinality, num_inputs), "float32")
    for j in range(cardinality):
        mask[j, rng.choice(num_inputs, size=fan_in, replace=False)] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="branchzoo")
class UnitInterval(keras.constraints.Constraint):
    """Clips a weight into ``[0, 1]`` after every optimizer update (the real-valued gates)."""

    def __call__(self, w):
        return ops.clip(w, 0.0, 1.0)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="branchzoo")
class GatedConnect(keras.layers.Layer):
    """The gated connection between two multi-branch modules (GateConnect).

    After Ahmed & Torresani (2017), Eq. 1, Sec. 2.2 and Algorithm 1.

    Input: the ``num_inputs`` block outputs of the previous module, side by
    side along the last axis (grouped channel layout ``[..., num_inputs * F]``,
    block ``k`` in channels ``k*F .. (k+1)*F - 1``). Output: the
    ``cardinality`` inputs of the next module's blocks in the same layout
    (``[..., cardinality * F]``), so the next module's grouped convolutions
    (groups = cardinality) consume it directly. Block ``j`` receives

        x_j = (1 / K) * sum_k g_jk * y_k,    g_j binary, sum_k g_jk = K,

    the MEAN of the ``K`` outputs its gate row selects, not the raw sum of
    Eq. 1: the blocks are residual (``y = x + F(x)``), so a sum would multiply
    the identity path by ``K`` at every module (``8^9`` over the nine modules
    of a Fixed-Full ResNeXt-29). With the mean, ``K = C`` (Fixed-Full) is
    ResNeXt with its residual branch scaled by ``1 / C``.

    Connectivity:

    - ``"learned"``: real-valued gates ``[cardinality, num_inputs]`` (trainable,
      clipped into [0, 1] by `UnitInterval` after each update). Training:
      ``K`` distinct inputs per block drawn from the normalised gate row
      (`sample_gates`), binary gates forward, straight-through gradient to
      the real gates: ``dL/dg_jk = <dL/dx_j, y_k>``, the gradient of Eq. 1's
      sum with respect to the binary gate (the 1/K of the mean is not
      passed on, so gates learn at the same rate for every K). Algorithm 1
      updates them by a plain step ``g <- clip(g - eta dL/dg)``: train them
      with ``plain_step={"*_gate/gates": eta}`` of `branchzoo.optimizers`
      (the zoo recipes do), not with the weights' momentum and decay.
      Inference, or ``frozen=True``: deterministic top-K (`top_k_gates`);
      frozen gates are not trainable and get no gradient.
    - ``"full"``: every block reads every input (``fan_in`` must equal
      ``num_inputs``); Fixed-Full, i.e. ResNeXt.
    - ``"random"``: ``K`` inputs per block drawn once from `seed` at build
      time (Fixed-Random); never trained.

    The gate matrix is a weight (``gates``) in every mode, so a ``.keras``
    file or SavedModel carries the connectivity. Under a mixed dtype policy
    the real gates are read as float32 (not autocast to the compute dtype),
    and are sampled and ranked in float32; only the mixing of the blocks
    runs in the compute dtype, with the binary gates (0 or 1) and ``1/K``
    as multipliers.

    Args:
        cardinality: C, number of blocks fed (rows of the gate matrix).
        fan_in: K, inputs per block, ``1 <= K <= num_inputs``.
        connectivity: ``"learned"`` (default), ``"full"`` or ``"random"``.
        seed: int or None. ``"learned"``: seeds the sampling noise.
            ``"random"``: seeds the fixed connections (None draws one, kept
            in the config so a rebuilt layer has the same connections).
        frozen: ``"learned"`` only: use the top-K gates in training too and
            stop training the gates (the fine-tuning phase). Settable on a
            built layer (``layer.frozen = True``); recompile afterwards.
        num_inputs: number of blocks of the previous module (columns of the
            gate matrix); default `cardinality`. Pruned models use fewer.
        gate_initializer: initializer of the learned gates (default
            ``Constant(0.5)``: every connection equally likely; the paper
            does not state its initialisation).

    Returns:
        ``[..., cardinality * F]`` for inputs ``[..., num_inputs * F]``.

    Example:

    >>> import numpy as np
    >>> gate = GatedConnect(cardinality=4, fan_in=2, seed=0)
    >>> y = np.random.default_rng(0).standard_normal((2, 8, 8, 4 * 16)).astype("float32")
    >>> tuple(gate(y).shape)
    (2, 8, 8, 64)
    >>> gate.binary_gates().sum(axis=1).tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(
        self,
        cardinality,
        fan_in,
        connectivity="learned",
        seed=None,
        frozen=False,
        num_inputs=None,
        gate_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.cardinality = check_int(cardinality, "cardinality", minimum=1)
        if num_inputs is None:
            self.num_inputs, inputs_name = self.cardinality, "cardinality"
        else:
            self.num_inputs = check_int(num_inputs, "num_inputs", minimum=1)
            inputs_name = "num_inputs"
        fan_in = check_int(fan_in, "fan_in")
        if not 1 <= fan_in <= self.num_inputs:
            raise ValueError(
                f"`fan_in` must be between 1 and `{inputs_name}` ({self.num_inputs}). "
                f"Received: fan_in={fan_in}"
            )
        self.fan_in = fan_in
        if connectivity not in CONNECTIVITIES:
            raise ValueError(
                f"`connectivity` must be one of {CONNECTIVITIES}. Received: connectivity={connectivity!r}"
            )
        if connectivity == "full" and fan_in != self.num_inputs:
            raise ValueError(
                f'`fan_in` must equal `{inputs_name}` ({self.num_inputs}) with connectivity="full" '
                f"(every block reads every input). Received: fan_in={fan_in}"
            )
        self.connectivity = connectivity
        if seed is not None:
            seed = check_int(seed, "seed", minimum=0)
        elif connectivity == "random":
            seed = int(np.random.SeedSequence().entropy % (2**31))
        self.seed = seed
        if not isinstance(frozen, (bool, np.bool_)):
            raise ValueError(f"`frozen` must be True or False. Received: frozen={frozen!r}")
        self._frozen = bool(frozen)
        self.gate_initializer = keras.initializers.get(
            gate_initializer if gate_initializer is not None else keras.initializers.Constant(0.5)
        )
        self.gates = None

    @property
    def frozen(self):
        """Whether the connections are fixed to the top-K gates (fine-tuning phase)."""
        return self._frozen

    @frozen.setter
    def frozen(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"`frozen` must be True or False. Received: frozen={value!r}")
        self._frozen = bool(value)
        if self.gates is not None:
            self.gates.trainable = self._gates_trainable()

    def _gates_trainable(self):
        return self.connectivity == "learned" and not self._frozen

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.num_inputs:
            raise ValueError(
                f"The last axis of the inputs must hold `num_inputs` ({self.num_inputs}) blocks of "
                f"equal width. Received: input_shape={tuple(input_shape)}"
            )
        self.block_width = channels // self.num_inputs
        shape = (self.cardinality, self.num_inputs)
        if self.connectivity == "learned":
            # created trainable (a fixed place in the saved variable order), then frozen if asked
            self.gates = self.add_weight(
                name="gates", shape=shape, initializer=self.gate_initializer,
                constraint=UnitInterval(), trainable=True, autocast=False,
            )
            self.gates.trainable = self._gates_trainable()
            self.seed_generator = keras.random.SeedGenerator(self.seed)
        else:
            if self.connectivity == "full":
                value = np.ones(shape, "float32")
            else:
                value = random_connectivity(self.cardinality, self.num_inputs, self.fan_in, self.seed)
            self.gates = self.add_weight(
                name="gates", shape=shape, initializer=lambda shape, dtype=None: ops.cast(value, dtype),
                trainable=False, autocast=False,
            )

    def connection_gates(self, training=False):
        """The binary gates ``[cardinality, num_inputs]`` this call would use.

        Sampled (with the straight-through gradient to the real gates) for a
        learned, unfrozen layer in training; otherwise deterministic. In the
        gates' dtype (float32 under any mixed policy).
        """
        if self.connectivity != "learned":
            return ops.convert_to_tensor(self.gates)
        if training and not self._frozen:
            real = ops.convert_to_tensor(self.gates)
            binary = sample_gates(ops.stop_gradient(real), self.fan_in, seed=self.seed_generator)
            # `call` scales the gates by 1/K (the mean); the straight-through term is scaled by
            # K so that dL/dg is Eq. 1's gradient w.r.t. the binary gate, whatever K is.
            return binary + (real - ops.stop_gradient(real)) * float(self.fan_in)
        return top_k_gates(ops.stop_gradient(ops.convert_to_tensor(self.gates)), self.fan_in)

    def call(self, inputs, training=None):
        gates = ops.cast(self.connection_gates(training=bool(training)), inputs.dtype)
        shape = ops.shape(inputs)
        blocks = ops.reshape(inputs, (-1, self.num_inputs, self.block_width))
        # [C, Cin] @ [N, Cin, F]: a broadcast batched matmul, 2-4x faster on CPU than the einsum
        mixed = ops.matmul(gates * (1.0 / self.fan_in), blocks)
        return ops.reshape(mixed, tuple(shape[:-1]) + (self.cardinality * self.block_width,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.cardinality * (input_shape[-1] // self.num_inputs),)

    def binary_gates(self):
        """The inference-time connections as a NumPy array ``[cardinality, num_inputs]`` of 0/1."""
        return np.asarray(ops.convert_to_numpy(self.connection_gates(training=False)), "float32")

    def gate_values(self):
        """The real-valued gates as a NumPy array ``[cardinality, num_inputs]``."""
        return np.asarray(ops.convert_to_numpy(self.gates), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cardinality": self.cardinality,
                "fan_in": self.fan_in,
                "connectivity": self.connectivity,
                "seed": self.seed,
                "frozen": self._frozen,
                "num_inputs": self.num_inputs,
                "gate_initializer": keras.initializers.serialize(self.gate_initializer),
            }
        )
        return config
