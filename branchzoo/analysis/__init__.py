"""Analysis tools: plain functions returning arrays or matplotlib figures.

Importing the package registers the named analyses (`branchzoo.analysis.registry`).

    >>> from branchzoo.analysis import feature_model, feature_names
"""

from branchzoo.analysis import decomposition  # noqa: F401  (registers "decomposition")
from branchzoo.analysis.features import feature_model, feature_names

__all__ = ["feature_model", "feature_names"]
