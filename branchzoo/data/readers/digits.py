"""scikit-learn's bundled 8x8 digits: the offline default dataset (no files, no download)."""

import importlib.metadata

import numpy as np

SIZE = 32
TEST_SIZE = 0.2
RANDOM_STATE = 0


def version():
    """The cache key part: the decoded arrays depend on scikit-learn's copy of the data."""
    return f"sklearn{importlib.metadata.version('scikit-learn')}"


def read(params):
    """The digits at 32x32x3 uint8, split 80/20 (stratified, fixed).

    Values 0..16 are scaled to 0..255, resized bilinearly to 32x32 and
    replicated to 3 channels so every CIFAR-shaped model accepts them;
    ``random_state=0``: 1437 train, 360 test.
    """
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    scaled = digits.images.astype(np.float32)[..., None] * (255.0 / 16.0)
    resized = tf.image.resize(scaled, (SIZE, SIZE), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(resized), 0, 255).astype(np.uint8), 3, axis=-1)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_SIZE, stratify=labels, random_state=RANDOM_STATE,
    )
    return {"train": x_train, "test": x_test}, {"train": y_train, "test": y_test}, None
