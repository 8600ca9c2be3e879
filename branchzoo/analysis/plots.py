"""The paper's figures as functions returning `matplotlib.figure.Figure`.

After Richter et al. (2022): probe accuracy and saturation per layer in
forward order with one curve per pathway (Figs. 3, 5, 7), CKA of every layer
with the network output per pathway (Fig. 8), a CKA heatmap between two
pathways' layers (Fig. 9) and gradient flow (Fig. 6b). The same functions
serve reports (PNG files) and TensorBoard (the analysis callback).

Figures are built with `matplotlib.figure.Figure` directly (no pyplot state,
no display needed).

    >>> from branchzoo.analysis.extraction import LayerInfo
    >>> infos = [LayerInfo("conv1", "conv", "main"), LayerInfo("conv2", "conv", "main")]
    >>> fig = plot_layer_values({"conv1": 0.5, "conv2": 0.7}, infos, "probe accuracy")
    >>> len(fig.axes)
    1
"""

import numpy as np
from matplotlib.figure import Figure

from branchzoo.analysis import extraction

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _short(name):
    """``stage2_block1/sum`` -> ``s2b1``; other names as they are."""
    if name.endswith("/sum") and name.startswith("stage") and "_block" in name:
        stage, block = name[len("stage"):-len("/sum")].split("_block")
        return f"s{stage}b{block}"
    return name


def _legend_label(pathway, titles):
    if pathway in titles:
        return f"{pathway} ({titles[pathway]})"
    return pathway


def _draw_curves(ax, values, infos, titles=None, style="-o", label_suffix="", colors=_COLORS):
    positions = extraction.layer_positions(infos)
    titles = titles or {}
    for k, (pathway, names) in enumerate(extraction.curves(infos).items()):
        names = [n for n in names if values.get(n) is not None and np.isfinite(values[n])]
        if not names:
            continue
        xs = [positions[n] for n in names]
        ys = [values[n] for n in names]
        ax.plot(xs, ys, style, color=colors[k % len(colors)], markersize=3, linewidth=1.2,
                label=_legend_label(pathway, titles) + label_suffix)
    return positions


def _layer_ticks(ax, infos, positions):
    """Ticks at the outputs every pathway shares (stem, block sums; all outputs without
    pathways), and at the end of every block whose sum is not drawn."""
    ticks = {positions[i.name]: _short(i.name) for i in infos if i.pathway in ("shared", "main")}
    ends = {}
    for i in infos:
        if i.block is not None:
            ends[i.block] = max(ends.get(i.block, -np.inf), positions[i.name])
    for block, end in ends.items():
        if f"{block}/sum" not in positions:
            ticks[end] = _short(f"{block}/sum")
    xs = sorted(ticks)
    if len(xs) > 40:
        xs = xs[:: int(np.ceil(len(xs) / 40))]
    ax.set_xticks(xs)
    ax.set_xticklabels([ticks[x] for x in xs], rotation=90, fontsize=6)
    ax.set_xlabel("layers (forward order)")


def plot_layer_values(values, infos, ylabel, title=None, pathway_titles=None, ylim=None,
                      hlines=None, log=False, figsize=(8, 4), spans=None):
    """One curve per pathway of a per-layer value (generic form of Figs. 3, 5-8).

    Args:
        values: ``{name: float}``.
        infos: `extraction.LayerInfo` list in forward order (its pathways
            give the curves; outputs labelled ``"shared"`` are on every curve).
        ylabel: y-axis label.
        title: figure title.
        pathway_titles: ``{"path1": "1:3x3", ...}`` for the legend.
        ylim: ``(low, high)``.
        hlines: ``{label: y}`` drawn as dashed horizontal lines.
        log: logarithmic y axis.
        figsize: inches.
        spans: ``{label: (x0, x1)}`` shaded on the layer axis (tail patterns,
            `branchzoo.analysis.tail.tail_spans`).

    Returns:
        A `matplotlib.figure.Figure`.
    """
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot(1, 1, 1)
    positions = _draw_curves(ax, values, infos, pathway_titles)
    for k, (label, (x0, x1)) in enumerate((spans or {}).items()):
        ax.axvspan(x0, x1, color=_COLORS[(k + 3) % len(_COLORS)], alpha=0.12, label=label)
    for k, (label, y) in enumerate((hlines or {}).items()):
        if y is not None:
            ax.axhline(y, linestyle="--", linewidth=0.8, color=("gray", "black")[k % 2], label=label)
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    _layer_ticks(ax, infos, positions)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_probes(result, saturation=None, title=None, spans=None):
    """Probe accuracy per layer, one curve per pathway (Figs. 3, 5, 7).

    Args:
        result: a `branchzoo.analysis.probes.ProbeResult`.
        saturation: optional ``{name: saturation}`` drawn as bars on the
            same [0, 1] axis (Fig. 3 shows both).
        title: default: the model's test accuracy and the probe set sizes.
        spans: tail patterns to shade (see `plot_layer_values`).

    Returns:
        A `matplotlib.figure.Figure`.
    """
    acc = result.model_test_accuracy
    if title is None:
        title = (f"probe accuracy (train {result.num_train}, test {result.num_test} examples)"
                 + (f"; model test acc. {100 * acc:.2f}%" if acc is not None else "")
                 + (f"; {result.not_converged} probes not converged" if result.not_converged else ""))
    fig = plot_layer_values(
        result.accuracy, result.layers, "probe accuracy (test)", title=title,
        pathway_titles=result.pathway_titles, ylim=(0, 1.02),
        hlines={"chance": result.chance, "model (test acc.)": acc}, spans=spans,
    )
    if saturation:
        ax = fig.axes[0]
        positions = extraction.layer_positions(result.layers)
        lanes = sorted({i.pathway for i in result.layers if i.pathway.startswith("path")})
        width = 0.6 / max(len(lanes), 1)
        for k, info in enumerate(i for i in result.layers if i.name in saturation):
            # pathways' layers side by side where their positions coincide
            shift = (lanes.index(info.pathway) - (len(lanes) - 1) / 2) * width if info.pathway in lanes else 0.0
            ax.bar(positions[info.name] + shift, saturation[info.name], width=width if lanes else 0.6,
                   color="tab:gray", alpha=0.35, label="saturation" if k == 0 else None)
        ax.legend(fontsize=7, loc="best")
    return fig


def plot_saturation(values, infos, pathway_titles=None, title=None, spans=None):
    """Saturation per layer, one curve per pathway (delve; Fig. 3), tails shaded (`spans`)."""
    return plot_layer_values(values, infos, "saturation", title=title or "saturation (delve)",
                             pathway_titles=pathway_titles, ylim=(0, 1.02), spans=spans)


def plot_cka_with_output(values, infos, pathway_titles=None, probe_accuracy=None, title=None):
    """CKA of every layer with the network output, per pathway (Fig. 8).

    With `probe_accuracy` (``{name: accuracy}``) the probe curves are drawn
    dashed on the same axis, as Fig. 8 does.
    """
    fig = plot_layer_values(values, infos, "CKA with the output", pathway_titles=pathway_titles,
                            title=title or "linear CKA of each layer with the network output",
                            ylim=(0, 1.02))
    if probe_accuracy:
        ax = fig.axes[0]
        _draw_curves(ax, probe_accuracy, infos, pathway_titles, style="--", label_suffix=" probe acc.")
        ax.legend(fontsize=7, loc="best")
    return fig


def plot_cka_heatmap(matrix, row_labels, col_labels, row_title="pathway 1", col_title="pathway 2",
                     title=None, annotate=True):
    """A CKA heatmap between two sets of layers (Fig. 9).

    Args:
        matrix: [rows, cols] CKA values.
        row_labels, col_labels: layer labels.
        row_title, col_title: axis titles.
        title: figure title.
        annotate: write each value in its cell (when there are at most 16 per side).

    Returns:
        A `matplotlib.figure.Figure`.
    """
    matrix = np.asarray(matrix, dtype=float)
    rows, cols = matrix.shape
    fig = Figure(figsize=(max(4.0, 0.5 * cols + 2.5), max(3.5, 0.45 * rows + 2.0)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper", aspect="auto")
    ax.set_xticks(range(cols))
    ax.set_xticklabels(col_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    if annotate and rows <= 16 and cols <= 16:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if matrix[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_gradient_flow(values, infos, pathway_titles=None, title=None, subtitle=None):
    """``|mean(dL/dW)|`` of each layer's kernel, per pathway, log scale (Fig. 6b)."""
    positive = {k: v for k, v in values.items() if v is not None and v > 0}
    title = title or "gradient flow: |mean(dL/dW)| per layer" + (f"\n{subtitle}" if subtitle else "")
    return plot_layer_values(positive, infos, "|mean dL/dW|", pathway_titles=pathway_titles,
                             title=title, log=True)
