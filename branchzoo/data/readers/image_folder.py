"""Image folders: ``train/<class>/*`` and ``test/<class>/*`` (or ``val/<class>/*``).

The layout of torchvision's ImageFolder, Imagenette (``train/``, ``val/``,
WordNet-id class folders), AFHQ and CelebA-HQ as StarGAN v2 ships them.
Images of mixed sizes are fitted to one size when the dataset is given an
``image_size`` (see `branchzoo.data.resize`); without one they must share a size.
"""

import os
from concurrent import futures

import numpy as np

from branchzoo.data.errors import DatasetNotFoundError
from branchzoo.data.resize import cover_size, fit_image
from branchzoo.data.specs import Layout

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "test")


def layout(test_folders=("test", "val")):
    """The image-folder `Layout`; the test split is the first of `test_folders` present."""
    test_folders = tuple(test_folders)
    description = (
        f"an image folder train/<class>/*, {'/ or '.join(test_folders)}/<class>/* "
        f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)})"
    )

    def detect(folder):
        return os.path.isdir(os.path.join(folder, "train"))

    def files(root):
        _, listed = list_folder(root, test_folders, description)
        return [path for split in SPLITS for path, _ in listed[split]]

    def read(root, spec, params):
        return read_folder(root, spec, params.get("image_size"), test_folders, description)

    return Layout("image_folder", description, detect, files, read)


def _subfolders(folder):
    return sorted(e for e in os.listdir(folder)
                  if not e.startswith(".") and os.path.isdir(os.path.join(folder, e)))


def list_folder(root, test_folders, description):
    """Class folders (sorted train folders) and ``{split: [(path, folder index), ...]}``."""
    split_dirs = {"train": os.path.join(root, "train")}
    for name in test_folders:
        if os.path.isdir(os.path.join(root, name)):
            split_dirs["test"] = os.path.join(root, name)
            break
    for split in SPLITS:
        if split not in split_dirs or not os.path.isdir(split_dirs[split]):
            wanted = "train/" if split == "train" else " or ".join(f"{t}/" for t in test_folders)
            raise DatasetNotFoundError(
                f"The image folder {root} has no {wanted} folder; expected {description}."
            )
    folders = _subfolders(split_dirs["train"])
    listed = {}
    for split, folder in split_dirs.items():
        unknown = sorted(set(_subfolders(folder)) - set(folders))
        if unknown:
            raise ValueError(
                f"{folder} has class folders that train/ lacks: {', '.join(unknown)}. Every test "
                "class must also be a train class."
            )
        listed[split] = [
            (os.path.join(folder, cls, fname), index)
            for index, cls in enumerate(folders)
            if os.path.isdir(os.path.join(folder, cls))
            for fname in sorted(os.listdir(os.path.join(folder, cls)))
            if fname.lower().endswith(IMAGE_SUFFIXES) and not fname.startswith(".")
        ]
        if not listed[split]:
            raise DatasetNotFoundError(
                f"{folder} holds no images; expected {os.path.basename(folder)}/<class>/* with "
                f"{', '.join(IMAGE_SUFFIXES)} files."
            )
    return tuple(folders), listed


def decode_image(path, image_size=None):
    """The image at `path` as uint8 [H, W] (grey) or [H, W, 3], fitted to `image_size` if given."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = "L" if image.mode in ("1", "L", "LA") else "RGB"
            if image_size is not None:
                # JPEGs can decode straight at a reduced scale no smaller than needed.
                nh, nw = cover_size(image.height, image.width, image_size)
                image.draft(mode, (nw, nh))
                return fit_image(image.convert(mode), image_size)
            return np.asarray(image.convert(mode))
    except OSError as e:
        raise ValueError(f"Cannot decode the image {path}: {e}") from None


def class_labels(spec, folders, root):
    """Class names and the label of each class folder.

    A spec with fixed class names labels the folders in the spec's order when
    the folders (after `spec.folder_names`) are exactly its classes; folders of
    other names are accepted when there are as many (labels: sorted folders).
    """
    if spec.class_names is None:
        return tuple(folders), list(range(len(folders)))
    named = [spec.folder_names.get(f, f) for f in folders]
    if sorted(named) == sorted(spec.class_names):
        return tuple(spec.class_names), [spec.class_names.index(n) for n in named]
    if len(folders) == len(spec.class_names):
        return tuple(folders), list(range(len(folders)))
    more = ", ..." if len(folders) > 12 else ""
    raise ValueError(
        f"The '{spec.name}' image folder {root} must hold {len(spec.class_names)} class "
        f"folders in train/. Received: {len(folders)} ({', '.join(folders[:12])}{more})"
    )


def read_folder(root, spec, image_size, test_folders, description):
    """Decodes an image folder (threads: PIL releases the GIL while decoding)."""
    folders, listed = list_folder(root, test_folders, description)
    class_names, folder_labels = class_labels(spec, folders, root)
    paths = [path for split in SPLITS for path, _ in listed[split]]
    with futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(lambda p: decode_image(p, image_size), paths))
    size = decoded[0].shape[:2]
    odd = [i for i, image in enumerate(decoded) if image.shape[:2] != size]
    if odd:
        first = odd[0]
        raise ValueError(
            f"All images of an image folder must share one size unless an `image_size` is "
            f"given: {paths[0]} is {size[0]}x{size[1]} but {paths[first]} is "
            f"{decoded[first].shape[0]}x{decoded[first].shape[1]} ({len(odd)} of {len(paths)} "
            "images differ). Pass image_size=(height, width) (or an int for squares) to "
            "load_dataset / dataset_info (a zoo recipe: \"dataset_options\": {\"image_size\": N}) "
            "to resize them as they are read, or Resize them to one size first."
        )
    # Grey images join colour ones as three equal channels.
    channels = 3 if any(image.ndim == 3 for image in decoded) else 1
    stacked = np.stack([
        image if image.ndim == 3 else np.repeat(image[..., None], channels, axis=-1)
        for image in decoded
    ])
    n_train = len(listed["train"])
    images = {"train": stacked[:n_train], "test": stacked[n_train:]}
    labels = {
        split: np.array([folder_labels[i] for _, i in listed[split]], dtype=np.int64)
        for split in SPLITS
    }
    return images, labels, class_names
