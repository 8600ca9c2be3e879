"""Synthetic datasets: generated from a seed and parameters, no files.

A synthetic dataset is a registered generator ``generator(split, rng,
**params) -> (inputs [N, d], targets [N, t])`` plus its parameters' defaults;
`register_synthetic` makes it a dataset like any other (`load_dataset`,
`dataset_info`, `load_arrays`), served as float32 ``(inputs, targets)``
batches, neither normalised nor augmented. `synthetic_arrays` returns the
generator's float64 arrays directly, for vectorised NumPy experiments.

The two 1-D toy problems of Brokman & Gilboa (2022), Sec. 4.1 (a sum of
scalar branches ``f_i(x) = LeakyReLU(w_i x + b_i)`` trained with a square
loss) are registered here. The extracted text lost the training sets'
numbers; what it keeps: toy 1 "is somewhat similar to a one-dimensional XOR
problem" (a linear model cannot solve it), a balanced set of two classes
whose target values avoid 0 ("0 has a special role of null contribution in a
sum"); toy 2 is a regression. Our choices, both parameters:

- ``toy_xor1d``: inputs ``x = (-2, -1, 1, 2)``, the outer points one class
  (target 2), the inner points the other (target 1): a V that no line fits,
  two classes of two points, no target 0. There is no held-out data in the
  paper (success is the training loss falling below a threshold): the test
  split is the training set.
- ``toy_regression1d``: ``y = sin(pi x)`` on ``num_points`` (21) evenly spaced
  ``x`` in [-1, 1]; test: the midpoints between them. With
  ``sampling="uniform"``, ``x`` is drawn uniformly from the seed instead (test:
  a separate draw), and ``noise`` adds Gaussian noise to the train targets.

Example:
    >>> from branchzoo.data import synthetic_arrays
    >>> x, y = synthetic_arrays("toy_xor1d")
    >>> x[:, 0].tolist(), y[:, 0].tolist()
    ([-2.0, -1.0, 1.0, 2.0], [2.0, 1.0, 1.0, 2.0])
"""

import numbers

import numpy as np

from branchzoo.data.specs import DatasetSpec, get_spec, register_dataset

SPLITS = ("train", "test")
PAPER_000 = "000_a8fb4f73aa903839.txt, Sec. 4.1"


def register_synthetic(name, generator, params=None, check_params=None, description="",
                       reference="", overwrite=False):
    """Registers a generated dataset.

    Args:
        name: the dataset name.
        generator: ``(split, rng, **params) -> (inputs, targets)``, arrays of
            shape [N, d] and [N, t] (1-D arrays are read as [N, 1]); `rng` is
            a NumPy Generator seeded by ``(data_seed, split)``.
        params: the generator's parameters and their defaults; ``data_seed``
            (default 0) is added.
        check_params: optional ``(params) -> params`` validation (raise
            ValueError naming the parameter).
        description: one line.
        reference: the paper and section the problem comes from.
        overwrite: replace a dataset of the same name.

    Returns:
        The registered `DatasetSpec` (kind ``"synthetic"``).

    Example:
        >>> import numpy as np
        >>> def line(split, rng, num_points):
        ...     x = rng.uniform(-1, 1, num_points)
        ...     return x, 3 * x
        >>> _ = register_synthetic("my_line", line, {"num_points": 8}, overwrite=True)
        >>> synthetic_arrays("my_line", num_points=5)[0].shape
        (5, 1)
    """
    defaults = {"data_seed": 0, **(params or {})}

    def check(values):
        values = dict(values)
        seed = values["data_seed"]
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"`data_seed` must be an int >= 0. Received: data_seed={seed!r}")
        return check_params(values) if check_params is not None else values

    def read(values):
        inputs, targets = {}, {}
        for split in SPLITS:
            inputs[split], targets[split] = _generate(name, generator, split, values)
        return inputs, targets, ()

    spec = DatasetSpec(
        name=name, kind="synthetic", reader=read, params=defaults, check_params=check,
        description=description, reference=reference,
    )
    return register_dataset(spec, overwrite=overwrite)


def _generate(name, generator, split, values):
    params = {k: v for k, v in values.items() if k != "data_seed"}
    rng = np.random.default_rng([int(values["data_seed"]), SPLITS.index(split)])
    inputs, targets = generator(split, rng, **params)
    arrays = []
    for what, array in (("inputs", inputs), ("targets", targets)):
        array = np.asarray(array, dtype=np.float64)
        array = array[:, None] if array.ndim == 1 else array
        if array.ndim != 2:
            raise ValueError(
                f"The generator of '{name}' must return {what} of shape [N] or [N, d]. "
                f"Received: {array.shape}"
            )
        arrays.append(array)
    if len(arrays[0]) != len(arrays[1]) or not len(arrays[0]):
        raise ValueError(
            f"The generator of '{name}' must return as many inputs as targets, at least one. "
            f"Received: {len(arrays[0])} inputs, {len(arrays[1])} targets"
        )
    return arrays[0], arrays[1]


def synthetic_arrays(name, split="train", **params):
    """The generated float64 arrays of a synthetic dataset's split.

    Args:
        name: a synthetic dataset (``toy_xor1d``, ``toy_regression1d``, or one
            added with `register_synthetic`).
        split: ``"train"`` or ``"test"``.
        **params: the dataset's parameters (``data_seed`` and the generator's).

    Returns:
        ``(inputs float64 [N, d], targets float64 [N, t])``.
    """
    from branchzoo.data.loading import resolve_params

    spec = get_spec(name)
    if spec.kind != "synthetic":
        raise ValueError(
            f"`name` must be a synthetic dataset ({', '.join(_synthetic_names())}). "
            f"Received: name={name!r} (kind {spec.kind!r})"
        )
    if split not in SPLITS:
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    inputs, targets, _ = spec.reader(resolve_params(spec, params))
    return inputs[split], targets[split]


def _synthetic_names():
    from branchzoo.data.specs import list_datasets

    return list_datasets("synthetic")


# --- the toy problems of Brokman & Gilboa (2022), Sec. 4.1 --------------------------


def _float_tuple(value, name, length=None):
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = None
    if values is None or (length is not None and len(values) != length) or not values \
            or not all(np.isfinite(values)):
        size = f"{length} " if length is not None else ""
        raise ValueError(
            f"`{name}` must be a non-empty sequence of {size}finite numbers. "
            f"Received: {name}={value!r}"
        )
    return values


def _check_xor(params):
    params["inputs"] = _float_tuple(params["inputs"], "inputs")
    if len(params["inputs"]) % 2 or len(params["inputs"]) < 4:
        raise ValueError(
            "`inputs` must hold an even number (>= 4) of points: the outer half is one class, "
            f"the inner half the other. Received: inputs={params['inputs']!r}"
        )
    magnitudes = np.sort(np.abs(params["inputs"]))
    half = len(magnitudes) // 2
    if magnitudes[half - 1] == magnitudes[half]:
        raise ValueError(
            "`inputs` must split by |x| into an inner and an outer half: no point of the inner "
            f"half may be as far from 0 as one of the outer half. Received: inputs="
            f"{params['inputs']!r}"
        )
    params["targets"] = _float_tuple(params["targets"], "targets", length=2)
    return params


def toy_xor1d(split, rng, inputs, targets):
    """Toy 1 of Brokman & Gilboa (2022), Sec. 4.1: a 1-D XOR-like two-class set.

    Args:
        split: ``"train"`` or ``"test"`` (the same set: the paper has no test data).
        rng: unused (the set is fixed).
        inputs: the points; sorted by |x|, the inner half is one class and
            the outer half the other.
        targets: (inner target, outer target); neither should be 0.

    Returns:
        ``(x [N], y [N])`` float64, in the order of `inputs`.
    """
    x = np.asarray(inputs, dtype=np.float64)
    order = np.argsort(np.abs(x), kind="stable")
    outer = np.zeros(len(x), bool)
    outer[order[len(x) // 2:]] = True
    return x, np.where(outer, targets[1], targets[0])


_FUNCTIONS = {
    "sin": lambda x: np.sin(np.pi * x),
    "square": lambda x: x * x,
    "abs": np.abs,
}


def _check_regression(params):
    n = params["num_points"]
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"`num_points` must be an int >= 2. Received: num_points={n!r}")
    if params["function"] not in _FUNCTIONS:
        raise ValueError(
            f"`function` must be one of {', '.join(_FUNCTIONS)}. "
            f"Received: function={params['function']!r}"
        )
    if params["sampling"] not in ("grid", "uniform"):
        raise ValueError(
            f"`sampling` must be 'grid' or 'uniform'. Received: sampling={params['sampling']!r}"
        )
    noise = params["noise"]
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not noise >= 0:
        raise ValueError(f"`noise` must be a number >= 0. Received: noise={noise!r}")
    params["interval"] = _float_tuple(params["interval"], "interval", length=2)
    low, high = params["interval"]
    if not low < high:
        raise ValueError(
            f"`interval` must be (low, high) with low < high. Received: interval={(low, high)!r}"
        )
    return params


def toy_regression1d(split, rng, num_points, function, interval, sampling, noise):
    """Toy 2 of Brokman & Gilboa (2022), Sec. 4.1: a 1-D regression.

    Args:
        split: ``"train"`` or ``"test"``.
        rng: NumPy Generator (uniform sampling and noise).
        num_points: train points.
        function: ``"sin"`` (sin(pi x)), ``"square"`` (x^2) or ``"abs"`` (|x|).
        interval: (low, high) of x.
        sampling: ``"grid"``: train x evenly spaced over `interval`, test x
            the midpoints between them; ``"uniform"``: x drawn uniformly
            (test: its own draw of `num_points`).
        noise: standard deviation of Gaussian noise on the train targets.

    Returns:
        ``(x [N], y [N])`` float64.
    """
    low, high = interval
    if sampling == "grid":
        grid = np.linspace(low, high, num_points)
        x = grid if split == "train" else (grid[:-1] + grid[1:]) / 2
    else:
        x = np.sort(rng.uniform(low, high, num_points))
    y = _FUNCTIONS[function](x)
    if split == "train" and noise > 0:
        y = y + rng.normal(0.0, noise, y.shape)
    return x, y


register_synthetic(
    "toy_xor1d", toy_xor1d,
    params={"inputs": (-2.0, -1.0, 1.0, 2.0), "targets": (1.0, 2.0)},
    check_params=_check_xor,
    description="1-D XOR-like toy: outer points target 2, inner points target 1",
    reference=PAPER_000,
)
register_synthetic(
    "toy_regression1d", toy_regression1d,
    params={"num_points": 21, "function": "sin", "interval": (-1.0, 1.0), "sampling": "grid",
            "noise": 0.0},
    check_params=_check_regression,
    description="1-D regression toy: y = sin(pi x) on a grid over [-1, 1]",
    reference=PAPER_000,
)
