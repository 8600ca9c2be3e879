"""Analysis tools: plain functions returning arrays or matplotlib figures.

    >>> from branchzoo.analysis import feature_model, feature_names
"""

from branchzoo.analysis.features import feature_model, feature_names
from branchzoo.analysis.gated import connectivity_figure, gate_histogram_figure

__all__ = ["connectivity_figure", "feature_model", "feature_names", "gate_histogram_figure"]
