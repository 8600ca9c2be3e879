"""Pathway removal: what a trained MPNet loses when one pathway of a block is taken out.

Richter et al. (2022), Sec. 4.1: "When removing the skipped layers, we
find that the performance decreases by 2.16%-points on average, which
indicates that these paths are still not entirely irrelevant for the
inference process." The paper does not say how it removed them or over
what it averaged; here (our choice): a pathway of one `MultiPathBlock` is
removed by zeroing the scale and shift of its last BatchNormalization, so
its ReLU output, and with it the pathway's share of the block's sum, is 0
(no retraining; the other blocks untouched). The drop is the test top-1
with the pathway removed subtracted from the intact model's, per block;
``mean_drop`` averages it over the blocks, ``all_blocks_drop`` removes the
pathway from every block at once.
"""

import numpy as np
from matplotlib.figure import Figure

from branchzoo.analysis import extraction
from branchzoo.analysis.registry import AnalysisResult, register_analysis
from branchzoo.layers import MultiPathBlock
from branchzoo.precision import to_numpy


def _top1(model, x, y, batch_size):
    logits = to_numpy(model.predict(x, batch_size=batch_size, verbose=0))
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y).ravel()))


def _removed(blocks, pathway):
    """Context: the `pathway` (1-based) of each of `blocks` outputs zeros; restored afterwards."""

    class _Removed:
        def __enter__(self):
            self.saved = []
            for block in blocks:
                bn = block.paths[pathway - 1][-1][1]
                self.saved.append((bn, bn.gamma.numpy(), bn.beta.numpy()))
                bn.gamma.assign(np.zeros_like(self.saved[-1][1]))
                bn.beta.assign(np.zeros_like(self.saved[-1][2]))

        def __exit__(self, *exc):
            for bn, gamma, beta in self.saved:
                bn.gamma.assign(gamma)
                bn.beta.assign(beta)

    return _Removed()


def pathway_removal(model, data, pathway, max_examples=None, batch_size=256, seed=0):
    """Test top-1 lost when `pathway` is removed from each `MultiPathBlock` in turn, and from all.

    Args:
        model: a functional model with `MultiPathBlock` layers (an MPNet).
        data: ``(x, y)`` arrays or an iterable of ``(x, y)`` batches (the test split).
        pathway: 1-based pathway index (``path2`` is 2).
        max_examples: a uniform seeded subset (None: every example).
        batch_size: prediction batch size.
        seed: for the subset.

    Returns:
        A dict: ``pathway``, ``intact_top1``, ``drop`` ({block: intact minus
        removed top-1}), ``mean_drop``, ``all_blocks_drop``, ``examples``.

    Example:

    >>> import numpy as np
    >>> from branchzoo.models import mpnet
    >>> m = mpnet([[1, 3], [2, 3]], blocks_per_stage=1, widths=(4, 4, 4, 4), input_shape=(8, 8, 3))
    >>> x = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype("float32")
    >>> sorted(pathway_removal(m, (x, np.arange(16) % 10), pathway=2)["drop"])[:2]
    ['stage1_block1', 'stage2_block1']
    """
    blocks = [layer for layer in model.layers if isinstance(layer, MultiPathBlock)]
    if not blocks:
        raise ValueError(f"Model '{model.name}' has no MultiPathBlock: no pathway to remove.")
    count = len(blocks[0].pathways)
    if not isinstance(pathway, (int, np.integer)) or not 1 <= pathway <= count:
        raise ValueError(f"`pathway` must be between 1 and {count}. Received: pathway={pathway!r}")
    x, y = extraction.as_arrays(data, max_examples, seed)
    intact = _top1(model, x, y, batch_size)
    drop = {}
    for block in blocks:
        with _removed([block], pathway):
            drop[block.name] = intact - _top1(model, x, y, batch_size)
    with _removed(blocks, pathway):
        all_blocks = intact - _top1(model, x, y, batch_size)
    return {
        "pathway": f"path{pathway}",
        "intact_top1": intact,
        "drop": drop,
        "mean_drop": float(np.mean(list(drop.values()))),
        "all_blocks_drop": all_blocks,
        "examples": int(len(y)),
    }


@register_analysis("pathway_removal", "Test top-1 lost without each pathway of each MPNet block (003, Sec. 4.1)")
def pathway_removal_analysis(model, data, max_examples=None, **kwargs):
    """`pathway_removal` of every pathway on ``data.test``, with a bar figure per pathway."""
    if data.test is None:
        raise ValueError("The 'pathway_removal' analysis needs `data.test`. Received: data.test=None")
    titles = extraction.pathway_names(model)
    if not titles:
        raise ValueError(f"Model '{model.name}' has no MultiPathBlock: no pathway to remove.")
    x, y = extraction.as_arrays(data.test, max_examples, data.seed)
    results = {p: pathway_removal(model, (x, y), int(p[4:]), **kwargs) for p in titles}
    numbers = {f"mean_drop/{p}": r["mean_drop"] for p, r in results.items()}
    numbers.update({f"all_blocks_drop/{p}": r["all_blocks_drop"] for p, r in results.items()})
    numbers["intact_top1"] = next(iter(results.values()))["intact_top1"]
    numbers["pathways"] = results
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    blocks = list(next(iter(results.values()))["drop"])
    width = 0.8 / len(results)
    for k, (p, r) in enumerate(results.items()):
        ax.bar(np.arange(len(blocks)) + (k - (len(results) - 1) / 2) * width,
               [100 * r["drop"][b] for b in blocks], width=width, label=f"{p} ({titles[p]}) removed")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels(blocks, rotation=60, fontsize=6)
    ax.set_ylabel("test top-1 lost (points)")
    ax.set_title(f"pathway removal, one block at a time ({len(y)} test examples)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return AnalysisResult(numbers=numbers, figures={"drop": fig})
