"""Analysis tools: plain functions returning arrays or matplotlib figures.

After Richter et al. (2022): logistic-regression probes,
saturation, CKA, gradient flow, tail patterns and pathway removal per layer
and pathway, for any registered model. Each is also a named analysis
(``probes``, ``saturation``, ``cka``, ``gradients``, ``pathway_removal``) that ``evaluate.py --analysis`` and the training callback run
through `branchzoo.analysis.registry`.

    >>> from branchzoo.analysis import cka, saturation, fit_probes, gradient_flow, feature_model
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((64, 5))
    >>> round(cka(x, -2 * x), 6)
    1.0

Importing this package registers every named analysis (`registry`): the
family modules (modular, specialization, gated, ...) register theirs.
"""

from branchzoo.analysis import modular  # noqa: F401  (registers robustness, specialists, entropy, confusion, dominance)
from branchzoo.analysis import specialization  # noqa: F401  (registers "specialization")
from branchzoo.analysis import decomposition  # noqa: F401  (registers "decomposition")
from branchzoo.analysis.features import feature_model, feature_names
from branchzoo.analysis.cka import (
    CKAAccumulator, center_gram, cka, cka_from_grams, cka_matrix, cka_with_output, gram_linear, gram_rbf,
)
from branchzoo.analysis.saturation import SaturationAccumulator, intrinsic_dimension, layer_saturation, saturation
from branchzoo.analysis.probes import ProbeResult, fit_probe, fit_probes
from branchzoo.analysis.gradients import GradientFlowRecorder, gradient_flow
from branchzoo.analysis.pathways import pathway_removal
from branchzoo.analysis.tail import tail_pattern, tail_patterns
from branchzoo.analysis.extraction import adaptive_average_pool, analysis_layers, layer_positions
from branchzoo.analysis import plots  # noqa: F401

from branchzoo.analysis.gated import connectivity_figure, gate_histogram_figure

__all__ = [
    "feature_model",
    "feature_names",
    "cka",
    "cka_matrix",
    "cka_from_grams",
    "center_gram",
    "gram_linear",
    "gram_rbf",
    "CKAAccumulator",
    "cka_with_output",
    "saturation",
    "SaturationAccumulator",
    "intrinsic_dimension",
    "adaptive_average_pool",
    "layer_saturation",
    "fit_probes",
    "fit_probe",
    "ProbeResult",
    "gradient_flow",
    "GradientFlowRecorder",
    "pathway_removal",
    "tail_pattern",
    "tail_patterns",
    "analysis_layers",
    "layer_positions",
    "plots",
    "connectivity_figure",
    "gate_histogram_figure",
    "specialization",
]
