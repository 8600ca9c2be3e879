#!/usr/bin/env python
"""Do the branches of a two-branch stem separate colour from black-and-white? (Voss et al. 2021)

Voss et al. (2021), "Branch Specialization" (Distill): in AlexNet's
two-branch first layers one branch learns colour features and the other
black-and-white ones, and the SVD of the absolute weights between the first
two conv layers orders the first layer's neurons colour vs black-and-white
(its Fig. 6). This script trains `branched_stem_2x2_cifar10` (two branches of
two 5x5 conv layers, 16 and 32 filters each, then a shared trunk) by its
recipe for ``--epochs`` epochs (phases and learning-rate steps scaled) on
CIFAR-10, then measures, on the trained weights:

- each first-layer filter's colourfulness: the share of its energy outside
  the grey direction, ``||k - mean_rgb(k)||^2 / ||k||^2`` (0 for a
  black-and-white filter, 2/3 for one colour channel alone);
- per branch, the mean colourfulness and the number of colour filters (share
  above ``--colour-threshold``); a permutation test (10,000 random splits of
  the 32 filters into two branches of 16) for the gap between the branches'
  means; the hypergeometric chance that the colour filters fall into one
  branch as unevenly by accident (`branch_enrichment_pvalue`);
- `weight_svd` between ``branch_conv1`` and ``branch_conv2`` (grouped: |W| is
  block-diagonal): the Spearman correlation of singular vector 0 with
  colourfulness, and how cleanly vector 0 splits the two branches.

    BRANCHZOO_DATA_DIR=/work/shared/datasets python experiments/branch_svd.py

writes ``experiments/output/branch_svd/``: ``report.json``, ``summary.md``,
``weight_svd.png``.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = "branched_stem_2x2_cifar10"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BRANCHZOO_DATA_DIR"),
                   help="folder holding CIFAR-10 (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the recipe (scaled from its 30)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="batches per epoch (smoke runs)")
    p.add_argument("--colour-threshold", type=float, default=1 / 3,
                   help="a filter with a larger colour share counts as a colour filter (default 1/3: "
                        "half the 2/3 of a random filter)")
    p.add_argument("--permutations", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(REPO, "experiments", "output", "branch_svd"))
    p.add_argument("--runs", default=os.path.join(REPO, "runs", "branch_svd"))
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the folder holding CIFAR-10 (or set BRANCHZOO_DATA_DIR), got nothing")
    if args.epochs < 1:
        p.error(f"--epochs: expected a positive integer, got {args.epochs}")
    if not 0 < args.colour_threshold < 1:
        p.error(f"--colour-threshold: expected a number in (0, 1), got {args.colour_threshold}")
    return args


def colourfulness(kernel):
    """Per output filter of a ``(kh, kw, 3, n)`` kernel: energy share outside the grey direction."""
    import numpy as np

    k = np.asarray(kernel, "float64")
    grey = k.mean(axis=2, keepdims=True)
    total = (k**2).sum(axis=(0, 1, 2))
    return ((k - grey) ** 2).sum(axis=(0, 1, 2)) / np.where(total > 0, total, 1.0)


def permutation_pvalue(values, branch_size, permutations, seed):
    """Two-sided: how often a random split into a branch of `branch_size` has a mean gap as large."""
    import numpy as np

    values = np.asarray(values, "float64")
    observed = abs(values[:branch_size].mean() - values[branch_size:].mean())
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(permutations):
        v = rng.permutation(values)
        count += abs(v[:branch_size].mean() - v[branch_size:].mean()) >= observed - 1e-12
    return (count + 1) / (permutations + 1)


def spearman(a, b):
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(kernel_a, kernel_b, num_branches, threshold, permutations, seed):
    """Every number of the report from the two kernels (no model needed)."""
    import numpy as np

    from branchzoo.analysis.distill import branch_enrichment_pvalue, weight_svd

    colour = colourfulness(kernel_a)
    size = len(colour) // num_branches
    branches = [colour[b * size:(b + 1) * size] for b in range(num_branches)]
    is_colour = colour > threshold
    per_branch_colour = [int((c > threshold).sum()) for c in branches]
    n_colour = int(is_colour.sum())
    most = max(per_branch_colour)
    svd = weight_svd(kernel_a, kernel_b)
    split = float(np.mean(svd["left"][:size, 0] > np.median(svd["left"][:, 0])))
    out = {
        "filters": int(len(colour)),
        "branch_size": size,
        "colourfulness": colour.tolist(),
        "branch_mean_colourfulness": [float(c.mean()) for c in branches],
        "colour_threshold": threshold,
        "colour_filters": n_colour,
        "colour_filters_per_branch": per_branch_colour,
        "permutation_pvalue": permutation_pvalue(colour, size, permutations, seed) if num_branches == 2 else None,
        # the chance that `most` or more of the n colour filters land in one branch (any of the
        # branches: the given-branch hypergeometric tail times the branch count, capped at 1)
        "enrichment_pvalue": (min(1.0, num_branches * branch_enrichment_pvalue(
            n_colour, size, len(colour), observed=most)) if n_colour else None),
        "svd_vector0_colour_spearman": spearman(svd["left"][:, 0], colour),
        "svd_explained": [float(e) for e in svd["explained"][:4]],
        # how cleanly singular vector 0 splits the branches: the share of branch 1's neurons on
        # one side of its median (1.0: vector 0 separates the branches exactly; 0.5: not at all)
        "svd_vector0_branch_split": float(max(split, 1 - split)),
    }
    return out, svd


def main(argv=None):
    args = parse_args(argv)
    import keras

    from branchzoo import training
    from branchzoo._io import write_json_atomic
    from branchzoo.analysis.distill import weight_svd_figure

    folder = os.path.join(args.runs, ENTRY)
    cpu = None
    if not os.path.exists(os.path.join(folder, "metrics.json")):
        run = training.resolve_run_config(ENTRY, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed,
                                          output=folder, steps_per_epoch=args.steps_per_epoch)
        start = time.process_time()
        training.train(run, resume=os.path.exists(os.path.join(folder, "backup")), verbose=2)
        cpu = round(time.process_time() - start)
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    model = keras.models.load_model(os.path.join(folder, "model.keras"), compile=False)
    conv1, conv2 = model.get_layer("branch_conv1"), model.get_layer("branch_conv2")
    kernel_a, kernel_b = conv1.kernel.numpy(), conv2.kernel.numpy()
    numbers, svd = measure(kernel_a, kernel_b, conv2.groups, args.colour_threshold, args.permutations, args.seed)
    command = "BRANCHZOO_DATA_DIR=<data> python experiments/branch_svd.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--data-dir"))
    report = {"command": command.strip(), "entry": ENTRY, "epochs": args.epochs, "test_top1": metrics["top1"],
              "cpu_seconds": cpu, "environment": training.environment(), **numbers}
    os.makedirs(args.output, exist_ok=True)
    write_json_atomic(os.path.join(args.output, "report.json"), report)
    size = numbers["branch_size"]
    branch_of = [i // size for i in range(numbers["filters"])]
    weight_svd_figure(svd, kernel_a=kernel_a, branch_of=branch_of,
                      title=f"{ENTRY}: first-layer neurons by singular vectors of |W|").savefig(
        os.path.join(args.output, "weight_svd.png"), dpi=80)
    lines = [
        f"# Colour and black-and-white across the branches of {ENTRY}",
        "",
        f"Written by experiments/branch_svd.py. Command: `{report['command']}`.",
        f"{args.epochs} epochs on CIFAR-10 (JPEG q75), test top-1 {100 * report['test_top1']:.2f}%.",
        "",
        "| branch | mean colourfulness | colour filters (share > "
        f"{args.colour_threshold:.2f}) |",
        "|---:|---:|---:|",
    ]
    for b, (m, c) in enumerate(zip(numbers["branch_mean_colourfulness"], numbers["colour_filters_per_branch"])):
        lines.append(f"| {b + 1} | {m:.3f} | {c} of {size} |")
    lines += [
        "",
        f"Permutation p-value of the gap between the branch means: {numbers['permutation_pvalue']:.4f}; "
        f"hypergeometric chance of so many colour filters in one branch: "
        f"{numbers['enrichment_pvalue'] if numbers['enrichment_pvalue'] is not None else 'n/a'}; "
        f"Spearman correlation of SVD vector 0 with colourfulness: {numbers['svd_vector0_colour_spearman']:+.2f}.",
    ]
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
