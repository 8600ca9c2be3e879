"""Loading a dataset's arrays with its options: parameters, class subsets, the cache.

The options every loading function takes (`load_dataset`, `dataset_info`,
`load_arrays`), so that one dict (a recipe's ``dataset_options``) can be passed
to all of them:

- dataset parameters, declared by the spec: ``image_size`` for every image
  dataset (None: as stored; an int or (height, width): images resized to cover
  it and centre-cropped, see `branchzoo.data.resize`), the generator's
  parameters and ``data_seed`` for synthetic datasets;
- ``classes``: a subset of the classes, by name; labels are re-indexed
  0..k-1 in the given order and the train statistics are those of the subset;
- ``pairing``: None (the kind's default: ``"target_class"`` for paired
  datasets, ``"none"`` otherwise), ``"none"`` or ``"target_class"`` (see
  `branchzoo.data.pipeline`);
- ``normalization``: None (``"standardize"``; ``"none"`` for synthetic data),
  ``"standardize"`` (per-channel mean/std of the train split), ``"unit"``
  ([0, 1]) or ``"symmetric"`` ([-1, 1], for generators with a tanh output).
"""

import dataclasses
import os

import numpy as np

from branchzoo import _progress as progress
from branchzoo._home import branchzoo_home
from branchzoo.data import cache, sources
from branchzoo.data.resize import fit_images
from branchzoo.data.specs import get_spec

SPLITS = cache.SPLITS
PAIRINGS = ("none", "target_class")
NORMALIZATIONS = ("standardize", "unit", "symmetric", "none")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: the canonical dataset name.
        num_classes: number of classes (0 for synthetic data).
        image_shape: ``(height, width, channels)``; for synthetic data the
            shape of one input, ``(d,)``.
        class_names: one name per label, in label order.
        num_examples: ``{"train": n, "test": n}``.
        mean: per-channel mean of the train images scaled to [0, 1].
        std: per-channel standard deviation of the same.
        kind: ``"classification"``, ``"paired"`` (examples ``((image,
            source_label), target_label)``) or ``"synthetic"``.
        target_shape: the shape of one target: ``()`` for a label.
        options: the resolved options (dataset parameters, ``classes``,
            ``pairing``, ``normalization``), JSON-ready: what a run config
            records to reload the same data.
    """

    name: str
    num_classes: int
    image_shape: tuple
    class_names: tuple
    num_examples: dict
    mean: tuple
    std: tuple
    kind: str = "classification"
    target_shape: tuple = ()
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Options:
    """Resolved, checked options of one dataset."""

    spec: object
    params: dict
    classes: tuple
    pairing: str
    normalization: str

    @property
    def kind(self):
        if self.spec.kind == "synthetic":
            return "synthetic"
        return "paired" if self.pairing == "target_class" else "classification"

    def as_dict(self):
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()}
        return {
            **params,
            "classes": list(self.classes) if self.classes is not None else None,
            "pairing": self.pairing,
            "normalization": self.normalization,
        }


def resolve_params(spec, params):
    """The spec's parameters: defaults overridden by `params`, checked."""
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        accepted = ", ".join(spec.params) or "none"
        raise ValueError(
            f"Unknown parameter for dataset '{spec.name}': {', '.join(unknown)}. Accepted: "
            f"{accepted}. Received: {', '.join(f'{k}={params[k]!r}' for k in unknown)}"
        )
    values = {**spec.params, **params}
    return spec.check_params(values) if spec.check_params is not None else values


def resolve_options(name, classes=None, pairing=None, normalization=None, **params):
    """Checks every option of dataset `name`; returns an `Options`."""
    spec = get_spec(name)
    params = resolve_params(spec, params)
    synthetic = spec.kind == "synthetic"
    if classes is not None:
        if synthetic:
            raise ValueError(
                f"`classes` needs a dataset with classes; '{spec.name}' is synthetic. "
                f"Received: classes={classes!r}"
            )
        if isinstance(classes, str) or not all(isinstance(c, str) for c in _iterable(classes)) \
                or not list(classes) or len(set(classes)) != len(list(classes)):
            raise ValueError(
                "`classes` must be a non-empty list of distinct class names. "
                f"Received: classes={classes!r}"
            )
        classes = tuple(classes)
    if pairing is None:
        pairing = "target_class" if spec.kind == "paired" else "none"
    if pairing not in PAIRINGS or (synthetic and pairing != "none"):
        allowed = "'none'" if synthetic else " or ".join(repr(p) for p in PAIRINGS)
        raise ValueError(
            f"`pairing` must be None or {allowed} for dataset '{spec.name}'. "
            f"Received: pairing={pairing!r}"
        )
    if normalization is None:
        normalization = "none" if synthetic else "standardize"
    allowed = ("none",) if synthetic else NORMALIZATIONS[:3]
    if normalization not in allowed:
        raise ValueError(
            f"`normalization` must be None or one of {', '.join(map(repr, allowed))} for "
            f"dataset '{spec.name}'. Received: normalization={normalization!r}"
        )
    return Options(spec, params, classes, pairing, normalization)


def _iterable(value):
    try:
        return list(value)
    except TypeError:
        return [None]


def load_record(options, data_dir):
    """The decoded dataset (class subset included): from memory, the cache file, or decoded."""
    spec = options.spec
    if spec.kind == "synthetic":
        key = ("synthetic", spec.name, cache.params_tag(options.params))
        record = cache.memo_get(key)
        if record is None:
            inputs, targets, _ = spec.reader(options.params)
            record = cache.memo_put(key, cache.make_synthetic_record(inputs, targets))
        return record
    record, key = _load_full_record(options, data_dir)
    if options.classes is None:
        return record
    subset_key = (key, options.classes)
    subset = cache.memo_get(subset_key)
    if subset is None:
        subset = cache.memo_put(subset_key, subset_record(spec.name, record, options.classes))
    return subset


def _load_full_record(options, data_dir):
    spec, params = options.spec, options.params
    source = sources.find_source(spec, data_dir, params)
    key = "-".join(filter(None, [source.key, cache.params_tag(params)]))
    path = os.path.join(branchzoo_home(), "datasets", f"{spec.name}-{key}.npz")
    record = cache.memo_get(path) or cache.read_cache(path)
    if record is None:
        # Minutes for a large dataset, once: say so (cifar10 from its archive: over a minute).
        with progress.stage(f"Decoding dataset '{spec.name}' (first use; later runs read {path})"):
            images, labels, class_names = source.decode()
        image_size = params.get("image_size")
        if image_size is not None:
            with progress.stage(f"Resizing the '{spec.name}' images to {image_size} px"):
                images = {split: fit_images(images[split], image_size) for split in SPLITS}
        with progress.stage(f"Computing the train statistics and writing {path}"):
            record = cache.make_image_record(
                spec.name, images, labels, class_names if class_names is not None else spec.class_names
            )
            cache.write_cache(path, record)
    return cache.memo_put(path, record), path


def subset_record(name, record, classes):
    """`record` restricted to `classes` (names), labels re-indexed in their order."""
    missing = [c for c in classes if c not in record.class_names]
    if missing:
        more = ", ..." if len(record.class_names) > 20 else ""
        shown = ", ".join(record.class_names[:20]) + more
        raise ValueError(
            f"`classes` must name classes of '{name}' ({shown}). Received: classes="
            f"{list(classes)!r} ({', '.join(map(repr, missing))} not among them)"
        )
    relabel = np.full(len(record.class_names), -1, np.int64)
    for new, cls in enumerate(classes):
        relabel[record.class_names.index(cls)] = new
    images, labels = {}, {}
    for split in SPLITS:
        mapped = relabel[record.labels[split]]
        keep = mapped >= 0
        images[split], labels[split] = record.images[split][keep], mapped[keep]
        if not keep.any():
            raise ValueError(
                f"'{name}' has no {split} examples of the classes {list(classes)!r}."
            )
    return cache.make_image_record(name, images, labels, classes)


def dataset_info(name, data_dir=None, *, classes=None, pairing=None, normalization=None,
                 **params):
    """Number of classes, image shape, split sizes and train statistics of a dataset.

    Loads (and caches) the arrays when they are not cached yet.

    Args:
        name: a registered dataset (see `list_datasets`).
        data_dir: local data, as for `load_dataset`.
        classes, pairing, normalization, **params: the dataset options (see
            `branchzoo.data.loading`); the same dict serves `load_dataset`.

    Returns:
        A `DatasetInfo`.

    Example:
        >>> from branchzoo import data
        >>> data.dataset_info("digits", classes=["3", "5"]).num_examples
        {'train': 291, 'test': 74}
    """
    options = resolve_options(name, classes, pairing, normalization, **params)
    record = load_record(options, data_dir)
    synthetic = options.spec.kind == "synthetic"
    return DatasetInfo(
        name=options.spec.name,
        num_classes=len(record.class_names),
        image_shape=tuple(int(d) for d in record.images["train"].shape[1:]),
        class_names=record.class_names,
        num_examples={split: int(len(record.labels[split])) for split in SPLITS},
        mean=tuple(float(m) for m in record.mean),
        std=tuple(float(s) for s in record.std),
        kind=options.kind,
        target_shape=tuple(int(d) for d in record.labels["train"].shape[1:]) if synthetic else (),
        options=options.as_dict(),
    )


def load_arrays(name, split, data_dir=None, *, classes=None, pairing=None, normalization=None,
                **params):
    """The raw decoded arrays of one split, as the cache holds them.

    Args:
        name: a registered dataset.
        split: ``"train"`` or ``"test"``.
        data_dir: local data, as for `load_dataset`.
        classes, pairing, normalization, **params: the dataset options (see
            `branchzoo.data.loading`; `pairing` and `normalization` are
            checked but do not change the arrays).

    Returns:
        ``(images uint8 [N, H, W, C], labels int64 [N], class_names tuple)``
        (synthetic data: ``(inputs float32 [N, d], targets float32 [N, t],
        ())``); the arrays are shared and read-only: copy them before editing.
    """
    split = check_split(split)
    options = resolve_options(name, classes, pairing, normalization, **params)
    record = load_record(options, data_dir)
    return record.images[split], record.labels[split], record.class_names


def clear_cache():
    """Forgets the arrays held in memory; the cache files on disk stay."""
    cache.clear_memo()


def check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    return split
