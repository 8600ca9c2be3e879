"""Which layers the analyses look at, where they sit, and their pooled outputs.

Shared by probes, saturation, CKA and gradient flow, for every registered
model (not only MPNets):

- `analysis_layers` lists, in forward order, every convolution output, every
  pathway sum (a `MultiPathBlock`'s ``/sum``; an ``Add`` layer, i.e. a
  residual sum) and every hidden ``Dense`` output, each labelled by pathway:
  ``"path1"``, ``"path2"``, ... inside a `MultiPathBlock`, ``"shared"`` for
  what every pathway passes through (stem, sums) in a model with pathways,
  and ``"main"`` for everything in a model without any;
- `layer_positions` places them on one depth axis so that the layers of
  parallel pathways spread over the same span of their block (the paper
  draws p_l,min and p_l,max as separate sequences, Sec. 4);
- `iterate_features` runs the model in inference mode (BatchNormalization
  does not update) and yields each batch's outputs, maps average-pooled to
  4x4 (after Richter et al. 2022, Sec. 2.2, and its reference code),
  in float32 whatever the model computes in (a mixed-precision model's
  16-bit outputs are cast up before pooling);
- `as_arrays` draws a uniform, seeded subset of examples from arrays or from
  a stream of batches (reservoir sampling: class-ordered streams are fine).
"""

import dataclasses
import fnmatch
import weakref

import keras
import numpy as np

from branchzoo._validation import check_int
from branchzoo.analysis.features import _BlockIntermediates, _first_input, feature_names
from branchzoo.layers import MultiPathBlock
from branchzoo.precision import to_numpy

OUTPUT = "<output>"
KINDS = ("conv", "sum", "dense")


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One analysed output.

    Attributes:
        name: its `feature_names` name, e.g. ``stage2_block1/path2_conv3``.
        kind: ``"conv"``, ``"sum"`` or ``"dense"``.
        pathway: ``"path1"``, ``"path2"``, ..., ``"shared"`` or ``"main"``.
        block: the `MultiPathBlock` holding it, or None.
    """

    name: str
    kind: str
    pathway: str
    block: str = None


def _conv_types():
    # GroupedConv2D subclasses Conv2D.
    return (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
            keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
            keras.layers.Conv2DTranspose)


def _dense_types():
    from branchzoo.layers import BatchedDense

    return (keras.layers.Dense, BatchedDense)


def _check_functional(model):
    try:
        inputs = model.inputs if isinstance(model, keras.Model) else None
    except (AttributeError, ValueError):  # subclassed models have no symbolic inputs
        inputs = None
    if not inputs:
        raise ValueError(
            "The analyses need a functional keras.Model (e.g. from branchzoo.build). "
            f"Received: {type(model).__name__} without symbolic inputs"
        )


def pathway_names(model):
    """``{"path1": "1:3x3", ...}`` from the model's first `MultiPathBlock`; {} without one."""
    for layer in model.layers:
        if isinstance(layer, MultiPathBlock):
            return {f"path{p}": f"{n}:{k}x{k}" for p, (n, k) in enumerate(layer.pathways, start=1)}
    return {}


def analysis_layers(model, kinds=KINDS, patterns=None, include_output_layer=False):
    """Every analysed output of `model` in forward order, labelled by pathway.

    Args:
        model: a functional `keras.Model`.
        kinds: which of ``"conv"``, ``"sum"``, ``"dense"`` to keep.
        patterns: optional fnmatch patterns on the names to keep.
        include_output_layer: also list the layer producing the model's
            output when it is a Dense/conv layer (gradient flow wants it;
            probes do not: it is the model itself).

    Returns:
        A list of `LayerInfo`.

    Example:

    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [1, 5]], blocks_per_stage=1, widths=(4, 4, 4, 4))
    >>> [(l.name, l.pathway) for l in analysis_layers(m)][:4]
    [('stem_conv', 'shared'), ('stage1_block1/path1_conv1', 'path1'), ('stage1_block1/path2_conv1', 'path2'), ('stage1_block1/sum', 'shared')]
    """
    _check_functional(model)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"`kinds` must be drawn from {KINDS}. Received: kinds={list(kinds)!r}")
    if isinstance(patterns, str):
        patterns = [patterns]
    has_pathways = any(isinstance(layer, MultiPathBlock) for layer in model.layers)
    outside = "shared" if has_pathways else "main"
    output_layers = {t._keras_history[0].name for t in model.outputs}
    convs = _conv_types()
    dense = _dense_types()
    result = []
    for layer in model.layers:
        if isinstance(layer, MultiPathBlock):
            for p, path in enumerate(layer.paths, start=1):
                for conv, _, _ in path:
                    result.append(LayerInfo(f"{layer.name}/{conv.name}", "conv", f"path{p}", layer.name))
            result.append(LayerInfo(f"{layer.name}/sum", "sum", "shared", layer.name))
        elif isinstance(layer, convs):
            if include_output_layer or layer.name not in output_layers:
                result.append(LayerInfo(layer.name, "conv", outside))
        elif isinstance(layer, keras.layers.Add):
            result.append(LayerInfo(layer.name, "sum", outside))
        elif isinstance(layer, dense) and (include_output_layer or layer.name not in output_layers):
            result.append(LayerInfo(layer.name, "dense", outside))
    result = [info for info in result if info.kind in kinds]
    if patterns:
        result = [info for info in result if any(fnmatch.fnmatch(info.name, p) for p in patterns)]
    if not result:
        raise ValueError(
            f"Model '{model.name}' has no {'/'.join(kinds)} outputs to analyse"
            f"{' matching ' + repr(list(patterns)) if patterns else ''}: the analyses look at "
            "convolution outputs, pathway or residual sums and hidden Dense layers."
        )
    return result


def select_layers(model, layers=None, kinds=KINDS, include_output_layer=False):
    """`analysis_layers` filtered by `layers`: None (all), names or fnmatch patterns."""
    infos = analysis_layers(model, kinds, include_output_layer=include_output_layer)
    if layers is None:
        return infos
    if isinstance(layers, str):
        layers = [layers]
    chosen = [info for info in infos if any(fnmatch.fnmatch(info.name, p) for p in layers)]
    if not chosen:
        raise ValueError(
            f"`layers` must name analysed outputs of model '{model.name}' (names or fnmatch "
            f"patterns). Received: layers={list(layers)!r}; available: "
            f"{[i.name for i in infos][:12]}{' ...' if len(infos) > 12 else ''}"
        )
    return chosen


def layer_positions(infos):
    """Depth coordinates for `infos` (forward order) on one axis.

    Outputs outside blocks take one step each. In a block spanning ``s``
    steps (``s`` = the most layers any of its pathways has), layer ``k`` of
    a pathway with ``n`` layers sits at ``start + k s / n``: every
    pathway's last layer lines up just before the block's sum.
    """
    positions = {}
    cursor = 0.0
    i = 0
    while i < len(infos):
        info = infos[i]
        if info.block is None:
            positions[info.name] = cursor
            cursor += 1.0
            i += 1
            continue
        j = i
        while j < len(infos) and infos[j].block == info.block:
            j += 1
        members = infos[i:j]
        counts = {}
        for m in members:
            if m.kind != "sum":
                counts[m.pathway] = counts.get(m.pathway, 0) + 1
        span = max(counts.values(), default=0)
        seen = {}
        for m in members:
            if m.kind == "sum":
                positions[m.name] = cursor + span
            else:
                seen[m.pathway] = seen.get(m.pathway, 0) + 1
                positions[m.name] = cursor - 1.0 + seen[m.pathway] * span / counts[m.pathway]
        cursor += span + 1.0
        i = j
    return positions


def curves(infos):
    """``{pathway: [names]}``: each pathway's sequence of outputs in forward order.

    Outputs labelled ``"shared"`` belong to every pathway's sequence; a
    model without pathways has one curve, ``"main"``.
    """
    pathways = []
    for info in infos:
        if info.pathway not in ("shared", "main") and info.pathway not in pathways:
            pathways.append(info.pathway)
    if not pathways:
        return {"main": [info.name for info in infos]}
    return {
        p: [info.name for info in infos if info.pathway in (p, "shared", "main")]
        for p in sorted(pathways, key=lambda s: int(s[4:]) if s[4:].isdigit() else s)
    }


def _symbolic(model, names):
    """``{name: symbolic tensor}`` for `names` (see `feature_names`).

    A block's ``/sum`` is the block's own output; only blocks whose inner
    outputs are asked for get a second, intermediates-returning call (which
    runs the block again), so extracting sums costs no extra compute.
    """
    out, inner = {}, {}
    for name in names:
        try:
            if "/" in name:
                block, key = name.split("/", 1)
                layer = model.get_layer(block)
                if not isinstance(layer, MultiPathBlock):
                    raise ValueError(name)
                if key == "sum":
                    out[name] = layer.output
                    continue
                if block not in inner:
                    inner[block] = _BlockIntermediates(layer)(_first_input(layer))
                out[name] = inner[block][key]
            else:
                out[name] = model.get_layer(name).output
        except (ValueError, KeyError):
            raise ValueError(
                f"Unknown feature name {name!r} in model '{model.name}'; see "
                f"branchzoo.analysis.feature_names(model): {feature_names(model)[:12]} ..."
            ) from None
    return out


def feature_sizes(model, infos, pool_size=4):
    """Flattened size of each output after pooling (``pool_size`` per unknown spatial side)."""
    symbolic = _symbolic(model, [info.name for info in infos])

    def side(d):
        if not pool_size:
            return d or 1
        return pool_size if d is None else min(d, pool_size)

    sizes = {}
    for info in infos:
        shape = symbolic[info.name].shape
        if len(shape) == 4:
            sizes[info.name] = side(shape[1]) * side(shape[2]) * shape[3]
        else:
            sizes[info.name] = int(np.prod([d or 1 for d in shape[1:]]))
    return sizes


def chunk_layers(model, infos, examples, pool_size=4, max_bytes=1 << 30):
    """Consecutive groups of `infos` whose float32 features for `examples` fit in `max_bytes`.

    Each group is extracted in its own pass over the data, so analyses of
    wide models hold at most about `max_bytes` of features at a time.
    """
    sizes = feature_sizes(model, infos, pool_size)
    groups, current, used = [], [], 0
    for info in infos:
        need = sizes[info.name] * examples * 4
        if current and used + need > max_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(info)
        used += need
    if current:
        groups.append(current)
    return groups


_EXTRACTORS = weakref.WeakKeyDictionary()


def _pooled_in_graph(tensor, pool_size):
    """Average-pools `tensor` to `pool_size` inside the graph when its sides divide evenly.

    Cheaper than pooling after the fact: only the pooled maps leave the
    graph. Other shapes (unknown or uneven sides) pass unchanged and are
    pooled by `pool_features`.
    """
    shape = tensor.shape
    if not pool_size or len(shape) != 4 or shape[1] is None or shape[2] is None:
        return tensor
    h, w = shape[1], shape[2]
    if (h <= pool_size and w <= pool_size) or h % min(h, pool_size) or w % min(w, pool_size):
        return tensor
    window = (h // min(h, pool_size), w // min(w, pool_size))
    return keras.ops.average_pool(tensor, pool_size=window, strides=window, padding="valid")


def _float32(tensor):
    """A 16-bit symbolic output (a mixed-precision model's) cast to float32; others as they are."""
    return keras.ops.cast(tensor, "float32") if tensor.dtype in ("float16", "bfloat16") else tensor


def feature_extractor(model, names, include_output=True, pool_size=None):
    """A `keras.Model` mapping the model's inputs to ``{name: tensor}`` (and ``OUTPUT``).

    With `pool_size`, maps whose sides are multiples of it come out already
    average-pooled to ``pool_size x pool_size`` (the same numbers as
    `adaptive_average_pool`). Cached per model, names and pool size: an
    analysis run every epoch reuses the extractor and its compiled predict
    function.
    """
    _check_functional(model)
    key = (tuple(names), bool(include_output), pool_size)
    cached = _EXTRACTORS.get(model, {})
    if key in cached:
        return cached[key]
    outputs = {n: _pooled_in_graph(_float32(t), pool_size) for n, t in _symbolic(model, names).items()}
    if include_output:
        if len(model.outputs) != 1:
            raise ValueError(
                f"The analyses need a model with one output. Received: model '{model.name}' "
                f"with {len(model.outputs)} outputs"
            )
        outputs[OUTPUT] = _float32(model.outputs[0])
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    extractor = keras.Model(inputs, outputs, name=f"{model.name}_analysis_features")
    _EXTRACTORS.setdefault(model, {})[key] = extractor
    return extractor


def is_arrays(data):
    """True when `data` is an ``(x, y)`` pair of arrays rather than a stream of batches."""
    return (
        isinstance(data, tuple) and len(data) == 2
        and all(hasattr(a, "shape") and hasattr(a, "__array__") for a in data)
        and len(data[0].shape) >= 2 and len(data[1].shape) >= 1
        and data[0].shape[0] == data[1].shape[0]
    )


def iterate_batches(data, batch_size=128):
    """Yields ``(x, y)`` numpy batches from ``(x, y)`` arrays or a stream of batches."""
    if data is None:
        raise ValueError("`data` must be (x, y) arrays or an iterable of (x, y) batches. Received: None")
    if hasattr(data, "cardinality") and int(data.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise ValueError(
            "`data` must be finite (one pass over a split). Received: an infinite tf.data.Dataset "
            "(e.g. a repeated one); use load_dataset(..., epochs=None) or .take(n)"
        )
    if is_arrays(data):
        x, y = data
        for start in range(0, x.shape[0], batch_size):
            yield np.asarray(x[start:start + batch_size]), np.asarray(y[start:start + batch_size])
        return
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "`data` must yield (x, y) batches. Received: a batch of type "
                f"{type(batch).__name__}"
            )
        yield np.asarray(batch[0]), np.asarray(batch[1])


def as_arrays(data, max_examples=None, seed=0):
    """``(x, y)`` arrays of at most `max_examples` examples drawn uniformly from `data`.

    Arrays are subsampled without replacement (order kept); a stream of
    batches is read once with reservoir sampling, so a class-ordered stream
    still gives a uniform sample. The draw is a function of `seed`.
    """
    if max_examples is not None:
        max_examples = check_int(max_examples, "max_examples", minimum=1)
    rng = np.random.default_rng(seed)
    if is_arrays(data):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if max_examples is None or x.shape[0] <= max_examples:
            return x, y
        keep = np.sort(rng.choice(x.shape[0], max_examples, replace=False))
        return x[keep], y[keep]
    xs, ys = [], []
    seen = 0
    reservoir_x = reservoir_y = None
    for bx, by in iterate_batches(data):
        if max_examples is None:
            xs.append(bx)
            ys.append(by)
            continue
        for k in range(bx.shape[0]):
            if seen < max_examples:
                if reservoir_x is None:
                    reservoir_x = np.empty((max_examples, *bx.shape[1:]), bx.dtype)
                    reservoir_y = np.empty((max_examples, *by.shape[1:]), by.dtype)
                reservoir_x[seen] = bx[k]
                reservoir_y[seen] = by[k]
            else:
                j = rng.integers(0, seen + 1)
                if j < max_examples:
                    reservoir_x[j] = bx[k]
                    reservoir_y[j] = by[k]
            seen += 1
    if max_examples is None:
        if not xs:
            raise ValueError("`data` yielded no batches.")
        return np.concatenate(xs), np.concatenate(ys)
    if seen == 0:
        raise ValueError("`data` yielded no batches.")
    count = min(seen, max_examples)
    return reservoir_x[:count], reservoir_y[:count]


def pathway_means(infos, values, prefix):
    """``{prefix/pathway: mean}`` over each pathway's own outputs (``main``: all of them)."""
    groups = {}
    for info in infos:
        if info.pathway == "shared" or values.get(info.name) is None:
            continue
        groups.setdefault(info.pathway, []).append(values[info.name])
    return {f"{prefix}/{p}": float(np.mean(v)) for p, v in sorted(groups.items())}


def adaptive_average_pool(maps, size=4):
    """Adaptive average pooling of channels-last maps ``[n, H, W, C]`` to ``[n, size, size, C]``.

    Output cell ``i`` averages input rows ``floor(i H / size)`` to
    ``ceil((i + 1) H / size) - 1`` (PyTorch's ``adaptive_avg_pool2d``
    windows), likewise for columns. Maps no larger than `size` on both sides
    are returned unchanged.
    """
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise ValueError(f"`maps` must be [batch, height, width, channels]. Received: shape {maps.shape}")
    size = check_int(size, "size", minimum=1)
    h, w = maps.shape[1], maps.shape[2]
    if h <= size and w <= size:
        return maps
    out_h, out_w = min(h, size), min(w, size)
    if h % out_h == 0 and w % out_w == 0:
        n, _, _, c = maps.shape
        return maps.reshape(n, out_h, h // out_h, out_w, w // out_w, c).mean(axis=(2, 4))
    rows = [(i * h // out_h, -(-(i + 1) * h // out_h)) for i in range(out_h)]
    cols = [(j * w // out_w, -(-(j + 1) * w // out_w)) for j in range(out_w)]
    return np.stack(
        [np.stack([maps[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in cols], axis=1) for r0, r1 in rows],
        axis=1,
    )


def pool_features(value, pool_size=4):
    """Maps ``[n, H, W, C]`` average-pooled to at most ``pool_size`` per side; others as they are (16-bit: float32)."""
    value = to_numpy(value)
    if value.ndim == 4 and pool_size:
        return adaptive_average_pool(value, pool_size)
    return value


def iterate_features(model, data, names, batch_size=128, pool_size=4, max_examples=None,
                     include_output=True, extractor=None):
    """Runs `model` in inference mode and yields ``(features, labels, outputs)`` per batch.

    ``features`` maps each of `names` to its output, maps pooled to
    ``pool_size`` (not flattened); ``outputs`` is the model output (None
    without `include_output`). BatchNormalization uses its moving
    statistics and does not update them (``predict_on_batch``).

    Args:
        model: a functional `keras.Model`.
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches.
        names: feature names (see `analysis_layers`).
        batch_size: for arrays.
        pool_size: 4 in the paper; None or 0 keeps full maps.
        max_examples: stop after this many examples (the first ones).
        include_output: also return the model output.
        extractor: a `feature_extractor(model, names, include_output, pool_size)` to reuse.
    """
    extractor = extractor or feature_extractor(model, list(names), include_output, pool_size)
    done = 0
    for x, y in iterate_batches(data, batch_size):
        if max_examples is not None:
            if done >= max_examples:
                break
            x, y = x[: max_examples - done], y[: max_examples - done]
        out = extractor.predict_on_batch(x)
        features = {n: pool_features(out[n], pool_size) for n in names}
        done += x.shape[0]
        yield features, y, (to_numpy(out[OUTPUT]) if include_output else None)


def collect_features(model, data, names, batch_size=128, pool_size=4, max_examples=None, seed=0):
    """Pooled, flattened features of a uniform subset of `data` (see `as_arrays`).

    Returns:
        ``(features {name: float32 [n, d]}, labels [n], outputs [n, ...])``.
    """
    x, y = as_arrays(data, max_examples, seed)
    parts = {n: [] for n in names}
    outputs = []
    for features, _, out in iterate_features(model, (x, y), names, batch_size, pool_size):
        for n in names:
            parts[n].append(features[n].reshape(features[n].shape[0], -1).astype(np.float32, copy=False))
        outputs.append(out)
    return {n: np.concatenate(v) for n, v in parts.items()}, y, np.concatenate(outputs)


def infer_num_classes(data_num_classes, *label_arrays):
    """`AnalysisData.num_classes`, or one more than the largest label seen."""
    if data_num_classes:
        return int(data_num_classes)
    return int(max(int(np.max(y)) for y in label_arrays if len(y)) + 1)

