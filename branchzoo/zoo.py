"""The model zoo: named models, their cards and their weights.

Every named model is a JSON entry under ``zoo_models/`` (data, not code, after
keras-hub presets): the builder it calls, its config, the recipe that trains
it and, when published, its weights file with sha256 and the metrics measured
on it by ``evaluate.py``.

    >>> import branchzoo
    >>> "mpnet2_2x3_2x7_cifar10" in branchzoo.list_models("mpnet*")
    True
    >>> branchzoo.model_card("mpnet2_2x3_2x7_cifar10")["family"]
    'mpnet'
"""

import copy
import fnmatch
import json
import math
import os
import sys

from branchzoo import download, registry
from branchzoo._home import branchzoo_home  # noqa: F401  (zoo.branchzoo_home stays public)

REQUIRED_KEYS = ("name", "builder", "config", "dataset", "recipe")


def zoo_dir():
    """The folder holding the zoo entries.

    ``$BRANCHZOO_ZOO_DIR`` when set; else ``zoo_models/`` of the source tree
    (editable installs, checkouts); else the copy installed under
    ``<prefix>/share/branchzoo/zoo_models``.
    """
    env = os.environ.get("BRANCHZOO_ZOO_DIR")
    if env:
        return env
    candidates = [
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo_models"),
        os.path.join(sys.prefix, "share", "branchzoo", "zoo_models"),
    ]
    for path in candidates:
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(
        f"No zoo_models folder found (looked in {candidates}). "
        "Set BRANCHZOO_ZOO_DIR to the folder holding the zoo entries."
    )


_CACHE = {}


def _entries():
    """Reads (once per zoo folder) every entry; returns a `Registry` of entries by name and alias."""
    folder = zoo_dir()
    if folder in _CACHE:
        return _CACHE[folder]
    entries = registry.Registry("model name", plural="models",
                                listing="See branchzoo.list_models() for every registered model.")
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".json"):
            continue
        path = os.path.join(folder, fname)
        with open(path) as f:
            try:
                entry = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"Zoo entry {path} is not valid JSON: {e}") from None
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ValueError(f"Zoo entry {path} lacks the keys {missing}.")
        if entry["name"] + ".json" != fname:
            raise ValueError(
                f"Zoo entry {path} is named '{entry['name']}': the file must be "
                f"called '{entry['name']}.json'."
            )
        entry["_path"] = path
        if entry["name"] in entries:
            raise ValueError(f"Zoo entry {path} is named '{entry['name']}', an alias of "
                             f"'{entries.get(entry['name'])['name']}'.")
        entries.register(entry["name"], entry)
        for alias in entry.get("aliases", []):
            if alias in entries:
                raise ValueError(
                    f"Alias '{alias}' is claimed by both '{entries.get(alias)['name']}' and '{entry['name']}'."
                )
            entries.register(alias, entry)
    _CACHE[folder] = entries
    return entries


def clear_cache():
    """Forgets the entries read so far (after editing zoo_models/)."""
    _CACHE.clear()


def list_models(pattern="*", pretrained=False):
    """Names of the registered models matching an fnmatch `pattern`.

    Args:
        pattern: shell-style wildcard, e.g. ``"mpnet*"``.
        pretrained: only models with published weights.

    Returns:
        Sorted list of model names (aliases are not listed).
    """
    return sorted(
        name
        for name, entry in _entries().items()
        if name == entry["name"] and fnmatch.fnmatch(name, pattern) and (entry.get("weights") or not pretrained)
    )


def get_entry(name):
    """The zoo entry (a dict, read-only by convention) for `name` or an alias."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a model name string. Received: name={name!r}")
    return _entries().get(name)


def builder(name):
    """The registry record of the builder that the entry `name` names (`registry.get_builder`)."""
    entry = get_entry(name)
    return registry.get_builder(entry["builder"], where=f"zoo entry {entry['_path']}")


def resolve_name(name):
    """The canonical entry name for `name` (which may be an alias)."""
    return get_entry(name)["name"]


def resolved_config(name, **overrides):
    """The builder config of `name` with `overrides` applied."""
    entry = get_entry(name)
    config = copy.deepcopy(entry["config"])
    config.update(overrides)
    return config


def check_builder_arguments(name, arguments):
    """Raises ValueError naming any of `arguments` that the builder of `name` does not take."""
    import inspect

    fn = builder(name)["fn"]
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(arguments) - set(params))
    if unknown:
        accepted = [p for p in params if p != "name"]
        raise ValueError(
            f"Model '{resolve_name(name)}' (builder '{fn.__name__}') takes no argument "
            f"{', '.join(repr(u) for u in unknown)}. Its arguments: {', '.join(accepted)}. "
            f"Received: {', '.join(f'{u}={arguments[u]!r}' for u in unknown)}"
        )


def build(name, **overrides):
    """Builds the named model, untrained.

    Args:
        name: a name from `list_models()` or an alias (e.g. ``"mpnet"``).
        **overrides: builder arguments replacing the entry's config
            (``num_classes=100``, ``input_shape=(64, 64, 3)``, ...).

    Returns:
        A `keras.Model`.
    """
    entry = get_entry(name)
    record = builder(name)
    check_builder_arguments(name, overrides)
    config = resolved_config(name, **overrides)
    config.setdefault("name", entry["name"])
    return record["fn"](**config)


def count_parameters(model):
    """Trainable and total (incl. BN moving statistics) parameter counts of a model."""
    return {
        "trainable": int(sum(math.prod(w.shape) for w in model.trainable_weights)),
        "total": int(model.count_params()),
    }


def model_card(name):
    """Everything known about a named model, as a dict.

    Keys: name, aliases, family, builder, paper, description, config,
    parameters (trainable/total, as listed in the entry and checked by the
    tests), dataset, recipe, metrics (measured by evaluate.py; None when
    unpublished), weights (file, sha256, origin; None when unpublished),
    baseline (the entry this one is measured against, or None) and comparison
    (its headline test metric against the baseline's, written by
    ``python -m branchzoo.publish``; None until both are published).
    """
    entry = get_entry(name)
    family = registry.builder_family(entry["builder"], where=f"zoo entry {entry['_path']}")
    card = {
        "name": entry["name"],
        "aliases": list(entry.get("aliases", [])),
        "family": family,
        "builder": entry["builder"],
        "paper": entry["paper"] if "paper" in entry else builder(name)["paper"],
        "description": entry.get("description", ""),
        "config": entry["config"],
        "parameters": entry.get("parameters"),
        "dataset": entry["dataset"],
        "recipe": entry["recipe"],
        "metrics": entry.get("metrics"),
        "weights": entry.get("weights"),
        "baseline": entry.get("baseline"),
        "comparison": entry.get("comparison"),
    }
    return copy.deepcopy(card)


def load(name, weights="default", **overrides):
    """Builds the named model and loads weights into it.

    Args:
        name: a name from `list_models()` or an alias.
        weights: ``"default"`` (the published weights, fetched and verified
            into the cache), ``None`` (untrained), or a path to a local
            ``.weights.h5`` / ``.keras`` file.
        **overrides: builder arguments, as for `build()`.

    Returns:
        A `keras.Model`.
    """
    entry = get_entry(name)
    if weights is None:
        return build(name, **overrides)
    if weights == "default":
        if not entry.get("weights"):
            alternative = entry.get("pretrained_alternative")
            hint = ""
            if alternative:
                published = bool(get_entry(alternative).get("weights"))
                hint = (f" Published weights of the same family: branchzoo.load('{alternative}')." if published
                        else f" The family's weights are published under '{alternative}' (none trained yet).")
            raise ValueError(
                f"Model '{entry['name']}' has no published weights. Build it untrained "
                f"with branchzoo.load('{entry['name']}', weights=None) (or branchzoo.build), "
                f"or train it with: {entry['recipe'].get('command', 'python train.py --model ' + entry['name'])}."
                + hint
            )
        path = fetch_weights(entry["name"])
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"`weights` must be 'default', None or the path of an existing weights "
                f"file. Received: weights={weights!r} (no such file)"
            )
    else:
        raise ValueError(
            f"`weights` must be 'default', None or a file path. Received: weights={weights!r}"
        )
    model = build(name, **overrides)
    model.load_weights(path)
    return model


def fetch_weights(name):
    """Fetches the published weights of `name` into the cache; returns the path."""
    entry = get_entry(name)
    if not entry.get("weights"):
        raise ValueError(f"Model '{entry['name']}' has no published weights.")
    return download.fetch_weights(entry)
