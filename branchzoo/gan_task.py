"""The class-transfer GAN task: how train.py and evaluate.py train, evaluate and export a `BranchedGAN`.

Zoo entries of `branchzoo.models.branched_gan` train with it (``"task":
"class_transfer_gan"``); `branchzoo.tasks` declares it, so the first
``get_task("class_transfer_gan")`` imports this module. A recipe's
``"generator"`` and ``"discriminator"`` hold each player's optimizer settings.

    >>> from branchzoo.tasks import get_task
    >>> type(get_task("class_transfer_gan")).__name__
    'ClassTransferGANTask'
"""

import numpy as np

from branchzoo import tasks

# The settings a recipe's "generator" / "discriminator" dict may hold.
GAN_OPTIMIZER_KEYS = ("optimizer", "lr", "beta_1", "beta_2", "weight_decay", "momentum", "nesterov",
                      "lr_decay_epochs", "lr_decay_factor")


def make_gan_optimizer(settings, steps_per_epoch, lr_scale=1.0, what="generator"):
    """One player's optimizer from recipe settings (Adam with betas by default, as StarGAN v2).

    Args:
        settings: dict of `GAN_OPTIMIZER_KEYS`; ``optimizer`` ``"adam"``
            (default; ``beta_1`` 0.0, ``beta_2`` 0.99 by default; its
            ``weight_decay`` is Keras' decoupled decay), ``"sgd"`` or
            ``"adamw"``; built by `branchzoo.tasks.make_optimizer`.
        steps_per_epoch: steps of one epoch (for ``lr_decay_epochs``).
        lr_scale: factor on ``lr`` (train.py's ``--lr`` over the recipe's).
        what: ``"generator"`` or ``"discriminator"``, for error messages.

    Example:

    >>> opt = make_gan_optimizer({"lr": 2e-4}, steps_per_epoch=10)
    >>> type(opt).__name__, round(float(opt.learning_rate), 6), opt.beta_1, opt.beta_2
    ('Adam', 0.0002, 0.0, 0.99)
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
    if settings["optimizer"] == "adam":
        settings.setdefault("beta_1", 0.0)
        settings.setdefault("beta_2", 0.99)
        if "weight_decay" in settings:  # StarGAN v2's Adam decays decoupled, not as coupled L2
            settings["decoupled_weight_decay"] = settings.pop("weight_decay")
    return tasks.make_optimizer(settings, steps_per_epoch)


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

    name = "class_transfer_gan"
    recipe_keys = ("generator", "discriminator", "log_images_every")
    # d_acc measures the discriminator, not the generator: near 50% it cannot tell translations from reals.
    metric_descriptions = {"d_acc": "discriminator accuracy on held-out real and translated images, 50% = fooled"}

    def _options(self, run):
        options = {"pairing": "target_class", "normalization": "symmetric", **run.get("dataset_options", {})}
        if options["pairing"] != "target_class":
            raise ValueError(
                f"The {self.name} task trains on class-transfer pairs: `pairing` must be 'target_class'. "
                f"Received: pairing={options['pairing']!r}"
            )
        return options

    def builder_kwargs(self, run, info):
        if info.kind == "synthetic" or info.num_classes < 2:
            raise ValueError(
                f"Model '{run.get('model')}' trains with the {self.name} task, which needs images of at "
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
        from branchzoo.callbacks import DecompositionImages

        batch = next(iter(self.test_data(dict(run, batch_size=max(run["batch_size"], 64)), steps=1)))
        (images, source), target = batch
        source = np.asarray(source)
        rows = []
        for c in np.unique(source):
            rows += [int(i) for i in np.flatnonzero(source == c)[:3]]
        info = data.dataset_info(run["dataset"], data_dir=run["data_dir"], **self._options(run))
        return [DecompositionImages(run["logdir"], np.asarray(images)[rows], source[rows],
                                    np.asarray(target)[rows], every=every, class_names=info.class_names,
                                    step=self.optimizer_iterations)]

    def optimizer_iterations(self, model):
        """The generator's updates (one per step; the discriminator's optimizer takes as many)."""
        return int(model.g_optimizer.iterations.numpy())

    def analysis_sample(self, data, max_batches, batch_size, seed):
        """The first `max_batches` batches: pairs are not ``(x, y)`` arrays to draw examples from."""
        return data.take(max_batches)

    def export_model(self, model):
        """The generator: what serves translations."""
        return model.generator

    def example_inputs(self, batch):
        (images, _), target = batch
        return [images, target]
