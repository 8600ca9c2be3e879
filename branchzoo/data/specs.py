"""One spec per dataset: what it is, how its files look, how it is read.

A `DatasetSpec` holds everything branchzoo knows about a dataset (class
names, file layouts, whether images may be flipped, its tfds name, its
readers) in one place, registered by name.

    >>> from branchzoo.data import get_spec
    >>> spec = get_spec("cifar10")
    >>> spec.kind, spec.flippable, spec.tfds_name, [layout.name for layout in spec.layouts]
    ('classification', True, 'cifar10', ['cifar_python', 'image_folder'])
"""

import dataclasses
import fnmatch
from typing import Callable, Optional

KINDS = ("classification", "paired", "synthetic")

# name -> DatasetSpec, in registration order.
_SPECS = {}


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way files on disk can hold a dataset.

    Attributes:
        name: short id, e.g. ``"idx"``, ``"cifar_python"``, ``"image_folder"``.
        description: what the files look like (quoted in error messages).
        detect: ``(folder) -> bool``: does `folder` hold the dataset directly?
        files: ``(root) -> [paths]``: the files the reader reads; their paths,
            sizes and mtimes key the decoded cache.
        read: ``(root, spec, params) -> (images by split, labels by split,
            class names)``; images uint8 [N, H, W, C] (or a list of such
            images of mixed sizes, which the caller fits to one size).
    """

    name: str
    description: str
    detect: Callable
    files: Callable
    read: Callable


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything branchzoo knows about one dataset.

    Attributes:
        name: canonical name (lower case, ``_`` between words).
        kind: ``"classification"`` (``(image, label)`` examples),
            ``"paired"`` (a classification dataset served by default as
            ``((image, source_label), target_label)`` for class transfer) or
            ``"synthetic"`` (generated from a seed and parameters; float
            ``(inputs, targets)``; no files).
        class_names: the label names in label order, or None when the files
            say (image folders).
        layouts: the `Layout`s accepted on disk, tried in this order.
        flippable: a horizontal flip keeps the meaning (not for digits).
        tfds_name: the tensorflow_datasets name to download, or None.
        reader: for datasets without files (digits, synthetic):
            ``(params) -> (inputs by split, targets by split, class names)``.
        reader_version: part of the cache key of `reader`'s output, a str or
            a ``() -> str`` (e.g. the scikit-learn version for digits).
        folder_names: class folder name -> class name (Imagenette's WordNet ids).
        child_patterns: fnmatch patterns on the lower-cased names (``-`` and
            ``_`` dropped) of the child folders/archives of a `data_dir` that
            may hold this dataset. Default: the name, or the name followed by
            a non-digit (so ``cifar10`` skips ``cifar-100-python``).
        params: the dataset parameters `load_dataset` accepts, with defaults
            (e.g. ``{"image_size": None}``).
        check_params: ``(params) -> params``: validates and normalises them.
        description: one line for listings.
        reference: where the dataset (or the problem) comes from.
    """

    name: str
    kind: str
    class_names: Optional[tuple] = None
    layouts: tuple = ()
    flippable: bool = False
    tfds_name: Optional[str] = None
    reader: Optional[Callable] = None
    reader_version: object = ""
    folder_names: dict = dataclasses.field(default_factory=dict)
    child_patterns: tuple = ()
    params: dict = dataclasses.field(default_factory=dict)
    check_params: Optional[Callable] = None
    description: str = ""
    reference: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or normalise_name(self.name) != self.name:
            raise ValueError(
                "`name` must be lower case with `_` between words. "
                f"Received: name={self.name!r}"
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"`kind` must be one of {', '.join(KINDS)}. Received: kind={self.kind!r}"
            )
        if not self.layouts and self.reader is None:
            raise ValueError(
                f"Dataset '{self.name}' needs `layouts` (files on disk) or a `reader` (no files). "
                "Received neither."
            )
        if not self.child_patterns:
            compact = compact_name(self.name)
            object.__setattr__(self, "child_patterns", (compact, compact + "[!0-9]*"))

    @property
    def layout_description(self):
        """What the accepted files look like, for error messages."""
        return " or ".join(layout.description for layout in self.layouts)

    def matches_child(self, entry):
        """Whether a child folder/archive called `entry` may hold this dataset."""
        compact = compact_name(entry)
        return any(fnmatch.fnmatchcase(compact, pattern) for pattern in self.child_patterns)


def normalise_name(name):
    """`name` lower-cased and stripped, with ``-`` read as ``_``."""
    return name.strip().lower().replace("-", "_")


def compact_name(text):
    """`text` lower-cased with ``-`` and ``_`` dropped (for matching folder names)."""
    return text.lower().replace("-", "").replace("_", "")


def register_dataset(spec, overwrite=False):
    """Registers `spec` under its name; returns it.

    Args:
        spec: a `DatasetSpec`.
        overwrite: replace an existing spec of the same name.

    Returns:
        `spec`.

    Example:
        >>> from branchzoo.data import specs
        >>> _ = specs.register_dataset(specs.DatasetSpec(
        ...     "my_folder", "classification", layouts=specs.get_spec("image_folder").layouts),
        ...     overwrite=True)
    """
    if not isinstance(spec, DatasetSpec):
        raise ValueError(f"`spec` must be a DatasetSpec. Received: spec={spec!r}")
    if spec.name in _SPECS and not overwrite:
        raise ValueError(
            f"A dataset named '{spec.name}' is already registered; pass overwrite=True to "
            f"replace it. Received: name={spec.name!r}"
        )
    _SPECS[spec.name] = spec
    return spec


def get_spec(name):
    """The `DatasetSpec` registered as `name` (``-`` read as ``_``, any case)."""
    if isinstance(name, str):
        spec = _SPECS.get(normalise_name(name))
        if spec is not None:
            return spec
    raise ValueError(
        f"Unknown dataset `name`. Expected one of: {', '.join(_SPECS)}. Received: name={name!r}"
    )


def list_datasets(kind=None):
    """Names of the registered datasets (of one `kind` when given), in registration order."""
    if kind is not None and kind not in KINDS:
        raise ValueError(
            f"`kind` must be None or one of {', '.join(KINDS)}. Received: kind={kind!r}"
        )
    return [name for name, spec in _SPECS.items() if kind is None or spec.kind == kind]
