"""BranchedGAN: class transfer with a BranchedGenerator whose branches decompose images.

After Brokman & Gilboa (2022), Sec. 7 and Appendices D-E: a
StarGAN v2-style class-transfer GAN (Choi et al. 2020) whose
generator is a sum of slim generators plus a smoothing of the input,
``G(x, c) = sum_i G_i(x_i, c) + S(x)`` (`branchzoo.layers.BranchedGenerator`),
judged by a multi-domain discriminator
(`branchzoo.layers.MultiDomainDiscriminator`). The paper trains with the
adversarial loss alone (App. E: none of StarGAN v2's additional loss terms;
no cycle, style-reconstruction or diversity losses, fidelity to the input
comes from the ``+ S(x)`` term); the adversarial loss here is StarGAN v2's
non-saturating one. The R1 penalty on reals (StarGAN v2's ``lambda_reg =
1``) is our addition, not in the paper: ``r1_weight`` sets it, 1 by default;
``r1_weight=0`` trains the paper's objective, the adversarial loss alone.

- `BranchedGAN`: a `keras.Model` with its own ``train_step`` (TensorFlow
  backend: `tf.GradientTape`, one discriminator then one generator update
  per batch, each by its own optimizer; works with ``compile`` / ``fit``
  and under `tf.distribute.MirroredStrategy`), ``test_step`` (held-out
  discriminator accuracy on reals and translations, per-branch energy) and
  ``decompose``.
- ``branched_gan``: the zoo builder (generator and discriminator as
  functional models inside the GAN).

Its zoo entries train with the ``"class_transfer_gan"`` task
(`branchzoo.gan_task`: data pairs, both optimizers, the generator exported,
decomposition grids in TensorBoard).

    >>> gan = branched_gan(num_branches=2, input_shape=(16, 16, 3), dim_in=4, max_dim=8,
    ...                    discriminator_dim_in=4, discriminator_max_dim=8)
    >>> [m.name for m in (gan.generator, gan.discriminator)]
    ['generator', 'discriminator']
"""

import keras
import numpy as np
from keras import ops

from branchzoo import precision
from branchzoo.layers import BranchedGenerator, MultiDomainDiscriminator
from branchzoo.layers.branched_generator import _check_float, find_generator
from branchzoo.registry import register_builder

PAPER = "000_a8fb4f73aa903839.txt"
TASK = "class_transfer_gan"


def select_logit(logits, classes):
    """``logits[b, classes[b]]``: each image's logit for its own class."""
    classes = ops.expand_dims(ops.reshape(ops.cast(classes, "int32"), (-1,)), 1)
    return ops.take_along_axis(logits, classes, axis=1)[:, 0]


def real_loss(logits):
    """Per-example binary cross-entropy towards "real": ``softplus(-logit)``."""
    return ops.softplus(-logits)


def fake_loss(logits):
    """Per-example binary cross-entropy towards "fake": ``softplus(logit)``."""
    return ops.softplus(logits)


def default_optimizer():
    """StarGAN v2's optimizer: Adam, learning rate 1e-4, betas (0, 0.99)."""
    return keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.99)


@keras.saving.register_keras_serializable(package="branchzoo")
class BranchedGAN(keras.Model):
    """A class-transfer GAN: BranchedGenerator, multi-domain discriminator, adversarial loss (+ optional R1).

    After Brokman & Gilboa (2022), Sec. 7 and Appendix E. Trains on batches
    ``((images, source_classes), target_classes)`` (`branchzoo.data` with
    ``pairing="target_class"``). Each ``train_step``:

    1. discriminator: ``softplus(-D(x)[source]) + softplus(D(G(x, target))[target])
       + r1_weight * 0.5 * |d D(x)[source] / d x|^2`` (R1 on reals), averaged
       over the batch;
    2. generator: ``softplus(-D(G(x, target))[target])`` (non-saturating),
       against the discriminator just updated (StarGAN v2's order).

    The paper's objective is the adversarial loss alone (App. E): that is
    ``r1_weight=0``, where the R1 term is neither computed nor reported.
    The R1 penalty (``r1_weight > 0``, 1 by default as in StarGAN v2) is our
    addition.

    Under a `tf.distribute` strategy each replica's mean loss is divided by
    the number of replicas before its gradients are summed across replicas,
    so a step equals the single-device step on the same global batch. A GAN
    built under the ``mixed_float16`` dtype policy trains with dynamic loss
    scaling: `compile` wraps each player's optimizer in a
    ``keras.optimizers.LossScaleOptimizer`` (as ``Model.compile`` does for
    one optimizer), whose scale each update's loss is multiplied by (the
    R1 term's inner gradient is taken unscaled).
    Metrics are per-example means over the epoch: training reports
    ``d_loss`` (R1 included), ``g_loss``, ``r1`` (unweighted; only when
    ``r1_weight > 0``), ``d_real_acc`` (reals with
    a positive logit) and ``d_fake_acc`` (translations with a negative
    logit, before the update); evaluation reports ``d_loss`` (without R1),
    ``g_loss``, ``d_real_acc``, ``d_fake_acc``, their mean ``d_acc``,
    ``smooth_energy`` and ``branch{i}_energy`` (mean square of each
    branch's image).

    Args:
        generator: a `keras.Model` ``[images, target_classes] -> images``
            holding a `BranchedGenerator`.
        discriminator: a `keras.Model` ``images -> [batch, num_classes]`` logits.
        r1_weight: weight of the R1 penalty on reals (default 1, StarGAN
            v2's; not in the paper). 0: the paper's adversarial loss alone.

    Returns:
        Called on ``[images, target_classes]``: the translations.

    Example:

    >>> gan = branched_gan(num_branches=2, input_shape=(16, 16, 3), dim_in=4, max_dim=8,
    ...                    discriminator_dim_in=4, discriminator_max_dim=8)
    >>> gan.compile()   # StarGAN v2's Adam for both players unless given
    >>> sorted(gan.decompose(np.zeros((1, 16, 16, 3), "float32"), [1]))
    ['branches', 'image', 'smooth']
    """

    def __init__(self, generator, discriminator, r1_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.r1_weight = _check_float(r1_weight, "r1_weight", minimum=0.0, exclusive=False)
        self.num_branches = find_generator(generator).num_branches
        names = ["d_loss", "g_loss", "r1", "d_real_acc", "d_fake_acc", "d_acc", "smooth_energy"]
        names += [f"branch{i + 1}_energy" for i in range(self.num_branches)]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.g_optimizer = None
        self.d_optimizer = None
        self.built = generator.built and discriminator.built

    @property
    def generator_layer(self):
        """The `BranchedGenerator` layer of the generator."""
        return find_generator(self.generator)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def decompose(self, images, target_classes):
        """The generator's ``{"image", "branches", "smooth"}`` for `images` sent to `target_classes`."""
        classes = ops.convert_to_tensor(np.asarray(target_classes, "int32"))
        return self.generator_layer([ops.convert_to_tensor(images), classes], return_branches=True)

    def compile(self, g_optimizer=None, d_optimizer=None, auto_scale_loss=True, **kwargs):
        """Sets the two optimizers (default: `default_optimizer` each) and Keras' compile options.

        With ``auto_scale_loss`` (default) and a generator or discriminator
        computing in float16 (built under ``mixed_float16``, or loaded from
        such a file), each optimizer is wrapped in a ``LossScaleOptimizer``.
        """
        kwargs.pop("optimizer", None)
        super().compile(optimizer=None, **kwargs)
        self.g_optimizer = self._loss_scaled(g_optimizer or default_optimizer(), auto_scale_loss)
        self.d_optimizer = self._loss_scaled(d_optimizer or default_optimizer(), auto_scale_loss)
        if self.built:
            # Now, in the caller's strategy scope: created lazily in the first (traced, per-replica)
            # step, a MirroredStrategy cannot initialise the slot variables.
            self.build_optimizers()

    def _loss_scaled(self, optimizer, auto_scale_loss):
        if (auto_scale_loss and precision.model_precision(self) == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def get_compile_config(self):
        return None  # two optimizers: compiled again by the task, not from the file

    def build_optimizers(self):
        """Creates both optimizers' variables (at compile; before a backup is restored into them)."""
        for optimizer, net in ((self.g_optimizer, self.generator), (self.d_optimizer, self.discriminator)):
            if not optimizer.built:
                optimizer.build(net.trainable_variables)

    def _update(self, values):
        for name, value in values.items():
            self._trackers[name].update_state(value)

    def train_step(self, data):
        import tensorflow as tf

        (images, source), target = data
        images = ops.convert_to_tensor(images)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync

        fake = ops.stop_gradient(self.generator([images, target], training=True))
        d_vars = self.discriminator.trainable_variables
        use_r1 = self.r1_weight > 0
        with tf.GradientTape() as tape:
            if use_r1:
                with tf.GradientTape() as r1_tape:
                    r1_tape.watch(images)
                    real_logits = select_logit(self.discriminator(images, training=True), source)
                    real_total = ops.sum(real_logits)
                grad = r1_tape.gradient(real_total, images)
                r1 = 0.5 * ops.sum(ops.square(grad), axis=(1, 2, 3))
            else:
                real_logits = select_logit(self.discriminator(images, training=True), source)
            fake_logits = select_logit(self.discriminator(fake, training=True), target)
            d_per_example = real_loss(real_logits) + fake_loss(fake_logits)
            if use_r1:
                d_per_example = d_per_example + self.r1_weight * r1
            d_loss = ops.mean(d_per_example) / replicas
            scaled = self.d_optimizer.scale_loss(d_loss)  # the loss itself unless loss-scaled (mixed_float16)
        grads = tape.gradient(scaled, d_vars)
        self.d_optimizer.apply_gradients(zip(grads, d_vars))

        g_vars = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            translated = self.generator([images, target], training=True)
            g_per_example = real_loss(select_logit(self.discriminator(translated, training=True), target))
            g_loss = ops.mean(g_per_example) / replicas
            scaled = self.g_optimizer.scale_loss(g_loss)
        grads = tape.gradient(scaled, g_vars)
        self.g_optimizer.apply_gradients(zip(grads, g_vars))

        values = {
            "d_loss": d_per_example, "g_loss": g_per_example,
            "d_real_acc": ops.cast(real_logits > 0, "float32"),
            "d_fake_acc": ops.cast(fake_logits < 0, "float32"),
        }
        if use_r1:
            values["r1"] = r1
        self._update(values)
        return {n: self._trackers[n].result() for n in ("d_loss", "g_loss", "r1", "d_real_acc", "d_fake_acc")
                if n in values}

    def test_step(self, data):
        (images, source), target = data
        out = self.generator_layer([images, target], return_branches=True)
        real_logits = select_logit(self.discriminator(images, training=False), source)
        fake_logits = select_logit(self.discriminator(out["image"], training=False), target)
        real_acc = ops.cast(real_logits > 0, "float32")
        fake_acc = ops.cast(fake_logits < 0, "float32")
        energy = ops.mean(ops.square(out["branches"]), axis=(2, 3, 4))  # [batch, N]
        values = {
            "d_loss": real_loss(real_logits) + fake_loss(fake_logits),
            "g_loss": real_loss(fake_logits),
            "d_real_acc": real_acc,
            "d_fake_acc": fake_acc,
            "d_acc": 0.5 * (real_acc + fake_acc),
            "smooth_energy": ops.mean(ops.square(out["smooth"]), axis=(1, 2, 3)),
        }
        values.update({f"branch{i + 1}_energy": energy[:, i] for i in range(self.num_branches)})
        self._update(values)
        return {n: self._trackers[n].result() for n in values}

    def get_config(self):
        return {
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "r1_weight": self.r1_weight,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        generator = keras.saving.deserialize_keras_object(config.pop("generator"))
        discriminator = keras.saving.deserialize_keras_object(config.pop("discriminator"))
        return cls(generator, discriminator, **config)


def _title(config):
    """The README's architecture column for an entry's config."""
    n = config.get("num_branches", 4)
    size = (config.get("input_shape") or [32])[0]
    return (f"BranchedGenerator({n} x StarGAN v2 {config.get('dim_in', 8)}/{config.get('max_dim', 64)}, "
            f"S={config.get('smoothing', 'gaussian')}), {size} px")


@register_builder("branched_gan", family="branched_gan", paper=PAPER, task=TASK, title=_title)
def branched_gan(
    num_branches=4,
    num_classes=2,
    input_shape=(32, 32, 3),
    dim_in=8,
    max_dim=64,
    style_dim=64,
    num_downsamples=None,
    smoothing="gaussian",
    smoothing_sigma=2.0,
    diffusion_dt=0.2,
    diffusion_filters=16,
    diffusion_layers=8,
    output_initializer="he_normal",
    discriminator_dim_in=16,
    discriminator_max_dim=128,
    discriminator_downsamples=None,
    r1_weight=1.0,
    name=None,
):
    """Builds a `BranchedGAN`: a BranchedGenerator and a multi-domain discriminator.

    After Brokman & Gilboa (2022), Sec. 7 and Appendices D-E. The generator
    is the functional model ``generator`` (inputs ``image`` ``[H, W, C]`` and
    ``target_class`` int32 ``[]``; output the translation; its layer
    ``branched_generator``), the discriminator the functional model
    ``discriminator`` (``image`` -> ``[num_classes]`` logits).

    Args:
        num_branches, num_classes, dim_in, max_dim, style_dim,
        num_downsamples, smoothing, smoothing_sigma, diffusion_dt,
        diffusion_filters, diffusion_layers, output_initializer: the
            `BranchedGenerator`'s (``dim_in=8, max_dim=64`` is the paper's
            slim branch: 0.59M parameters at 256 px).
        input_shape: ``(H, W, C)`` of the images.
        discriminator_dim_in, discriminator_max_dim, discriminator_downsamples:
            the `MultiDomainDiscriminator`'s ``dim_in``, ``max_dim``,
            ``num_downsamples``.
        r1_weight: weight (>= 0) of the R1 penalty on reals, our addition
            (default 1, StarGAN v2's); 0 is the paper's objective (App. E:
            the adversarial loss alone).
        name: model name (default ``"branched_gan"``).

    Returns:
        A built `BranchedGAN` (compile it, or let train.py's task do it).

    Example:

    >>> gan = branched_gan(num_branches=2, input_shape=(16, 16, 3), dim_in=4, max_dim=8,
    ...                    discriminator_dim_in=4, discriminator_max_dim=8)
    >>> tuple(gan.generator.output.shape)
    (None, 16, 16, 3)
    """
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") or len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels). Received: input_shape={input_shape!r}"
        )
    input_shape = tuple(int(d) for d in input_shape)
    image = keras.Input(input_shape, name="image")
    target = keras.Input((), dtype="int32", name="target_class")
    layer = BranchedGenerator(
        num_branches, num_classes, dim_in=dim_in, max_dim=max_dim, style_dim=style_dim,
        num_downsamples=num_downsamples, smoothing=smoothing, smoothing_sigma=smoothing_sigma,
        diffusion_dt=diffusion_dt, diffusion_filters=diffusion_filters,
        diffusion_layers=diffusion_layers, output_initializer=output_initializer,
        name="branched_generator",
    )
    generator = keras.Model([image, target], layer([image, target]), name="generator")
    judged = keras.Input(input_shape, name="image")
    critic = MultiDomainDiscriminator(num_classes, dim_in=discriminator_dim_in, max_dim=discriminator_max_dim,
                                      num_downsamples=discriminator_downsamples, name="multi_domain_discriminator")
    discriminator = keras.Model(judged, critic(judged), name="discriminator")
    return BranchedGAN(generator, discriminator, r1_weight=r1_weight, name=name or "branched_gan")
