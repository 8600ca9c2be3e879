"""The built-in datasets, one `DatasetSpec` each (registered on import)."""

from branchzoo.data.readers import cifar_python, digits, idx, image_folder
from branchzoo.data.resize import check_image_size
from branchzoo.data.specs import DatasetSpec, register_dataset

DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_NAMES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl
    boy bridge bus butterfly camel can castle caterpillar cattle chair
    chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter
    palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
    rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper
    table tank telephone television tiger tractor train trout tulip turtle
    wardrobe whale willow_tree wolf woman worm""".split())
# Imagenette's class folders are WordNet ids; in this (sorted) order.
IMAGENETTE_WNIDS = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}
AFHQ_NAMES = ("cat", "dog", "wild")
CELEBA_HQ_NAMES = ("female", "male")


def _image_params(params):
    params["image_size"] = check_image_size(params["image_size"])
    return params


def _image_dataset(name, kind="classification", image_size=None, **kwargs):
    """A spec of an image dataset: every image dataset takes an ``image_size``."""
    return register_dataset(DatasetSpec(
        name=name, kind=kind, params={"image_size": image_size}, check_params=_image_params,
        **kwargs,
    ))


_IDX = idx.layout()
_FOLDER = image_folder.layout(test_folders=("test", "val"))

_image_dataset(
    "digits", class_names=DIGIT_NAMES, reader=digits.read, reader_version=digits.version,
    description="scikit-learn's 8x8 digits at 32x32x3 (offline default; 1437 train, 360 test)",
    reference="sklearn.datasets.load_digits",
)
_image_dataset(
    "mnist", class_names=DIGIT_NAMES, layouts=(_IDX,), tfds_name="mnist",
    description="MNIST handwritten digits, 28x28x1", reference="LeCun et al. 1998",
)
_image_dataset(
    "fashion_mnist", class_names=FASHION_MNIST_NAMES, layouts=(_IDX,), flippable=True,
    tfds_name="fashion_mnist", description="Fashion-MNIST, 28x28x1",
    reference="Xiao et al. 2017",
)
_image_dataset(
    "cifar10", class_names=CIFAR10_NAMES, flippable=True, tfds_name="cifar10",
    layouts=(
        cifar_python.layout("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                            ["test_batch"], b"labels", "batches.meta", b"label_names"),
        image_folder.layout(test_folders=("test",)),
    ),
    description="CIFAR-10, 32x32x3", reference="Krizhevsky 2009",
)
_image_dataset(
    "cifar100", class_names=CIFAR100_NAMES, flippable=True, tfds_name="cifar100",
    layouts=(
        cifar_python.layout("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta",
                            b"fine_label_names"),
        image_folder.layout(test_folders=("test",)),
    ),
    description="CIFAR-100 (fine labels), 32x32x3", reference="Krizhevsky 2009",
)
_image_dataset(
    "image_folder", layouts=(_FOLDER,), flippable=True,
    description="any train/<class>/*, test/ or val/<class>/* image tree (classes: train folders)",
)
_image_dataset(
    "imagenette", image_size=160, layouts=(image_folder.layout(test_folders=("val", "test")),),
    class_names=tuple(IMAGENETTE_WNIDS.values()), folder_names=IMAGENETTE_WNIDS,
    flippable=True, child_patterns=("imagenette*",),
    description="Imagenette (10 easy ImageNet classes; imagenette2, -320 or -160 folders), "
                "val/ as the test split, resized to cover image_size and centre-cropped",
    reference="https://github.com/fastai/imagenette; 003_4bdb2e82324dbf00.txt, Sec. 4",
)
_image_dataset(
    "afhq", kind="paired", layouts=(_FOLDER,), class_names=AFHQ_NAMES, flippable=True,
    child_patterns=("afhq*",),
    description="AFHQ (cat, dog, wild; StarGAN v2 layout train/, val/), served as class-transfer "
                "pairs",
    reference="Choi et al. 2020 (StarGAN v2); 000_a8fb4f73aa903839.txt, Sec. 7",
)
_image_dataset(
    "celeba_hq", kind="paired", layouts=(_FOLDER,), class_names=CELEBA_HQ_NAMES, flippable=True,
    child_patterns=("celebahq*",),
    description="CelebA-HQ (female, male; StarGAN v2 layout train/, val/), served as "
                "class-transfer pairs",
    reference="Karras et al. 2018; Choi et al. 2020 (StarGAN v2); 000_a8fb4f73aa903839.txt, Sec. 7",
)

# The generated datasets register themselves after the image ones.
from branchzoo.data import synthetic  # noqa: E402,F401
