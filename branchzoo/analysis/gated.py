"""Learned connectivity of GatedConnect networks: Fig. 2 and gate-value histograms.

After Ahmed & Torresani (2017), Fig. 2 (modules as rows of C residual blocks,
arrows for the active connections between adjacent modules, superfluous
blocks greyed) and Sec. 2.2 (real-valued gates in [0, 1]).

The plain functions take arrays and return matplotlib Figures; the analysis
``"connectivity"`` (``evaluate.py --analysis connectivity``, ``train.py
--analysis connectivity``) applies them to a model.

    >>> import numpy as np
    >>> fig = connectivity_figure([np.eye(4)[[0, 0, 1, 1]]])
    >>> len(fig.axes)
    1
"""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.models.resnext import active_blocks, connectivity_masks, modules_and_gates, parameter_report

ACTIVE_COLOR = "#4caf50"
SUPERFLUOUS_COLOR = "#d0d0d0"
ARROW_COLOR = "#37474f"


def connectivity_figure(masks, title=None, block_size=0.6):
    """Draws the connectivity between modules (Fig. 2 of Ahmed & Torresani 2017).

    Module 1 is the bottom row, the last module the top row; each square is a
    residual block, green when some block of the next module reads it
    (working back from the head, as pruning does), grey when it is
    superfluous. An arrow joins block ``k`` of module ``i`` to block ``j`` of
    module ``i + 1`` when ``masks[i][j, k]`` is 1 and both blocks are active.

    Args:
        masks: binary connections per gate, ``masks[i]`` of shape ``[blocks
            of module i + 1, blocks of module i]`` (0-based; from
            `branchzoo.models.resnext.connectivity_masks`).
        title: figure title.
        block_size: side of a block square (blocks are 1 apart).

    Returns:
        A `matplotlib.figure.Figure`; its axes hold one `Rectangle` per block
        and one `FancyArrowPatch` per drawn connection.

    Example:

    >>> import numpy as np
    >>> fig = connectivity_figure([np.array([[1, 0], [1, 0]])])
    >>> sum(type(p).__name__ == "FancyArrowPatch" for p in fig.axes[0].patches)
    2
    """
    masks = [np.asarray(m) > 0 for m in masks]
    if not masks:
        raise ValueError("`masks` must hold the connections of at least one gate. Received: masks=[]")
    for i in range(1, len(masks)):
        if masks[i].shape[1] != masks[i - 1].shape[0]:
            raise ValueError(
                f"`masks[{i}]` must have one column per block of the module masks[{i - 1}] feeds "
                f"({masks[i - 1].shape[0]}). Received: masks[{i}].shape={masks[i].shape}"
            )
    active = active_blocks(masks)
    counts = [len(a) for a in active]
    widest = max(counts)
    fig = Figure(figsize=(1.0 + 0.55 * widest, 0.8 + 0.6 * len(active)))
    ax = fig.add_subplot(1, 1, 1)
    half = block_size / 2

    def centre(module, block):
        return block - (counts[module] - 1) / 2.0, float(module)

    for i, alive in enumerate(active):
        for b, on in enumerate(alive):
            x, y = centre(i, b)
            ax.add_patch(Rectangle(
                (x - half, y * 1.0 - half * 0.6), block_size, block_size * 0.6,
                facecolor=ACTIVE_COLOR if on else SUPERFLUOUS_COLOR, edgecolor="#555555", linewidth=0.6,
            ))
    for i, mask in enumerate(masks):
        for j, k in zip(*np.nonzero(mask)):
            if not (active[i + 1][j] and active[i][k]):
                continue
            x0, y0 = centre(i, k)
            x1, y1 = centre(i + 1, j)
            ax.add_patch(FancyArrowPatch(
                (x0, y0 + half * 0.6), (x1, y1 - half * 0.6), arrowstyle="-|>", mutation_scale=6,
                color=ARROW_COLOR, linewidth=0.6, alpha=0.8, shrinkA=0, shrinkB=0,
            ))
    ax.set_xlim(-widest / 2.0, widest / 2.0)
    ax.set_ylim(-0.7, len(active) - 0.3)
    ax.set_yticks(range(len(active)))
    ax.set_yticklabels([f"module {i + 1} ({int(a.sum())}/{len(a)})" for i, a in enumerate(active)], fontsize=7)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    superfluous = sum(int((~a).sum()) for a in active)
    ax.set_title(title or f"learned connectivity ({superfluous} superfluous blocks, grey)", fontsize=8)
    fig.tight_layout()
    return fig


def gate_histogram_figure(gate_values, names=None, bins=20):
    """Histograms of real-valued gates, one panel per gate layer.

    Args:
        gate_values: list of arrays of gate values (``[C, num_inputs]`` each).
        names: a title per panel (default ``gate 1``, ...).
        bins: number of equal bins over [0, 1].

    Returns:
        A `matplotlib.figure.Figure` with one axes per gate layer.

    Example:

    >>> import numpy as np
    >>> fig = gate_histogram_figure([np.full((4, 4), 0.5), np.eye(4)])
    >>> len(fig.axes)
    2
    """
    gate_values = [np.asarray(v, "float64").ravel() for v in gate_values]
    if not gate_values:
        raise ValueError("`gate_values` must hold at least one array. Received: gate_values=[]")
    names = list(names) if names is not None else [f"gate {i + 1}" for i in range(len(gate_values))]
    if len(names) != len(gate_values):
        raise ValueError(
            f"`names` must have one entry per gate layer ({len(gate_values)}). Received: {len(names)} names"
        )
    cols = min(4, len(gate_values))
    rows = -(-len(gate_values) // cols)
    fig = Figure(figsize=(2.2 * cols, 1.7 * rows))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for n, (values, name) in enumerate(zip(gate_values, names)):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.hist(np.clip(values, 0.0, 1.0), bins=edges, color=ACTIVE_COLOR, edgecolor="#2e7d32", linewidth=0.4)
        ax.set_title(name, fontsize=7)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=6)
    fig.suptitle("real-valued gates", fontsize=8)
    fig.tight_layout()
    return fig


def top_k_ties(gate_values, fan_in, tolerance=0.0):
    """How many gate rows' top-K choice is decided by a tie (then broken by index order).

    A row's top ``fan_in`` inputs are not determined by its gate values when
    its K-th and (K+1)-th largest values are equal (within `tolerance`),
    e.g. several gates clipped at exactly 1: inference then takes the lower
    indices (`branchzoo.layers.gated.top_k_gates`).

    Args:
        gate_values: real gates ``[rows, num_inputs]``.
        fan_in: K.
        tolerance: values this close count as tied.

    Returns:
        The number of tied rows (0 when K equals the number of inputs).

    Example:

    >>> top_k_ties(np.array([[1.0, 1.0, 1.0, 0.2], [0.9, 0.8, 0.1, 0.0]]), 2)
    1
    """
    values = np.sort(np.asarray(gate_values, "float64"), axis=-1)[..., ::-1]
    if fan_in >= values.shape[-1]:
        return 0
    gap = values[..., fan_in - 1] - values[..., fan_in]
    return int(np.count_nonzero(gap <= tolerance))


@register_analysis("connectivity", "GatedConnect networks: Fig. 2 connectivity, gate histograms, train/test parameters")
def connectivity_analysis(model, data=None):
    """Connectivity figure, gate histograms and Table 1's parameter columns of a gated model.

    For learned gates the numbers also say how their values ended: mean and
    spread, the shares clipped at 0 and at 1, and how many of the blocks'
    top-K choices are ties broken by index order (`top_k_ties`).

    Raises ValueError for a model without GatedConnect layers.
    """
    del data  # reads the weights only
    _, gates = modules_and_gates(model)
    ordered = [gates[i] for i in sorted(gates)]
    masks = connectivity_masks(model)
    values = [g.gate_values() for g in ordered]
    report = parameter_report(model)
    active = active_blocks(masks)
    learned = [v for g, v in zip(ordered, values) if g.connectivity == "learned"]
    numbers = {
        "train_params": report["train"],
        "test_params": report["test"],
        "superfluous_blocks": int(sum((~a).sum() for a in active)),
        "blocks_test": report["blocks_test"],
        "connections": [m.astype(int).tolist() for m in masks],
    }
    figures = {"connectivity": connectivity_figure(masks, title=f"{model.name}: connectivity")}
    if learned:
        flat = np.concatenate([v.ravel() for v in learned])
        learned_gates = [g for g in ordered if g.connectivity == "learned"]
        numbers.update(
            gate_mean=float(flat.mean()),
            gate_std=float(flat.std()),
            gates_at_0=float(np.mean(flat <= 0.0)),
            gates_at_1=float(np.mean(flat >= 1.0)),
            top_k_choices=int(sum(v.shape[0] for v in learned)),
            top_k_ties=int(sum(top_k_ties(v, g.fan_in) for g, v in zip(learned_gates, learned))),
        )
        figures["gate_histogram"] = gate_histogram_figure(
            learned, names=[g.name for g in ordered if g.connectivity == "learned"]
        )
    return AnalysisResult(numbers=numbers, figures=figures)
