"""The 1-D toy problems of Brokman & Gilboa (2022), Sec. 4.1 (Figs. 2-3).

A network of N scalar branches ``f_i(x) = LeakyReLU(w_i x + b_i)`` outputs
their sum (Eq. 1) and is trained on a square loss by plain (full-batch)
gradient descent. Success = the final loss below a threshold. Over many
random initialisations, the success rate rises with N (Fig. 3 left), and the
branches of a trained network respond with low covariance (Fig. 3 right).

    python experiments/branch_toy.py            # writes experiments/output/branch_toy.{png,md,csv}

What the paper leaves open (its extracted text lost the numbers) is chosen
here, as in branchzoo.data's synthetic toy sets:

- ``xor1d`` ("somewhat similar to a one-dimensional XOR"; balanced, no target
  0): x = (-2, -1, 1, 2), y = (2, 1, 1, 2) = |x|. No line fits it; two
  branches facing opposite ways do.
- ``square1d`` (the regression problem): y = x^2 at 21 evenly spaced x in
  [-1, 1]. A sum of N LeakyReLUs fits it to within ~2e-3 (N = 2) and
  better with more branches. (y = sin(pi x), branchzoo.data's default
  regression, needs large negative outputs that LeakyReLU branches
  reach only through their 0.01 slope: no run got below a loss of 0.16.)
- Initialisation: w, b ~ U(-1, 1) (PyTorch's default for a 1-input
  ``nn.Linear``); LeakyReLU negative slope 0.01 (PyTorch's default); loss:
  mean squared error over the training points; learning rate 0.01 (stable
  for N = 30), 20,000 full-batch steps; success: loss < 3e-3.

Vectorised over initialisations: all runs of one N are one ``[runs, N]``
array trained in a single compiled loop (keras.ops inside an XLA-compiled
``tf.function`` on the TensorFlow backend). Gradients are the closed form of
the square loss (checked against finite differences and a float64 NumPy
loop in tests/test_branch_toy.py).
"""

import argparse
import csv
import os
import sys
import time

import numpy as np

PROBLEMS = ("xor1d", "square1d")
PAPER = "000_a8fb4f73aa903839.txt, Sec. 4.1, Fig. 3"


def toy_problem(name):
    """The training set ``(x, y)`` (float64 [P]) of a toy problem."""
    if name == "xor1d":
        x = np.array([-2.0, -1.0, 1.0, 2.0])
        return x, np.abs(x)
    if name == "square1d":
        x = np.linspace(-1.0, 1.0, 21)
        return x, x**2
    raise ValueError(f"`problem` must be one of {PROBLEMS}. Received: problem={name!r}")


def leaky_relu(z, alpha):
    return np.where(z > 0, z, alpha * z)


def branch_responses(w, b, x, alpha):
    """``f_i(x_p)`` for every run, point and branch: ``[runs, P, N]`` (float64)."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    return leaky_relu(w[:, None, :] * np.asarray(x, np.float64)[None, :, None] + b[:, None, :], alpha)


def toy_losses(w, b, x, y, alpha):
    """Mean squared error of every run: ``[runs]`` (float64)."""
    out = branch_responses(w, b, x, alpha).sum(axis=-1)
    return np.mean((out - np.asarray(y, np.float64)[None]) ** 2, axis=-1)


def initial_parameters(num_runs, num_branches, seed):
    """``w, b ~ U(-1, 1)``, shape ``[runs, N]`` each, float64."""
    rng = np.random.default_rng([seed, num_branches])
    return rng.uniform(-1, 1, (num_runs, num_branches)), rng.uniform(-1, 1, (num_runs, num_branches))


_COMPILED = {}


def _train_fn(steps, lr, alpha):
    """A compiled ``(w, b, x, y) -> (w, b)`` running `steps` plain GD steps on every run."""
    key = (steps, lr, alpha)
    if key in _COMPILED:
        return _COMPILED[key]
    import keras
    from keras import ops

    def step(_, state):
        w, b, x, y = state
        z = w[:, :, None] * x[None, None, :] + b[:, :, None]  # [runs, N, P]
        slope = ops.where(z > 0, ops.ones_like(z), alpha * ops.ones_like(z))
        residual = ops.sum(z * slope, axis=1) - y[None, :]  # [runs, P]
        dz = (2.0 / ops.cast(ops.shape(x)[0], z.dtype)) * residual[:, None, :] * slope
        return (w - lr * ops.sum(dz * x[None, None, :], axis=-1), b - lr * ops.sum(dz, axis=-1), x, y)

    def train(w, b, x, y):
        w, b, _, _ = ops.fori_loop(0, steps, step, (w, b, x, y))
        return w, b

    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        train = tf.function(train, jit_compile=True)
    elif keras.config.backend() == "jax":
        import jax

        train = jax.jit(train)
    _COMPILED[key] = train
    return train


def train_toy(x, y, w, b, steps, lr=0.01, alpha=0.01, dtype="float32"):
    """Plain gradient descent on the square loss, every initialisation at once.

    Args:
        x, y: training set, ``[P]``.
        w, b: initial parameters ``[runs, N]``.
        steps: number of full-batch GD steps.
        lr: learning rate.
        alpha: LeakyReLU negative slope.
        dtype: compute dtype.

    Returns:
        Final ``(w, b)`` as float64 numpy arrays ``[runs, N]``.
    """
    from keras import ops

    fn = _train_fn(int(steps), float(lr), float(alpha))
    args = [ops.convert_to_tensor(np.asarray(a), dtype=dtype) for a in (w, b, x, y)]
    w, b = fn(*args)
    return np.asarray(w, np.float64), np.asarray(b, np.float64)


def run_problem(problem, branch_counts, num_runs=1000, steps=20000, lr=0.01, alpha=0.01,
                threshold=3e-3, seed=0, example_branches=10, log=print):
    """Success rate and branch statistics for every N in `branch_counts`.

    Returns:
        ``(rows, example)``: one dict per N (``num_branches``,
        ``success_rate``, ``median_loss``, ``active_branches`` and
        ``mean_abs_correlation`` averaged over the successful runs), and the
        branch covariance ``R^T R / P`` of the first successful run with
        ``example_branches`` branches (None if there is none).
    """
    from branchzoo.analysis.specialization import branch_correlation, branch_covariance, silent_branches

    x, y = toy_problem(problem)
    rows, example = [], None
    for n in branch_counts:
        start = time.time()
        w0, b0 = initial_parameters(num_runs, n, seed)
        w, b = train_toy(x, y, w0, b0, steps, lr, alpha)
        losses = toy_losses(w, b, x, y, alpha)
        losses = np.where(np.isfinite(losses), losses, np.inf)
        success = losses < threshold
        responses = branch_responses(w, b, x, alpha)  # [runs, P, N]
        active, correlations = [], []
        for r in np.flatnonzero(success):
            silent = silent_branches(responses[r])["silent"]
            active.append(int((~silent).sum()))
            corr = branch_correlation(branch_covariance(responses[r]))[np.ix_(~silent, ~silent)]
            off = corr[~np.eye(len(corr), dtype=bool)]
            if off.size:
                correlations.append(float(np.abs(off).mean()))
            if example is None and n == example_branches:
                example = branch_covariance(responses[r])
        rows.append({
            "problem": problem,
            "num_branches": int(n),
            "success_rate": float(success.mean()),
            "median_loss": float(np.median(losses)),
            "active_branches": float(np.mean(active)) if active else None,
            "mean_abs_correlation": float(np.mean(correlations)) if correlations else None,
        })
        log(f"{problem} N={n:2d}: success {success.mean():.3f}, median loss {np.median(losses):.2e}, "
            f"{time.time() - start:.1f}s")
    return rows, example


def toy_figure(rows, examples, threshold):
    """Fig. 3: success rate against N (left), a trained network's branch covariance (right)."""
    from matplotlib.figure import Figure

    problems = sorted({r["problem"] for r in rows}, key=PROBLEMS.index)
    fig = Figure(figsize=(4.2 + 3.4 * len(problems), 3.4))
    ax = fig.add_subplot(1, 1 + len(problems), 1)
    for p in problems:
        sub = [r for r in rows if r["problem"] == p]
        ax.plot([r["num_branches"] for r in sub], [r["success_rate"] for r in sub], "o-", ms=3, label=p)
    ax.set_xlabel("number of branches N")
    ax.set_ylabel(f"success rate (loss < {threshold:g})")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Success over random initialisations", fontsize=9)
    for i, p in enumerate(problems, start=2):
        ax = fig.add_subplot(1, 1 + len(problems), i)
        cov = examples.get(p)
        if cov is None:
            ax.set_axis_off()
            continue
        bound = float(np.abs(cov).max()) or 1.0
        image = ax.imshow(cov, cmap="RdBu_r", vmin=-bound, vmax=bound)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title(f"{p}: R^T R / P, N={len(cov)}", fontsize=9)
        ax.set_xlabel("branch")
        ax.set_ylabel("branch")
    fig.tight_layout()
    return fig


def parse_branches(text):
    """``"2-30"``, ``"2,4,10"`` or a mix (``"2-5,10"``) to a sorted list of ints >= 1."""
    counts = set()
    try:
        for part in str(text).split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                counts.update(range(lo, hi + 1))
            elif part.strip():
                counts.add(int(part))
    except ValueError:
        counts = set()
    if not counts or min(counts) < 1:
        raise ValueError(f"`--branches` must be counts >= 1 like '2-30' or '2,4,10'. Received: {text!r}")
    return sorted(counts)


def write_outputs(folder, rows, examples, settings, command, elapsed):
    """Writes branch_toy.png, branch_toy.csv and branch_toy.md (table + command) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    fig = toy_figure(rows, examples, settings["threshold"])
    fig.savefig(os.path.join(folder, "branch_toy.png"), dpi=90)
    keys = ["problem", "num_branches", "success_rate", "median_loss", "active_branches", "mean_abs_correlation"]
    with open(os.path.join(folder, "branch_toy.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        "# Toy branch networks (000_a8fb4f73aa903839.txt, Sec. 4.1, Fig. 3)",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min on this machine).",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "Success = final mean squared error below the threshold; `active` = branches that are",
        "not silent (RMS response >= 5% of the largest), `|corr|` = mean absolute correlation",
        "between active branches' responses; both averaged over the successful runs.",
        "",
        "| problem | N | success rate | median loss | active branches | mean abs corr |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['num_branches']} | {r['success_rate']:.3f} | {r['median_loss']:.2e} "
                     f"| {fmt(r['active_branches'], '.2f')} | {fmt(r['mean_abs_correlation'], '.2f')} |")
    with open(os.path.join(folder, "branch_toy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated: xor1d, square1d")
    p.add_argument("--branches", default="2-30", help="branch counts, e.g. 2-30 or 2,4,10")
    p.add_argument("--inits", type=int, default=1000, help="random initialisations per N")
    p.add_argument("--steps", type=int, default=20000, help="gradient-descent steps")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=0.01, help="LeakyReLU negative slope")
    p.add_argument("--threshold", type=float, default=3e-3, help="success: final loss below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--example-branches", type=int, default=10, help="N of the covariance example")
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "output"))
    args = p.parse_args(argv)
    problems = [q.strip() for q in args.problems.split(",") if q.strip()]
    for q in problems:
        toy_problem(q)
    counts = parse_branches(args.branches)
    for flag in ("inits", "steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1. Received: {getattr(args, flag)}")
    start = time.time()
    rows, examples = [], {}
    for q in problems:
        problem_rows, example = run_problem(q, counts, args.inits, args.steps, args.lr, args.alpha,
                                            args.threshold, args.seed, args.example_branches)
        rows += problem_rows
        examples[q] = example
    settings = {"inits": args.inits, "steps": args.steps, "lr": args.lr, "alpha": args.alpha,
                "threshold": args.threshold, "seed": args.seed, "init": "U(-1, 1)"}
    command = "python experiments/branch_toy.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_outputs(args.output, rows, examples, settings, command, time.time() - start)
    print(f"wrote {args.output}/branch_toy.{{png,md,csv}}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
