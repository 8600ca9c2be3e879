"""What this machine's TensorFlow can do, probed once (shared by the benchmark scripts).

TensorFlow's CPU gradients of a grouped convolution (``tf.nn.conv2d`` with a
kernel of ``in_channels / groups`` input channels) exist only in its oneDNN
kernels, and TensorFlow turns oneDNN on by default only on x86 CPUs with
AVX-512 VNNI/BF16 or AMX (and off with ``TF_ENABLE_ONEDNN_OPTS=0``): elsewhere the
backward pass fails with "Gradients for grouped convolutions are not
supported on CPU". Reported on a 2-core AMD EPYC without AVX-512 (issue 9).
"""

import os

# "0" / "1" forces the probe's answer (tests use it to take both paths on any machine).
FORCE_ENV = "BRANCHZOO_TF_GROUPED_GRAD"
NOT_AVAILABLE = "n/a (no CPU gradient for grouped conv here)"
WHY_NOT = ("TensorFlow's CPU gradients of grouped convolutions need oneDNN, off by default on CPUs "
           "without AVX-512 VNNI/BF16 or AMX and under TF_ENABLE_ONEDNN_OPTS=0")


def tf_grouped_conv_trains():
    """Whether ``tf.nn.conv2d`` with a grouped kernel runs forward and both gradients here.

    One training step of a 4 -> 4 channel, 2-group 3x3 convolution in a
    ``tf.function`` (graph mode, as the benchmarks time it). ``$BRANCHZOO_TF_GROUPED_GRAD``
    set to ``0`` or ``1`` answers instead of the probe.

    Returns:
        bool.
    """
    forced = os.environ.get(FORCE_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise SystemExit(f"${FORCE_ENV} must be 0 or 1 (or unset to probe). Received: {forced!r}")
    import tensorflow as tf

    x, kernel = tf.ones((1, 4, 4, 4)), tf.ones((3, 3, 2, 4))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
        return tape.gradient(y, [x, kernel])

    try:
        step()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False
    return True
