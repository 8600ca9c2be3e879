"""Analysis tools: plain functions returning arrays or matplotlib figures.

    >>> from branchzoo.analysis import feature_model, feature_names
"""

from branchzoo.analysis import modular  # noqa: F401  (registers robustness, specialists, entropy, confusion, dominance)
from branchzoo.analysis.features import feature_model, feature_names

__all__ = ["feature_model", "feature_names"]
