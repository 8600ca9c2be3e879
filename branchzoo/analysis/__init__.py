"""Analysis tools: plain functions returning arrays or matplotlib figures.

Importing this package registers every named analysis (`registry`).

    >>> from branchzoo.analysis import feature_model, feature_names
"""

from branchzoo.analysis import specialization  # noqa: F401  (registers "specialization")
from branchzoo.analysis.features import feature_model, feature_names

__all__ = ["feature_model", "feature_names", "specialization"]
