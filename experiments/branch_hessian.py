"""The inter-branch share of a small BranchSum model's Hessian during gradient descent (000, Secs. 5 and 8).

For ``y = sum_i f_i(x)`` the Hessian entries between two different branches
are products of the branches' Jacobians (the distributive factors) through
the loss's curvature in y (Eq. 14); within a branch its own second
derivative adds a term. The paper's Sec. 8 conjectures that near
equilibrium most (example, branch) pairs have a zero distributive factor,
which makes the Hessian block diagonal (one block per branch). A ReLU
branch can have an exactly zero Jacobian on an example; a tanh one cannot.

This script trains N small ReLU MLP branches (`branched_mlp`, float64) on
the 1-D toy regression of Sec. 4.1 (y = x^2 at 21 points of [-1, 1]) by
plain full-batch gradient descent, once per output activation and seed,
and records every few steps the share of the squared Frobenius norm of the
loss Hessian that lies in the inter-branch blocks and the share of
(example, branch) pairs whose distributive factor is zero
(`branchzoo.analysis.hessian`):

    python experiments/branch_hessian.py     # writes experiments/output/branch_hessian.{png,md,json}

Two kinds of branch, both with ReLU hidden units:

- ``none``: linear output (the classifier's heads, Sec. 6). The head's bias
  has Jacobian 1 on every example, so no (example, branch) pair is ever
  silent and every inter-branch block keeps the bias-bias entries;
- ``relu``: a ReLU on each branch's output too (as the toy branches of
  Sec. 4.1 end in their activation), so a whole branch can be silent on an
  example.

Reference: when all N blocks are alike the inter share is ``1 - 1/N``; a
branch silent on every example adds nothing to any block, so the reference
for a model with N_active branches active somewhere is ``1 - 1/N_active``.
"""

import argparse
import os
import sys
import time

import numpy as np


def toy_data():
    """Sec. 4.1's toy regression as used here: y = x^2 at 21 evenly spaced x in [-1, 1], ``[21, 1]`` each."""
    x = np.linspace(-1, 1, 21)[:, None]
    return x, x**2


def run(num_branches=8, hidden=4, steps=3000, every=100, lr=0.05, seed=0, activation="relu",
        output_activation=None):
    """Trains one model; returns ``(history, first_hessian, last_hessian, branch_index, active_branches)``."""
    import keras

    from branchzoo.analysis.hessian import (branch_parameter_index, gradient_split,
                                            interbranch_share_during_training, loss_hessian)
    from branchzoo.models import branched_mlp

    keras.utils.set_random_seed(seed)
    model = branched_mlp(num_branches, hidden_units=(hidden,), num_classes=1, input_shape=(1,),
                         activation=activation, output_activation=output_activation, dtype="float64")
    x, y = toy_data()
    first = loss_hessian(model, x, y)["hessian"]
    history = interbranch_share_during_training(model, x, y, steps=steps, lr=lr, every=every)
    last = loss_hessian(model, x, y)["hessian"]
    split = gradient_split(model, x, y)
    active = int(sum(np.any(d != 0) for d in split["distributive"]))
    return history, first, last, branch_parameter_index(model), active


def _reference(active):
    return 1 - 1 / active if active else 0.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--branches", type=int, default=8)
    p.add_argument("--hidden", type=int, default=4, help="ReLU hidden units per branch")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; the per-step tables and figure use the first")
    p.add_argument("--activation", default="relu", help="hidden activation of every branch")
    p.add_argument("--output-activations", default="none,relu",
                   help="comma-separated branch output activations to compare ('none': linear)")
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "output"))
    args = p.parse_args(argv)
    from matplotlib.figure import Figure

    from branchzoo._io import write_json_atomic
    from branchzoo.analysis.hessian import block_shares, hessian_figure, share_figure

    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = [k.strip() for k in args.output_activations.split(",")]
    start = time.time()
    results = {}
    for kind in kinds:
        for seed in seeds:
            results[kind, seed] = run(args.branches, args.hidden, args.steps, args.every, args.lr, seed,
                                      args.activation, None if kind == "none" else kind)
    elapsed = time.time() - start
    os.makedirs(args.output, exist_ok=True)
    fig = Figure(figsize=(14.0, 3.8 * len(kinds)))
    for row, kind in enumerate(kinds):
        history, first, last, index, _ = results[kind, seeds[0]]
        share_figure(history, f"output {kind}, seed {seeds[0]}: inter-branch share",
                     ax=fig.add_subplot(len(kinds), 3, 3 * row + 1))
        hessian_figure(first, index, f"output {kind}: Hessian at step 0",
                       ax=fig.add_subplot(len(kinds), 3, 3 * row + 2))
        hessian_figure(last, index, f"output {kind}: Hessian at step {args.steps}",
                       ax=fig.add_subplot(len(kinds), 3, 3 * row + 3))
    fig.savefig(os.path.join(args.output, "branch_hessian.png"), dpi=80)
    command = "python experiments/branch_hessian.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Inter-branch share of the Hessian during training (000_a8fb4f73aa903839.txt, Secs. 5 and 8)",
        "",
        f"Command: `{command}` ({elapsed:.0f} s). Model: `branched_mlp({args.branches}, hidden_units=({args.hidden},), "
        f"num_classes=1, input_shape=(1,), activation={args.activation!r}, output_activation=...)` in float64; "
        "data: y = x^2 at 21 points of [-1, 1] (Sec. 4.1's toy regression); plain full-batch gradient descent, "
        f"lr {args.lr}, {args.steps} steps, mean squared error; seeds {', '.join(map(str, seeds))}.",
        "",
        "`inter` = share of ||H||_F^2 in the blocks between different branches; `silent` = share of (example, "
        "branch) pairs whose distributive factor d f_i(x) / d theta_i is exactly zero (`gradient_split`); "
        "`active` = branches with a non-zero distributive factor on at least one example at the end; "
        f"reference `1 - 1/active` = the inter share if all active blocks were alike (1 - 1/N = "
        f"{1 - 1 / args.branches:.3f} with every branch active).",
        "",
        "## Final values",
        "",
        "| output activation | seed | loss | active | 1 - 1/active | inter at step 0 | inter | silent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    final = []
    for kind in kinds:
        for seed in seeds:
            history, _, last, index, active = results[kind, seed]
            end = block_shares(last, index)
            final.append({"output_activation": kind, "seed": seed, "loss": float(history["loss"][-1]),
                          "active": int(active), "reference": float(_reference(active)),
                          "inter_at_step_0": float(history["inter"][0]), "inter": float(end["inter"]),
                          "silent": float(history["silent"][-1])})
            lines.append(f"| {kind} | {seed} | {history['loss'][-1]:.2e} | {active} | {_reference(active):.3f} | "
                         f"{history['inter'][0]:.3f} | {end['inter']:.3f} | {history['silent'][-1]:.3f} |")
    for kind in kinds:
        history = results[kind, seeds[0]][0]
        lines += [
            "",
            f"## Output activation {kind}, seed {seeds[0]}, during training",
            "",
            "| step | loss | inter | intra | silent | gradient norm |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for s, l, inter, intra, silent, g in zip(history["step"], history["loss"], history["inter"],
                                                 history["intra"], history["silent"], history["gradient_norm"]):
            lines.append(f"| {s} | {l:.3e} | {inter:.3f} | {intra:.3f} | {silent:.3f} | {g:.2e} |")
    with open(os.path.join(args.output, "branch_hessian.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_json_atomic(os.path.join(args.output, "branch_hessian.json"),
                      {"command": command, "seconds": round(elapsed, 1), "branches": args.branches,
                       "steps": args.steps, "final": final})
    print(f"wrote {args.output}/branch_hessian.{{png,md,json}}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
