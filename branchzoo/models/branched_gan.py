"""BranchedGAN: class transfer with a BranchedGenerator whose branches decompose images.

After 000_a8fb4f73aa903839.txt, Sec. 7 and Appendices D-E (Brokman &
Gilboa): a StarGAN v2-style class-transfer GAN (Choi et al. 2020) whose
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
- ``ClassTransferGANTask`` (``"class_transfer_gan"``): how train.py /
  evaluate.py train, evaluate and export it; a recipe's ``"generator"`` and
  ``"discriminator"`` hold each optimizer's settings.
- `DecompositionImages` (in `branchzoo.callbacks`): the TensorBoard callback logging a grid of inputs,
  translations and each branch's image every N steps.

    >>> gan = branched_gan(num_branches=2, input_shape=(16, 16, 3), dim_in=4, max_dim=8,
    ...                    discriminator_dim_in=4, discriminator_max_dim=8)
    >>> [m.name for m in (gan.generator, gan.discriminator)]
    ['generator', 'discriminator']
"""

import os

import keras
import numpy as np
from keras import ops

from branchzoo import precision, tasks
from branchzoo.analysis.decomposition import find_generator
from branchzoo.callbacks import DecompositionImages  # noqa: F401  (its TensorBoard callback; also importable here)
from branchzoo.layers import BranchedGenerator, MultiDomainDiscriminator
from branchzoo.layers.branched_generator import _check_float
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

    After 000_a8fb4f73aa903839.txt, Sec. 7 and Appendix E. Trains on batches
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

    After 000_a8fb4f73aa903839.txt, Sec. 7 and Appendices D-E. The generator
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


# -- training by recipe -----------------------------------------------------------

# The settings a recipe's "generator" / "discriminator" dict may hold.
GAN_OPTIMIZER_KEYS = ("optimizer", "lr", "beta_1", "beta_2", "weight_decay", "momentum", "nesterov",
                      "lr_decay_epochs", "lr_decay_factor")


def make_gan_optimizer(settings, steps_per_epoch, lr_scale=1.0, what="generator"):
    """One player's optimizer from recipe settings (Adam with betas by default, as StarGAN v2).

    Args:
        settings: dict of `GAN_OPTIMIZER_KEYS`; ``optimizer`` ``"adam"``
            (default; ``beta_1`` 0.0, ``beta_2`` 0.99 by default),
            ``"sgd"`` or ``"adamw"`` (`branchzoo.tasks.make_optimizer`).
        steps_per_epoch: steps of one epoch (for ``lr_decay_epochs``).
        lr_scale: factor on ``lr`` (train.py's ``--lr`` over the recipe's).
        what: ``"generator"`` or ``"discriminator"``, for error messages.
    """
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(GAN_OPTIMIZER_KEYS))
    if unknown:
        raise ValueError(
            f"Recipe `{what}` may set {list(GAN_OPTIMIZER_KEYS)}. Received: "
            + ", ".join(f"{k}={settings[k]!r}" for k in unknown)
        )
    settings.setdefault("optimizer", "adam")
    settings["lr"] = float(settings.get("lr", 1e-4)) * float(lr_scale)
    if settings["optimizer"] != "adam":
        return tasks.make_optimizer(settings, steps_per_epoch)
    boundaries = [int(round(e * steps_per_epoch)) for e in settings.get("lr_decay_epochs") or []]
    lr = settings["lr"]
    if boundaries:
        factor = settings.get("lr_decay_factor", 0.1)
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [settings["lr"] * factor**i for i in range(len(boundaries) + 1)])
    return keras.optimizers.Adam(learning_rate=lr, beta_1=settings.get("beta_1", 0.0),
                                 beta_2=settings.get("beta_2", 0.99),
                                 weight_decay=settings.get("weight_decay"))


@tasks.register_task
class ClassTransferGANTask(tasks.Task):
    """Class transfer with a `BranchedGAN`: pairs in, two optimizers, the generator exported.

    Recipe keys read here (besides the common ones):

    - ``"generator"``, ``"discriminator"``: each player's optimizer settings
      (`make_gan_optimizer`; default StarGAN v2's Adam, lr 1e-4, betas
      (0, 0.99)); ``--lr`` scales both by ``lr / recipe["lr"]``;
    - ``"log_images_every"``: generator steps between two decomposition grids
      in TensorBoard (default 200; 0: none).

    Data: the dataset's ``((image, source), target)`` pairs; the defaults
    ``pairing="target_class"`` and ``normalization="symmetric"`` apply
    under the run's ``dataset_options`` (so ``--dataset image_folder`` pairs
    any class-folder tree); no augmentation unless the run asks for it
    (the zero pad of the pad-crop would be a feature of real images only).
    Evaluation reads the test split with its pairs fixed (epoch 0).
    """

    name = TASK
    recipe_keys = ("generator", "discriminator", "log_images_every")
    # d_acc measures the discriminator, not the generator: near 50% it cannot tell translations from reals.
    metric_descriptions = {"d_acc": "discriminator accuracy on held-out real and translated images, 50% = fooled"}

    def _options(self, run):
        options = {"pairing": "target_class", "normalization": "symmetric", **run.get("dataset_options", {})}
        if options["pairing"] != "target_class":
            raise ValueError(
                f"The {TASK} task trains on class-transfer pairs: `pairing` must be 'target_class'. "
                f"Received: pairing={options['pairing']!r}"
            )
        return options

    def builder_kwargs(self, run, info):
        if info.kind == "synthetic" or info.num_classes < 2:
            raise ValueError(
                f"Model '{run.get('model')}' trains with the {TASK} task, which needs images of at "
                f"least 2 classes; {info.name!r} is of kind {info.kind!r} with {info.num_classes} "
                "classes. Pick an image dataset with --dataset (e.g. image_folder --data-dir DIR)."
            )
        self._options(run)
        return {"input_shape": list(info.image_shape), "num_classes": info.num_classes}

    def train_data(self, run, initial_epoch, epochs):
        from branchzoo import data

        return data.load_dataset(
            run["dataset"], "train", run["batch_size"], augment=run.get("augment") or False,
            data_dir=run["data_dir"], seed=run["seed"], epochs=epochs, initial_epoch=initial_epoch,
            steps_per_epoch=run["steps_per_epoch"], **self._options(run),
        )

    def test_data(self, run, steps=None):
        from branchzoo import data

        return data.load_dataset(run["dataset"], "test", run["batch_size"], data_dir=run["data_dir"],
                                 steps_per_epoch=steps, epochs=1, seed=run.get("seed") or 0,
                                 **self._options(run))

    def compile(self, model, run, phase, steps_per_epoch):
        recipe = run["recipe"]
        scale = float(phase["optimizer"].get("lr", recipe["lr"])) / float(recipe["lr"])
        model.compile(
            make_gan_optimizer(recipe.get("generator"), steps_per_epoch, scale, "generator"),
            make_gan_optimizer(recipe.get("discriminator"), steps_per_epoch, scale, "discriminator"),
            jit_compile=tasks.jit_compile_arg(run),
        )

    def compile_for_evaluation(self, model, recipe):
        model.compile()

    def build_optimizer_state(self, model):
        model.build_optimizers()

    def callbacks(self, run, model):
        every = int(run["recipe"].get("log_images_every", 200))
        if every <= 0:
            return []
        from branchzoo import data

        batch = next(iter(self.test_data(dict(run, batch_size=max(run["batch_size"], 64)), steps=1)))
        (images, source), target = batch
        source = np.asarray(source)
        rows = []
        for c in np.unique(source):
            rows += [int(i) for i in np.flatnonzero(source == c)[:3]]
        info = data.dataset_info(run["dataset"], data_dir=run["data_dir"], **self._options(run))
        return [DecompositionImages(run["logdir"], np.asarray(images)[rows], source[rows],
                                    np.asarray(target)[rows], every=every, class_names=info.class_names)]

    def optimizer_iterations(self, model):
        """The generator's updates (one per step; the discriminator's optimizer takes as many)."""
        return int(model.g_optimizer.iterations.numpy())

    def export_model(self, model):
        return model.generator

    def example_inputs(self, batch):
        (images, _), target = batch
        return [images, target]
