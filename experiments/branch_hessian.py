"""The inter-branch share of a small BranchSum model's Hessian during gradient descent (000, Sec. 5).

For ``y = sum_i f_i(x)`` the Hessian entries between two different branches
are products of the branches' Jacobians through the loss's curvature in y
(Eq. 14); within a branch its own second derivative adds a term. This
script trains N small tanh MLP branches (`branched_mlp`, float64) on a 1-D
regression by plain full-batch gradient descent and records, every few
steps, the share of the squared Frobenius norm of the loss Hessian that
lies in the inter-branch blocks (`branchzoo.analysis.hessian`):

    python experiments/branch_hessian.py     # writes experiments/output/branch_hessian.{png,md}

At initialisation every branch is a random function, so the Jacobian
products across branches are as large as the ones within (the share of N
equal-sized blocks is ``1 - 1/N`` when all blocks are alike); the figure
shows how training changes that.
"""

import argparse
import os
import sys
import time

import numpy as np


def run(num_branches=4, hidden=4, steps=3000, every=100, lr=0.05, seed=0):
    """Trains the model and returns ``(history, first_hessian, last_hessian, branch_index)``."""
    import keras

    from branchzoo.analysis.hessian import branch_parameter_index, interbranch_share_during_training, loss_hessian
    from branchzoo.models import branched_mlp

    keras.utils.set_random_seed(seed)
    model = branched_mlp(num_branches, hidden_units=(hidden,), num_classes=1, input_shape=(1,), dtype="float64")
    x = np.linspace(-1, 1, 21)[:, None]
    y = x**2 + 0.5 * np.sin(3 * x)
    first = loss_hessian(model, x, y)["hessian"]
    history = interbranch_share_during_training(model, x, y, steps=steps, lr=lr, every=every)
    last = loss_hessian(model, x, y)["hessian"]
    return history, first, last, branch_parameter_index(model)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--branches", type=int, default=4)
    p.add_argument("--hidden", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "output"))
    args = p.parse_args(argv)
    from matplotlib.figure import Figure

    from branchzoo.analysis.hessian import block_shares, hessian_figure, share_figure

    start = time.time()
    history, first, last, index = run(args.branches, args.hidden, args.steps, args.every, args.lr, args.seed)
    elapsed = time.time() - start
    os.makedirs(args.output, exist_ok=True)
    fig = Figure(figsize=(14.0, 3.8))
    share_figure(history, ax=fig.add_subplot(1, 3, 1))
    hessian_figure(first, index, "Hessian at step 0", ax=fig.add_subplot(1, 3, 2))
    hessian_figure(last, index, f"Hessian at step {args.steps}", ax=fig.add_subplot(1, 3, 3))
    fig.savefig(os.path.join(args.output, "branch_hessian.png"), dpi=90)
    command = "python experiments/branch_hessian.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Inter-branch share of the Hessian during training (000_a8fb4f73aa903839.txt, Sec. 5)",
        "",
        f"Command: `{command}` ({elapsed:.0f} s). Model: `branched_mlp({args.branches}, hidden_units=({args.hidden},), "
        "num_classes=1, input_shape=(1,))` in float64, tanh; data: y = x^2 + 0.5 sin(3x) at 21 points of [-1, 1]; "
        f"plain gradient descent, lr {args.lr}, mean squared error.",
        "",
        f"`inter` = share of ||H||_F^2 in blocks between different branches (all blocks alike: 1 - 1/N = "
        f"{1 - 1 / args.branches:.2f}).",
        "",
        "| step | loss | inter | intra | gradient norm |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s, l, inter, intra, g in zip(history["step"], history["loss"], history["inter"], history["intra"],
                                     history["gradient_norm"]):
        lines.append(f"| {s} | {l:.3e} | {inter:.3f} | {intra:.3f} | {g:.2e} |")
    end = block_shares(last, index)
    lines += ["", f"Final: inter {end['inter']:.3f}, intra {end['intra']:.3f}."]
    with open(os.path.join(args.output, "branch_hessian.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}/branch_hessian.{{png,md}}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
