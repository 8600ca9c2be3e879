"""Named analyses: what ``evaluate.py --analysis A,B --report DIR`` and
``train.py --analysis A,B`` run, for every family alike.

An analysis is a plain function ``fn(model, data) -> AnalysisResult``
registered under a name; each family's analysis module registers its own
(probes, saturation, specialization, robustness, decomposition, ...), and the
CLIs and the TensorBoard callback only ever look them up here.

    >>> from branchzoo.analysis.registry import analysis_names
    >>> isinstance(analysis_names(), list)
    True
"""

import dataclasses
import os

from branchzoo.registry import Registry


def _import_families():
    """Imports the modules that register analyses."""
    import branchzoo.analysis  # noqa: F401


ANALYSES = Registry("analysis", plural="analyses", load=_import_families)


@dataclasses.dataclass
class AnalysisData:
    """What an analysis may read.

    Attributes:
        train: finite iterable of ``(x, y)`` batches from the training split
            (no augmentation), or None.
        test: finite iterable of ``(x, y)`` batches from the test split.
        num_classes: number of classes of the dataset, when it has classes.
        class_names: their names, when known.
        seed: seed for any random choice an analysis makes.
    """

    train: object = None
    test: object = None
    num_classes: int = None
    class_names: list = None
    seed: int = 0


@dataclasses.dataclass
class AnalysisResult:
    """An analysis' output.

    Attributes:
        numbers: JSON-able values (scalars, lists, nested dicts); scalars at
            the top level are also logged to TensorBoard by the callback.
        figures: ``{name: matplotlib.figure.Figure}``.
    """

    numbers: dict = dataclasses.field(default_factory=dict)
    figures: dict = dataclasses.field(default_factory=dict)


def register_analysis(name, description=""):
    """Registers ``fn(model, data) -> AnalysisResult`` under `name` (decorator)."""

    def decorator(fn):
        ANALYSES.register(name, {"fn": fn, "description": description or (fn.__doc__ or "").split("\n")[0]})
        return fn

    return decorator


def analysis_names():
    """Names of every registered analysis, sorted."""
    return ANALYSES.names()


def get_analysis(name):
    """The registered function called `name`; `branchzoo.registry.UnknownName` with close matches otherwise."""
    return ANALYSES.get(name)["fn"]


def parse_analysis_names(text):
    """``"probes,saturation"`` (or a list) to a checked list of names."""
    names = text.split(",") if isinstance(text, str) else list(text or [])
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise ValueError(f"`analysis` must name at least one analysis. Received: analysis={text!r}")
    for n in names:
        get_analysis(n)
    return names


def run_analyses(names, model, data):
    """Runs each named analysis on `model`; returns ``{name: AnalysisResult}``."""
    results = {}
    for name in parse_analysis_names(names):
        result = get_analysis(name)(model, data)
        if not isinstance(result, AnalysisResult):
            raise TypeError(f"Analysis {name!r} must return an AnalysisResult. Received: {type(result)}")
        results[name] = result
    return results


def write_report(folder, results, extra=None, dpi=90):
    """Writes every figure as ``<analysis>-<figure>.png`` and every number to ``report.json``.

    Each file is written atomically. Returns the list of paths written.
    """
    from branchzoo._io import atomic_open, write_json_atomic

    os.makedirs(folder, exist_ok=True)
    written = []
    numbers = dict(extra or {})
    for name, result in results.items():
        numbers[name] = result.numbers
        for fig_name, fig in result.figures.items():
            path = os.path.join(folder, f"{name}-{fig_name}.png")
            with atomic_open(path, "wb") as f:
                fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
            written.append(path)
    path = os.path.join(folder, "report.json")
    write_json_atomic(path, _jsonable(numbers))
    written.append(path)
    return written


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
