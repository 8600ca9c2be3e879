"""The builder registry: family builders register here, zoo entries (data) name them.

After timm's ``@register_model``: ``branchzoo/models/<family>.py`` decorates its
generic builder, and every named model under ``zoo_models/`` points at one
builder with a config.
"""

import difflib

_BUILDERS = {}


def register_builder(name, family=None, paper=None, task=None, title=None):
    """Registers `fn` as the builder called `name` (decorator).

    Args:
        name: the key zoo entries use in their ``"builder"`` field.
        family: family name shown in model cards (defaults to `name`).
        paper: the source paper's file name under ``../shared/seeds``.
        task: the `branchzoo.tasks` task its models train with (default
            ``"classification"``; a recipe's ``"task"`` overrides it).
        title: ``fn(config) -> str``, the architecture's name in the paper's
            notation for a zoo entry's config (shown in the README table).
    """

    def decorator(fn):
        if name in _BUILDERS and _BUILDERS[name]["fn"] is not fn:
            raise ValueError(f"A builder named '{name}' is already registered.")
        _BUILDERS[name] = {"fn": fn, "family": family or name, "paper": paper, "task": task,
                           "title": title}
        fn.builder_name = name
        return fn

    return decorator


def get_builder(name):
    """Returns the registry record (dict with ``fn``, ``family``, ``paper``) of `name`."""
    try:
        return _BUILDERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"Unknown builder '{name}'. Registered builders: {sorted(_BUILDERS)}.{hint}"
        ) from None


def builder_names():
    return sorted(_BUILDERS)
