"""Registries: names to objects, and the one error for a name nobody registered.

Builders (here), tasks (`branchzoo.tasks`), analyses
(`branchzoo.analysis.registry`) and zoo entries (`branchzoo.zoo`) are each a
`Registry`. An unknown name raises `UnknownName`, a ValueError whose one-line
message gives close matches; train.py, evaluate.py and
``python -m branchzoo.publish`` print it and exit 2.

Builders follow timm's ``@register_model``: ``branchzoo/models/<family>.py``
decorates its generic builder with `register_builder`, and every named model
under ``zoo_models/`` points at one builder with a config.

    >>> colours = Registry("colour")
    >>> colours.register("red", (255, 0, 0))
    (255, 0, 0)
    >>> colours.get("rde")
    Traceback (most recent call last):
    ...
    branchzoo.registry.UnknownName: Unknown colour 'rde'. Close matches: red. Registered colours: red.
"""

import difflib
import importlib


class UnknownName(ValueError):
    """A name no registry holds (a ValueError: ``except ValueError`` catches it).

    Attributes:
        kind: what was looked up (``"builder"``, ``"task"``, ...).
        name: the name received.
        close: the registered names closest to it.
    """

    def __init__(self, message, kind=None, name=None, close=()):
        super().__init__(message)
        self.kind, self.name, self.close = kind, name, list(close)


class Registry:
    """Names to objects: `register` refuses a second object under a name, `get` names close matches.

    An entry may be declared before it is registered: ``modules={name:
    module}`` says that importing ``module`` registers ``name``, so it is
    listed without importing anything and imported on its first `get` (the
    way plug-ins declared by entry points load). `load` imports the modules
    that register entries nobody declared; it runs once, before listing or
    before looking up a name neither registered nor declared.

    Args:
        kind: what an entry is, for messages (``"builder"``).
        plural: its plural (default ``kind + "s"``).
        modules: ``{name: module}`` of declared entries.
        load: ``fn()`` importing the modules that register the rest.
        listing: what an error says instead of listing every name (for long registries).

    Example:

    >>> shapes = Registry("shape")
    >>> shapes.register("square", 4)
    4
    >>> shapes.names(), "square" in shapes, shapes.get("square")
    (['square'], True, 4)
    """

    def __init__(self, kind, plural=None, modules=None, load=None, listing=None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.listing = listing
        self._objects = {}
        self._modules = dict(modules or {})
        self._load = load

    def register(self, name, obj):
        """Registers `obj` as `name`; returns it. Registering an equal object again changes nothing."""
        if name in self._objects and self._objects[name] != obj:
            raise ValueError(f"A {self.kind} named '{name}' is already registered.")
        self._objects[name] = obj
        return obj

    def _loaded(self):
        if self._load is not None:
            load, self._load = self._load, None
            try:
                load()
            except BaseException:
                self._load = load  # tried again next time
                raise

    def get(self, name, where=None):
        """The object registered as `name`; `UnknownName` (naming `where` it came from) otherwise."""
        if not isinstance(name, str):
            raise self.unknown(name, where)
        if name not in self._objects and name in self._modules:
            importlib.import_module(self._modules[name])
            if name not in self._objects:
                raise LookupError(f"Importing {self._modules[name]} registered no {self.kind} named {name!r}.")
        if name not in self._objects and name not in self._modules:
            self._loaded()
        if name not in self._objects:
            raise self.unknown(name, where)
        return self._objects[name]

    def names(self):
        """Every registered or declared name, sorted."""
        self._loaded()
        return sorted(set(self._objects) | set(self._modules))

    def items(self):
        """``(name, object)`` of every registered entry (declared ones not yet imported are left out)."""
        self._loaded()
        return sorted(self._objects.items())

    def __contains__(self, name):
        return name in self._objects or name in self._modules

    def unknown(self, name, where=None):
        """The `UnknownName` error for `name`: close matches, then the registered names."""
        known = self.names()
        text = str(name)
        close = difflib.get_close_matches(text, known, n=5, cutoff=0.5)
        if text:
            close += [k for k in known if text.lower() in k.lower() and k not in close][: 5 - len(close)]
        message = f"Unknown {self.kind} {name!r}{f' in {where}' if where else ''}."
        if close:
            message += f" Close matches: {', '.join(close)}."
        message += " " + (self.listing or f"Registered {self.plural}: {', '.join(known) or 'none'}.")
        return UnknownName(message, kind=self.kind, name=name, close=close)


# -- builders -------------------------------------------------------------------

# The builders of branchzoo.models and their families. Listing and model cards read this without
# importing Keras; `register_builder` refuses a family that disagrees, and the first lookup of a
# builder imports branchzoo.models.
FAMILIES = {
    "alexnet": "branch_specialization",
    "branched_gan": "branched_gan",
    "branched_mlp": "branchsum",
    "branched_resnet18": "branchsum",
    "branched_stem_cnn": "branch_specialization",
    "densenet": "densenet",
    "inception_v1": "branch_specialization",
    "modular_cnn": "modular",
    "modular_densenet_bc": "modular",
    "modular_mlp": "modular",
    "mpnet": "mpnet",
    "resnet": "resnet",
    "resnext_cifar": "resnext_gated",
    "vgg": "vgg",
}

BUILDERS = Registry("builder", modules=dict.fromkeys(FAMILIES, "branchzoo.models"))


def register_builder(name, family=None, paper=None, task=None, title=None):
    """Registers `fn` as the builder called `name` (decorator).

    Args:
        name: the key zoo entries use in their ``"builder"`` field.
        family: family name shown in model cards (default: `FAMILIES`' for
            branchzoo's builders, else `name`).
        paper: the source paper's file name (docs/papers.md).
        task: the `branchzoo.tasks` task its models train with (default
            ``"classification"``; a recipe's ``"task"`` overrides it).
        title: ``fn(config) -> str``, the architecture's name in the paper's
            notation for a zoo entry's config (shown in the README table).
    """
    declared = FAMILIES.get(name)
    family = family or declared or name
    if declared is not None and family != declared:
        raise ValueError(f"`family` of builder '{name}' must be {declared!r} (registry.FAMILIES). "
                         f"Received: family={family!r}")

    def decorator(fn):
        BUILDERS.register(name, {"fn": fn, "family": family, "paper": paper, "task": task, "title": title})
        fn.builder_name = name
        return fn

    return decorator


def get_builder(name, where=None):
    """The registry record (dict with ``fn``, ``family``, ``paper``, ``task``, ``title``) of `name`."""
    return BUILDERS.get(name, where)


def builder_family(name, where=None):
    """The family of builder `name`; branchzoo's own are known without importing Keras."""
    return FAMILIES[name] if name in FAMILIES else get_builder(name, where)["family"]


def builder_names():
    """Every builder's name, sorted."""
    return BUILDERS.names()
