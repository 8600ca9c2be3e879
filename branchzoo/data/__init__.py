"""Datasets as tf.data pipelines: decoded once, cached, normalised, augmented.

Image datasets are served as batches of ``(image float32 [H, W, C], label
int32)``, scaled to [0, 1] and normalised per channel with the mean/std of
their train split; paired ones as ``((image, source_label), target_label)``;
synthetic ones as raw float32 ``(inputs, targets)``.

Each dataset has one `DatasetSpec` (`get_spec(name)`; `list_datasets()`):

- ``digits``: scikit-learn's bundled 8x8 digits, the offline default (no
  download, no `data_dir`): values 0..16 scaled to 0..255, resized bilinearly
  to 32x32 and replicated to 3 channels so every CIFAR-shaped model accepts
  it; a fixed stratified 80/20 split (``random_state=0``): 1437 train, 360 test.
- ``mnist``, ``fashion_mnist``: the official IDX files (gzipped or not).
- ``cifar10``, ``cifar100``: the official python archive
  (``cifar-10-batches-py/``, ``cifar-100-python/``; fine labels) or an image
  folder ``train/<class>/*``, ``test/<class>/*``.
- ``image_folder``: ``train/<class>/*`` and ``test/<class>/*`` or
  ``val/<class>/*`` (png, jpg, jpeg, bmp); classes are the sorted folders of
  train. One image size throughout, unless an ``image_size`` is given.
- ``imagenette``: an Imagenette folder (``imagenette2``, ``imagenette2-320``
  or ``imagenette2-160``: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``,
  mixed sizes); ``val`` is the test split; resized to cover ``image_size``
  (default 160) and centre-cropped, as torchvision's Resize + CenterCrop.
- ``afhq``, ``celeba_hq``: StarGAN v2's AFHQ (cat, dog, wild) and CelebA-HQ
  (female, male) folders, kind ``paired``: class-transfer pairs by default.
- ``toy_xor1d``, ``toy_regression1d``: the 1-D toy problems of
  Brokman & Gilboa (2022), Sec. 4.1, generated (`synthetic_arrays`).

Options every loading function takes (one dict, e.g. a recipe's
``dataset_options``, serves `load_dataset`, `dataset_info` and `load_arrays`):
``image_size``, ``classes`` (a subset by name, re-indexed in the given
order), ``pairing``, ``normalization`` and a synthetic dataset's parameters;
see `branchzoo.data.loading`.

Where the files are: see `branchzoo.data.sources`. The cache, under
``branchzoo_home()`` (``$BRANCHZOO_HOME``):

- ``datasets/<name>-<key>.npz``: the decoded uint8 images, int64 labels,
  class names and train mean/std; `key` derives from the source's path, sizes
  and mtimes (a fixed ``sklearn<version>`` / ``tfds<version>`` key for digits
  and tensorflow_datasets) and from the dataset parameters, so edited files
  are decoded again;
- ``extracted/<archive stem>-<key>/``: an archive given as data, extracted
  once; `key` derives from the archive's absolute path, size and mtime.

Modules: `specs` (DatasetSpec, the registry), `catalog` (the built-in
specs), `sources` (finding local files, archives, tfds), `readers` (IDX,
CIFAR python, image folders, digits), `resize`, `synthetic`, `cache`,
`loading` (options, arrays, info), `pipeline` (the (seed, epoch) stream).

    >>> from branchzoo import data
    >>> ds = data.load_dataset("digits", "train", batch_size=32, seed=0)
    >>> images, labels = next(iter(ds))
    >>> tuple(images.shape), labels.dtype.name
    ((32, 32, 32, 3), 'int32')
"""

from branchzoo.data import catalog  # noqa: F401  (registers the built-in datasets)
from branchzoo.data.errors import DatasetNotFoundError
from branchzoo.data.loading import (
    NORMALIZATIONS,
    PAIRINGS,
    SPLITS,
    DatasetInfo,
    clear_cache,
    dataset_info,
    load_arrays,
)
from branchzoo.data.pipeline import epoch_stream, load_dataset
from branchzoo.data.resize import fit_image
from branchzoo.data.sources import DATA_DIR_ENV
from branchzoo.data.specs import (
    KINDS,
    DatasetSpec,
    Layout,
    get_spec,
    list_datasets,
    register_dataset,
)
from branchzoo.data.synthetic import register_synthetic, synthetic_arrays

# The datasets registered at import (`list_datasets()` also sees later ones).
DATASETS = tuple(list_datasets())

__all__ = [
    "DATASETS", "DATA_DIR_ENV", "KINDS", "NORMALIZATIONS", "PAIRINGS", "SPLITS",
    "DatasetInfo", "DatasetNotFoundError", "DatasetSpec", "Layout",
    "clear_cache", "dataset_info", "epoch_stream", "fit_image", "get_spec", "list_datasets",
    "load_arrays", "load_dataset", "register_dataset", "register_synthetic", "synthetic_arrays",
]
