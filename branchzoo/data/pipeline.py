"""The tf.data pipeline: the (seed, epoch) stream, augmentation, pairing, batching.

Epoch ``e`` of every stream is a pure function of ``(seed, e)``: its order
comes from a stateless shuffle and every example's randomness (crop, flip,
paired target class) from stateless ops keyed by ``(seed, e, position)``. So
iterating the dataset again, on more replicas, or after a resume gives exactly
the same batches. (Keras' RandomCrop/RandomFlip layers draw from a stateful
seed generator, whose state depends on how often the pipeline was iterated
before: a MirroredStrategy run then sees other batches than a single-device
run, and a resumed run cannot replay an epoch. Hence TF's stateless ops.)

`epoch_stream` is that stream for any per-example function; `load_dataset`
builds the classification, paired and synthetic examples on it.
"""

import numpy as np
import tensorflow as tf

from branchzoo._validation import check_int
from branchzoo.data.loading import check_split, load_record, resolve_options

PAD = 4


def epoch_stream(count, example, batch_size, seed, shuffle=True, epochs=None, initial_epoch=0,
                 drop_remainder=False, steps_per_epoch=None):
    """Batches of ``example(index, key)`` over epochs, each a pure function of (seed, epoch).

    Args:
        count: examples per epoch (indices 0..count-1).
        example: ``(index int64 scalar, key int64 [2]) -> nested tensors``:
            one example; `key` is unique to (seed, epoch, position in the
            epoch): seed stateless random ops with it (or ``key + [0, i]``
            for several independent draws).
        batch_size: examples per batch.
        seed: int seeding the shuffle and `key`.
        shuffle: shuffle each epoch (stateless, from (seed, epoch)).
        epochs: None: one epoch per iteration, each iteration with a new epoch
            key (as ``model.fit`` expects of a finite dataset); an int: that
            many epochs back to back, numbered from `initial_epoch`,
            identical on every iteration.
        initial_epoch: number of the first epoch when `epochs` is an int.
        drop_remainder: drop the last, smaller batch of each epoch.
        steps_per_epoch: keep only the first that many batches of each epoch.

    Returns:
        A `tf.data.Dataset` of batched examples with a known cardinality.

    Example:
        >>> ds = epoch_stream(5, lambda i, key: i, batch_size=5, seed=0, epochs=2)
        >>> [sorted(b.numpy().tolist()) for b in ds]
        [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    """
    def one_epoch(epoch_key):
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch_key, tf.int64)])
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=key)

        def one(position, index):
            return example(index, tf.stack([key[0] * 1_000_003 + key[1], position]))

        ds = tf.data.Dataset.from_tensor_slices((tf.range(count, dtype=tf.int64), order))
        ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds if steps_per_epoch is None else ds.take(steps_per_epoch)

    if epochs is None:
        # One random epoch key per iteration: a new epoch each time fit() iterates.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        keys = tf.data.Dataset.range(initial_epoch, initial_epoch + epochs)
    batches = count // batch_size if drop_remainder else -(-count // batch_size)
    if steps_per_epoch is not None:
        batches = min(batches, steps_per_epoch)
    # flat_map hides the length; stating it gives Keras progress bars a total
    # and spares it the "ran out of data" guess at the end of each pass.
    ds = keys.flat_map(one_epoch).apply(
        tf.data.experimental.assert_cardinality(batches * (epochs or 1))
    )
    return ds.prefetch(tf.data.AUTOTUNE)


AUGMENTS = ("pad_crop", "random_resized_crop")
# Random-resized-crop ranges: torchvision's RandomResizedCrop defaults, as He et al.
# (2016) and Szegedy et al. (2015) describe their ImageNet augmentation.
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)


def check_augment(augment, name="augment"):
    """None, True, False or one of `AUGMENTS` (True means ``"pad_crop"``)."""
    if augment in (None, True, False) or augment in AUGMENTS:
        return augment
    raise ValueError(
        f"`{name}` must be None, True, False or one of {AUGMENTS}. Received: {name}={augment!r}"
    )


def augmenter(image_shape, flip, kind="pad_crop"):
    """A per-example augmentation, stateless in `key`, of [0, 1] images.

    ``"pad_crop"``: 4-pixel zero pad and a random crop back to the image size
    (the CIFAR recipes of He et al. 2016 and Xie et al. 2017).
    ``"random_resized_crop"``: a crop of 8%-100% of the area with aspect
    ratio 3/4-4/3, resized back to the image size (bilinear); after 10
    failed draws the whole image (TensorFlow's fallback; torchvision's is a
    centre crop). Either adds a horizontal flip when `flip`.
    """
    height, width, channels = (int(d) for d in image_shape)
    if kind not in AUGMENTS:
        raise ValueError(f"`kind` must be one of {AUGMENTS}. Received: kind={kind!r}")

    def pad_crop(image, key):
        image = tf.pad(image, [[PAD, PAD], [PAD, PAD], [0, 0]])
        return tf.image.stateless_random_crop(image, (height, width, channels), seed=key)

    def random_resized_crop(image, key):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=key,
            min_object_covered=0.0, aspect_ratio_range=CROP_ASPECT, area_range=CROP_AREA,
            max_attempts=10, use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(image, begin, size)
        return tf.reshape(tf.image.resize(crop, (height, width)), (height, width, channels))

    crop = pad_crop if kind == "pad_crop" else random_resized_crop

    def augment(image, key):
        image = crop(image, key)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=key + [0, 1])
        return image

    return augment


def other_class(label, num_classes, key):
    """A class drawn uniformly from the `num_classes` - 1 classes other than `label`."""
    offset = tf.random.stateless_uniform(
        (), seed=key + [0, 2], minval=0, maxval=num_classes - 1, dtype=tf.int32
    )
    return (label + 1 + offset) % num_classes


def _normalizer(normalization, mean, std):
    """The map from [0, 1] images to the normalised ones."""
    if normalization == "standardize":
        mean, std = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
        return lambda image: (image - mean) / std
    if normalization == "symmetric":
        return lambda image: image * 2.0 - 1.0
    return lambda image: image


def load_dataset(name, split, batch_size, augment=None, data_dir=None, shuffle=None,
                 seed=None, drop_remainder=False, epochs=None, initial_epoch=0,
                 steps_per_epoch=None, *, classes=None, pairing=None, normalization=None,
                 **params):
    """A batched, normalised and (for training) augmented tf.data pipeline.

    Augmentation (`augmenter`), in [0, 1] space before normalisation, drawn
    per example: ``"pad_crop"`` (a 4-pixel zero pad and a random crop back
    to the image size; the default) or ``"random_resized_crop"`` (8%-100% of
    the area, resized back), each plus a random horizontal flip for natural
    images (cifar10, cifar100, fashion_mnist, image folders, imagenette,
    afhq, celeba_hq; not digits or mnist, whose flipped digits change
    meaning). Synthetic data is never augmented.

    Examples, by kind (see `DatasetInfo.kind`):

    - classification: ``(image float32 [H, W, C], label int32)``;
    - paired (``pairing="target_class"``, the default of afhq and celeba_hq):
      ``((image, source_label), target_label)``, the target a class other than
      the source, uniform among them, drawn from ``(seed, epoch, position)``
      like the augmentation: resuming replays the same pairs, and the
      ``(image, source_label)`` part equals the unpaired stream's;
    - synthetic: ``(inputs float32 [d], targets float32 [t])``, raw.

    Each epoch is a pure function of ``(seed, epoch)`` (see `epoch_stream`).

    Args:
        name: a registered dataset (`list_datasets()`).
        split: ``"train"`` or ``"test"``.
        batch_size: examples per batch.
        augment: None (``"pad_crop"`` on the train split only), True
            (``"pad_crop"`` on any split), False, or a name of `AUGMENTS`.
        data_dir: local data (see `branchzoo.data.sources`); default
            ``$BRANCHZOO_DATA_DIR``. Ignored by digits and synthetic data.
        shuffle: None (shuffle the train split only), True or False.
        seed: int seeding the shuffle, the augmentation and the pairing;
            None draws one.
        drop_remainder: drop the last, smaller batch of each epoch.
        epochs: None: one epoch per iteration, each iteration with a new
            epoch key (fresh order and augmentation, as ``model.fit`` expects
            of a finite dataset). An int: that many epochs back to back,
            numbered from `initial_epoch`, identical on every iteration (for
            ``fit(..., steps_per_epoch=...)``; train.py resumes this way).
        initial_epoch: number of the first epoch when `epochs` is an int.
        steps_per_epoch: keep only the first that many batches of each
            (shuffled) epoch: short runs on big datasets.
        classes: a subset of the classes, by name; labels 0..k-1 in this order.
        pairing: None (the dataset's default), ``"none"`` or ``"target_class"``.
        normalization: None (``"standardize"``; synthetic: ``"none"``),
            ``"standardize"``, ``"unit"`` ([0, 1]) or ``"symmetric"`` ([-1, 1]).
        **params: dataset parameters: ``image_size`` (int or (height,
            width): resize to cover, centre crop) for image datasets, the
            generator's for synthetic ones.

    Returns:
        A `tf.data.Dataset` of batches of the examples above.

    Example:
        >>> from branchzoo import data
        >>> ds = data.load_dataset("digits", "train", batch_size=32, seed=0)
        >>> images, labels = next(iter(ds))
        >>> tuple(images.shape), labels.dtype.name
        ((32, 32, 32, 3), 'int32')
    """
    options = resolve_options(name, classes, pairing, normalization, **params)
    split = check_split(split)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    check_augment(augment)
    if shuffle not in (None, True, False):
        raise ValueError(f"`shuffle` must be None, True or False. Received: shuffle={shuffle!r}")
    if seed is not None:
        check_int(seed, "seed")
    if epochs is not None:
        check_int(epochs, "epochs", minimum=1)
    check_int(initial_epoch, "initial_epoch", minimum=0)
    if steps_per_epoch is not None:
        check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
    spec = options.spec
    if spec.kind == "synthetic" and augment:
        raise ValueError(
            f"`augment` must be None or False for the synthetic dataset '{spec.name}' (there is "
            f"no augmentation of generated data). Received: augment={augment!r}"
        )
    seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)

    record = load_record(options, data_dir)
    count = int(len(record.labels[split]))
    if augment is None:
        augment = split == "train" and spec.kind != "synthetic"
    if augment is True:
        augment = "pad_crop"
    shuffle = split == "train" if shuffle is None else shuffle

    if spec.kind == "synthetic":
        inputs = tf.constant(record.images[split])
        targets = tf.constant(record.labels[split])

        def example(index, key):
            return tf.gather(inputs, index), tf.gather(targets, index)
    else:
        images = tf.constant(record.images[split])
        labels = tf.constant(record.labels[split].astype(np.int32))
        transform = augmenter(tuple(images.shape[1:]), spec.flippable, augment) if augment else None
        normalize = _normalizer(options.normalization, record.mean, record.std)
        num_classes = len(record.class_names)
        if options.pairing == "target_class" and num_classes < 2:
            raise ValueError(
                f"`pairing='target_class'` needs at least 2 classes. Received: {num_classes} "
                f"({', '.join(record.class_names)})"
            )

        def example(index, key):
            image = tf.cast(tf.gather(images, index), tf.float32) / 255.0
            if transform is not None:
                image = transform(image, key)
            label = tf.gather(labels, index)
            if options.pairing == "target_class":
                return (normalize(image), label), other_class(label, num_classes, key)
            return normalize(image), label

    return epoch_stream(
        count, example, batch_size, seed, shuffle=shuffle, epochs=epochs,
        initial_epoch=initial_epoch, drop_remainder=drop_remainder,
        steps_per_epoch=steps_per_epoch,
    )
