"""Image decompositions of a BranchedGenerator: grids, branch energy and correlation.

After Brokman & Gilboa (2022), Sec. 7 (Figs. 9-10) and Appendix D: the
branch outputs of the class-transfer generator are images that add up to
the translation (minus the smoothing ``S(x)``), so each branch's image is a
component of an unsupervised decomposition. The plain functions take arrays
(``branches`` ``[batch, N, H, W, C]``) and return arrays or matplotlib
Figures; the ``"decomposition"`` analysis runs them on a model holding a
`branchzoo.layers.BranchedGenerator`:

    python evaluate.py --checkpoint runs/<run>/model.keras --analysis decomposition --report DIR

    >>> import numpy as np
    >>> branches = np.zeros((2, 3, 4, 4, 3)); branches[:, 0] = 1.0
    >>> branch_energy(branches).tolist()
    [1.0, 0.0, 0.0]
"""

import numpy as np

from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.layers.branched_generator import find_generator
from branchzoo.precision import to_numpy


def branch_energy(branches):
    """Mean squared value of each branch's image: ``[N]`` (float64).

    Args:
        branches: ``[batch, N, H, W, C]``.
    """
    b = np.asarray(branches, dtype="float64")
    return np.mean(np.square(b), axis=(0, 2, 3, 4))


def branch_correlation(branches):
    """Pearson correlation between branch images over every example, pixel and channel: ``[N, N]``.

    A branch whose output is constant has no defined correlation: its row
    and column are NaN (the diagonal included).
    """
    b = np.asarray(branches, dtype="float64")
    n = b.shape[1]
    flat = np.moveaxis(b, 1, 0).reshape(n, -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(flat**2, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (flat @ flat.T) / np.outer(norms, norms)
    corr[norms == 0, :] = np.nan
    corr[:, norms == 0] = np.nan
    return corr


def reconstruction_error(images, branches, smooth):
    """``max |image - (sum of branches + smooth)|`` in float64: the identity of Eq. 15."""
    total = np.sum(np.asarray(branches, "float64"), axis=1) + np.asarray(smooth, "float64")
    return float(np.max(np.abs(np.asarray(images, "float64") - total)))


def _to_display(images):
    """[-1, 1] images to [0, 1] RGB (grey for one channel)."""
    x = np.clip((np.asarray(images, "float64") + 1.0) / 2.0, 0.0, 1.0)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _branch_display(branch):
    """A branch's images (signed) in [0, 1]: grey is 0, each branch scaled by its own max |value|."""
    b = np.asarray(branch, "float64")
    scale = np.max(np.abs(b)) or 1.0
    x = 0.5 + 0.5 * b / scale
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def decomposition_figure(inputs, outputs, branches, smooth, source_names=None, target_names=None,
                         energies=None, title=None):
    """One row per example: input, S(x), each branch's image, the translation.

    Inputs, ``S(x)`` and translations are shown as images in [-1, 1]; each
    branch's column is signed and scaled to its own largest absolute value
    over the rows (grey = 0), so weak branches stay visible (their energy is
    in the column title).

    Args:
        inputs, outputs, smooth: ``[rows, H, W, C]`` in [-1, 1].
        branches: ``[rows, N, H, W, C]``.
        source_names, target_names: per-row labels (e.g. ``"cat"``, ``"dog"``).
        energies: per-branch energy to print in the column titles.
        title: figure title.

    Returns:
        A `matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    inputs, outputs, smooth = to_numpy(inputs), to_numpy(outputs), to_numpy(smooth)
    branches = to_numpy(branches)
    rows, n = branches.shape[0], branches.shape[1]
    columns = ["input", "S(x)"] + [f"branch {i + 1}" for i in range(n)] + ["output"]
    if energies is not None:
        columns[2:2 + n] = [f"branch {i + 1}\nE={e:.3g}" for i, e in enumerate(energies)]
    fig = Figure(figsize=(1.25 * len(columns), 1.3 * rows + (0.5 if title else 0.2)))
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        panels = [_to_display(inputs[r]), _to_display(smooth[r])]
        panels += [_branch_display(branches[:, i])[r] for i in range(n)]
        panels += [_to_display(outputs[r])]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        if source_names is not None and target_names is not None:
            axes[r, 0].set_ylabel(f"{source_names[r]}\u2192{target_names[r]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def correlation_figure(corr, title="Correlation of branch images"):
    """A heat map of `branch_correlation` (values in [-1, 1] written in the cells)."""
    from matplotlib.figure import Figure

    corr = np.asarray(corr)
    n = corr.shape[0]
    fig = Figure(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax = fig.subplots()
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    labels = [str(i + 1) for i in range(n)]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("branch")
    ax.set_ylabel("branch")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, "nan" if np.isnan(corr[i, j]) else f"{corr[i, j]:.2f}", ha="center",
                    va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_array(fig, dpi=80):
    """The RGB pixels ``[H, W, 3]`` uint8 of a Figure (for TensorBoard image summaries)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- on a model -----------------------------------------------------------------


def split_batch(batch, num_classes):
    """``(images, source, target)`` of a paired ``((images, source), target)`` batch.

    A plain ``(images, labels)`` batch is paired with the next class,
    ``(label + 1) % num_classes``.
    """
    x, y = batch
    if isinstance(x, (tuple, list)):
        images, source = x
        return np.asarray(images), np.asarray(source), np.asarray(y)
    labels = np.asarray(y)
    return np.asarray(x), labels, (labels + 1) % max(int(num_classes or 2), 1)


def decompose_batches(generator, batches, num_classes, max_batches=None):
    """Runs `generator` (a BranchedGenerator) with ``return_branches=True`` over `batches`.

    Returns:
        dict of numpy arrays over every example read: ``images``, ``source``,
        ``target``, ``image`` (translations), ``branches``, ``smooth``, and
        ``diffusion_error`` (per batch, learnt diffusion only).
    """
    parts = {k: [] for k in ("images", "source", "target", "image", "branches", "smooth")}
    diffusion_errors = []
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        images, source, target = split_batch(batch, num_classes)
        out = generator([images, target], return_branches=True)
        for key, value in (("images", images), ("source", source), ("target", target)):
            parts[key].append(value)
        for key in ("image", "branches", "smooth"):
            parts[key].append(to_numpy(out[key]))
        if generator.smoothing == "learned":
            residuals, final = generator.smoother.decompose(images)
            total = np.sum(np.asarray(residuals, "float64"), axis=1) + np.asarray(final, "float64")
            diffusion_errors.append(float(np.max(np.abs(total - images))))
    if not parts["images"]:
        raise ValueError("The decomposition analysis needs at least one batch of test data.")
    result = {k: np.concatenate(v) for k, v in parts.items()}
    if diffusion_errors:
        result["diffusion_error"] = np.asarray(diffusion_errors)
    return result


def pick_rows(source, per_class=3):
    """Indices of the first `per_class` examples of every source class, class by class."""
    rows = []
    for c in np.unique(source):
        rows += [int(i) for i in np.flatnonzero(source == c)[:per_class]]
    return rows


@register_analysis("decomposition")
def decomposition_analysis(model, data):
    """Decomposition grids, per-branch energy and correlation, identity errors of a BranchedGenerator.

    Reads ``data.test`` (class-transfer pairs, or plain labelled images
    sent to the next class). Numbers: ``branch{i}_energy`` (mean square of
    branch i's image), ``smooth_energy``, ``energy_share`` (each branch's
    energy over the branches' total), ``correlation`` (``[N, N]``),
    ``mean_abs_correlation`` (off the diagonal), ``identity_error``
    (``max |image - sum(branches) - S(x)|``) and, for the learnt diffusion,
    ``diffusion_identity_error`` (Eq. 17). Figures: ``grid`` (three
    examples of every source class) and ``correlation``.
    """
    generator = find_generator(model)
    out = decompose_batches(generator, data.test, data.num_classes)
    energy = branch_energy(out["branches"])
    corr = branch_correlation(out["branches"])
    n = len(energy)
    off = corr[~np.eye(n, dtype=bool)]
    numbers = {f"branch{i + 1}_energy": float(e) for i, e in enumerate(energy)}
    numbers.update({
        "smooth_energy": float(np.mean(np.square(out["smooth"].astype("float64")))),
        "energy_share": (energy / energy.sum()).tolist() if energy.sum() > 0 else [0.0] * n,
        "correlation": corr.tolist(),
        "mean_abs_correlation": float(np.nanmean(np.abs(off))) if off.size and not np.all(np.isnan(off)) else 0.0,
        "identity_error": reconstruction_error(out["image"], out["branches"], out["smooth"]),
        "examples": int(len(out["images"])),
    })
    if "diffusion_error" in out:
        numbers["diffusion_identity_error"] = float(np.max(out["diffusion_error"]))
    rows = pick_rows(out["source"])
    names = list(data.class_names or [])

    def name(c):
        return names[int(c)] if int(c) < len(names) else str(int(c))

    grid = decomposition_figure(
        out["images"][rows], out["image"][rows], out["branches"][rows], out["smooth"][rows],
        source_names=[name(c) for c in out["source"][rows]],
        target_names=[name(c) for c in out["target"][rows]],
        energies=energy,
        title=f"{n} branches, S = {generator.smoothing}",
    )
    return AnalysisResult(numbers=numbers, figures={"grid": grid, "correlation": correlation_figure(corr)})
