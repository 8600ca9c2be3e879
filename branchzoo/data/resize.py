"""Fitting images to one size: resize to cover, then crop the centre.

The rule of torchvision's ``Resize(size)`` + ``CenterCrop(size)`` (the
ImageNet / Imagenette evaluation transform; He et al. 2016 resize the shorter
side too), generalised to a (height, width) target: scale the image so that it
just covers the target (the shorter side, for a square target), with PIL's
antialiased bilinear filter, then cut the centre. Images already of the target
size are kept as they are, bit for bit.
"""

import numbers

import numpy as np


def check_image_size(image_size, name="image_size"):
    """None, or `image_size` as a (height, width) pair of ints >= 1."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, numbers.Integral) else image_size
    try:
        height, width = pair
        ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                 for v in (height, width))
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(image_size, bool):
        raise ValueError(
            f"`{name}` must be None, an int >= 1 (square) or a (height, width) pair of ints >= 1. "
            f"Received: {name}={image_size!r}"
        )
    return int(height), int(width)


def cover_size(height, width, target):
    """(height, width) after scaling (height, width) to just cover `target` (h, w)."""
    th, tw = target
    scale = max(th / height, tw / width)
    return max(th, int(round(height * scale))), max(tw, int(round(width * scale)))


def fit_image(image, target):
    """`image` resized to cover `target` and centre-cropped to it.

    Args:
        image: a PIL image, or a uint8 array [H, W] or [H, W, C] (C = 1 or 3).
        target: (height, width).

    Returns:
        A uint8 array of shape ``(height, width)`` + the input's channel axis.

    Example:
        >>> import numpy as np
        >>> fit_image(np.zeros((20, 40, 3), np.uint8), (10, 10)).shape
        (10, 10, 3)
    """
    from PIL import Image

    squeeze = False
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] == 1:
            image, squeeze = image[..., 0], True
        pil = Image.fromarray(image)
    else:
        pil = image
    width, height = pil.size
    th, tw = target
    if (height, width) != (th, tw):
        nh, nw = cover_size(height, width, target)
        if (nh, nw) != (height, width):
            pil = pil.resize((nw, nh), Image.BILINEAR)
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        pil = pil.crop((left, top, left + tw, top + th))
    array = np.asarray(pil)
    return array[..., None] if squeeze else array


def fit_images(images, target):
    """A uint8 batch [N, H, W, C] fitted to `target` (h, w) image by image (see `fit_image`)."""
    if target is None or tuple(images.shape[1:3]) == tuple(target):
        return images
    out = np.empty((len(images), *target, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        fitted = fit_image(image, target)
        out[i] = fitted if fitted.ndim == 3 else fitted[..., None]
    return out
