"""BranchSum: the output of N branches of one architecture is their sum.

After Brokman & Gilboa (2022), Eq. (1): ``y(x) = sum_i f_i(x; theta_i)``, the
branches identical in architecture and independently initialised (Sec. 3);
optionally ``+ S(x)``, a pass-through term (the over-smoothed input of the
class-transfer generator, Sec. 7 and App. E, Eq. 15); optionally clamped
(the CIFAR-10 classifier clamps its summed logits, Sec. 6).

Design: the branches are never N Keras models called in a Python loop. A
builder lays the N branches side by side, branch-major along the channels,
and runs them together:

- a layer reading the shared input is one ordinary layer N times wider
  (``Conv2D(N * w)`` on the image is N independent ``Conv2D(w)``);
- a layer inside the branches is a `GroupedConv2D` with ``groups=N``;
  `BatchNormalization` over the ``N * w`` channels is N per-branch BNs;
  element-wise operations (ReLU, residual additions, pooling) need nothing;
- the per-branch heads are a `BatchedDense` on ``[batch, N, features]``.

`BranchSum` is the last layer: it reduces the per-branch outputs ``[batch, N,
...]`` to their sum (plus the pass-through term, then the clamp) and, with
``return_branches=True``, also hands back the per-branch outputs, which is
where every specialization analysis looks (`branchzoo.analysis.specialization`).
A model built this way equals the sum of N separately built single-branch
models holding the corresponding weight slices (tests/test_branch_sum.py).
"""

import numbers

import keras
from keras import ops

from branchzoo._validation import check_int
from branchzoo.precision import upcast_dtype


def normalize_clamp(logit_clamp, name="logit_clamp"):
    """``None``, ``c`` (meaning ``[-c, c]``) or ``(low, high)`` as None or a ``[low, high]`` list."""
    if logit_clamp is None:
        return None
    if isinstance(logit_clamp, numbers.Real) and not isinstance(logit_clamp, bool):
        value = float(logit_clamp)
        if not value > 0:
            raise ValueError(
                f"`{name}` must be a positive number c (clamp to [-c, c]) or a pair (low, high). "
                f"Received: {name}={logit_clamp!r}"
            )
        return [-value, value]
    if (
        isinstance(logit_clamp, (list, tuple))
        and len(logit_clamp) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in logit_clamp)
        and float(logit_clamp[0]) < float(logit_clamp[1])
    ):
        return [float(logit_clamp[0]), float(logit_clamp[1])]
    raise ValueError(
        f"`{name}` must be None, a positive number c (clamp to [-c, c]) or a pair (low, high) "
        f"with low < high. Received: {name}={logit_clamp!r}"
    )


@keras.saving.register_keras_serializable(package="branchzoo")
class BranchSum(keras.layers.Layer):
    """Sums per-branch outputs ``[batch, N, ...]`` over the branch axis.

    After Brokman & Gilboa (2022), Eq. (1) (sum of branches), Sec. 6 (clamped
    logits) and App. E, Eq. (15) (pass-through term). The branches themselves
    are laid out N-wide by the model builder (grouped convolutions, batched
    dense heads; see the module docstring), so that all N run together.

    Args:
        num_branches: N; ``None`` (default) takes it from the inputs, an int
            is checked against them.
        logit_clamp: ``None`` (default), ``c > 0`` (clamp the sum to
            ``[-c, c]``) or ``(low, high)``. Applied after the pass-through
            term; the per-branch outputs are never clamped.
        pass_through: if True the layer takes ``[branches, pass_through]``
            and adds ``pass_through`` (shape ``[batch, ...]``) to the sum.
        return_branches: if True, return ``(output, branches)``.

    The sum and the clamp are computed in float32 whatever the dtype policy:
    under a mixed policy the per-branch outputs (and the pass-through term)
    are cast up on the way in, and every output is float32.

    Returns:
        ``[batch, ...]``, the (clamped) sum; with ``return_branches=True`` the
        pair ``(output, branches)``, ``branches`` being the ``[batch, N, ...]``
        input, whose sum over axis 1 (plus the pass-through term) is the
        output wherever the clamp is inactive.

    Example:

    >>> import numpy as np
    >>> branches = np.arange(12, dtype="float32").reshape(1, 3, 4)  # 3 branches, 4 logits
    >>> np.asarray(BranchSum()(branches)).tolist()
    [[12.0, 15.0, 18.0, 21.0]]
    >>> np.asarray(BranchSum(logit_clamp=16)(branches)).tolist()
    [[12.0, 15.0, 16.0, 16.0]]
    """

    def __init__(self, num_branches=None, logit_clamp=None, pass_through=False,
                 return_branches=False, **kwargs):
        super().__init__(**kwargs)
        self.num_branches = None if num_branches is None else check_int(num_branches, "num_branches", minimum=1)
        self.logit_clamp = normalize_clamp(logit_clamp)
        self.pass_through = bool(pass_through)
        self.return_branches = bool(return_branches)

    @property
    def input_dtype(self):
        # The sum of N logit vectors and its clamp in float32 at least (16-bit inputs are cast up).
        return upcast_dtype(self.compute_dtype)

    def _split_shapes(self, input_shape):
        if self.pass_through:
            if not (isinstance(input_shape, (list, tuple)) and len(input_shape) == 2
                    and isinstance(input_shape[0], (list, tuple))):
                raise ValueError(
                    "With `pass_through=True` BranchSum takes [branches, pass_through]. "
                    f"Received: input_shape={input_shape!r}"
                )
            return tuple(input_shape[0]), tuple(input_shape[1])
        return tuple(input_shape), None

    def build(self, input_shape):
        branches, passed = self._split_shapes(input_shape)
        if len(branches) < 2 or branches[1] is None:
            raise ValueError(
                "BranchSum needs per-branch outputs of shape [batch, num_branches, ...] with "
                f"num_branches known. Received: input_shape={branches!r}"
            )
        if self.num_branches is not None and branches[1] != self.num_branches:
            raise ValueError(
                f"The inputs' axis 1 must equal `num_branches` ({self.num_branches}). "
                f"Received: input_shape={branches!r}"
            )
        if passed is not None:
            expected = (branches[0],) + branches[2:]
            if len(passed) != len(expected) or any(
                a is not None and b is not None and a != b for a, b in zip(passed[1:], expected[1:])
            ):
                raise ValueError(
                    "The pass-through term must have the shape of one branch's output "
                    f"{expected!r}. Received: pass_through shape {passed!r}"
                )

    def call(self, inputs):
        if self.pass_through:
            branches, passed = inputs
        else:
            branches, passed = inputs, None
        output = ops.sum(branches, axis=1)
        if passed is not None:
            output = output + passed
        if self.logit_clamp is not None:
            output = ops.clip(output, self.logit_clamp[0], self.logit_clamp[1])
        if self.return_branches:
            return output, branches
        return output

    def compute_output_shape(self, input_shape):
        branches, _ = self._split_shapes(input_shape)
        output = (branches[0],) + tuple(branches[2:])
        return (output, branches) if self.return_branches else output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_branches": self.num_branches,
                "logit_clamp": self.logit_clamp,
                "pass_through": self.pass_through,
                "return_branches": self.return_branches,
            }
        )
        return config
