"""Replication of Webb et al. (2019), Sec. 4.1 (Table 2, Fig. 4) on MNIST.

Trains 1-M-1024-H and 256-M-4-H MLP ensembles with the modular loss at
several lambda values, with early stopping on 10,000 examples held out of the
training set, and writes the results table (ensemble test error, mean member
test error) and the module-dropping figure:

    python experiments/modular_mnist.py --data-dir /work/shared/datasets

The paper uses Fashion-MNIST, which these machines do not have; MNIST (same
IDX format, 28x28x1, 10 classes) stands in, so absolute errors are far lower
than the paper's and only the ordering can be compared. Settings follow the
paper and its reference code: batch 100, SGD
momentum 0.9, no augmentation, global normalisation with the training
set's mean/std (one mean and one std over all pixels: MNIST has one channel), learning rate 0.02 * M for lambda <= 0.95 and 0.006 * M above
(5.12 / 1.536 for 256 modules; the reference's 5.15 rounds this), test error
at the epoch of lowest validation error. To fit the CPU budget the epochs are
capped (``--epochs``, default 25, instead of 200) with ``--patience``
epochs without validation improvement ending a run early.

For a single module the modular loss is the cross-entropy whatever lambda
is (tests/test_modular.py checks it), so 1-M-1024-H is trained once.

Outputs (``--output``, default experiments/output): ``modular_mnist.md``
(tables, the command, the environment), ``modular_mnist.csv``,
``modular_mnist.json`` (every number, with the module-dropping curves),
``modular_mnist_dropping.png`` (Fig. 4), ``modular_mnist_dominance.png``
(module and ensemble validation error per epoch at the largest lambda) and
the trained models under ``runs/modular_mnist/`` (not committed).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402


def learning_rate(num_modules, lambda_):
    """The reference code's learning rate: 0.02 * M up to lambda 0.95, 0.006 * M above (Sec. 4.1 scripts)."""
    if num_modules == 1:
        return 0.02
    return (0.02 if lambda_ <= 0.95 else 0.006) * num_modules


def load_mnist(data_dir, dataset, val_size, seed, train_examples=None):
    """Normalised train / validation / test arrays; validation drawn from the training set."""
    from branchzoo import data

    info = data.dataset_info(dataset, data_dir=data_dir)
    mean, std = np.float32(info.mean[0]), np.float32(info.std[0])

    def norm(images):
        return (images.astype(np.float32) / 255.0 - mean) / std

    x, y, _ = data.load_arrays(dataset, "train", data_dir=data_dir)
    x_test, y_test, _ = data.load_arrays(dataset, "test", data_dir=data_dir)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    val, train = order[:val_size], order[val_size:]
    if train_examples:
        train = train[:train_examples]
    return (norm(x[train]), y[train]), (norm(x[val]), y[val]), (norm(x_test), y_test)


class BestWeights(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest validation error; stops after `patience` worse epochs."""

    def __init__(self, patience):
        super().__init__()
        self.patience = patience
        self.best, self.best_epoch, self.weights, self.wait = np.inf, -1, None, 0

    def on_epoch_end(self, epoch, logs=None):
        error = 1.0 - logs["val_accuracy"]
        if error < self.best:
            self.best, self.best_epoch, self.wait = error, epoch, 0
            self.weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def train_one(num_modules, hidden, lambda_, splits, args):
    """Trains one ensemble; returns its row of results and its test logits."""
    from branchzoo import losses
    from branchzoo.analysis.modular import ModuleErrorHistory, module_errors
    from branchzoo.models.modular import modular_mlp

    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = splits
    keras.utils.set_random_seed(args.seed)
    model = modular_mlp(num_modules, hidden)
    lr = learning_rate(num_modules, lambda_)
    model.compile(
        keras.optimizers.SGD(lr, momentum=0.9),
        loss=losses.ModularLoss(lambda_),
        metrics=[losses.EnsembleAccuracy(name="accuracy"), losses.MemberError(), losses.MemberLoss(),
                 losses.EnsembleLoss()],
    )
    best = BestWeights(args.patience)
    history_cb = ModuleErrorHistory(x_val, y_val)
    start = time.perf_counter()
    history = model.fit(x_tr, y_tr, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(x_val, y_val), callbacks=[history_cb, best], verbose=0)
    seconds = time.perf_counter() - start
    logits = model.predict(x_te, batch_size=1000, verbose=0)
    per_module, ensemble_error = module_errors(logits, y_te)
    test = model.evaluate(x_te, y_te, batch_size=1000, return_dict=True, verbose=0)
    os.makedirs(args.runs, exist_ok=True)
    model.save(os.path.join(args.runs, f"{model.name}-lambda{lambda_}.keras"))
    row = {
        "model": f"{num_modules}-M-{hidden}-H",
        "num_modules": num_modules,
        "lambda": lambda_,
        "lr": lr,
        "parameters": model.count_params(),
        "test_error": ensemble_error,
        "mean_member_test_error": float(per_module.mean()),
        "best_member_test_error": float(per_module.min()),
        "test_ensemble_loss": float(test["ensemble_loss"]),
        "test_member_loss": float(test["member_loss"]),
        "best_epoch": best.best_epoch + 1,
        "epochs_run": len(history.epoch),
        "val_error_at_best": float(best.best),
        "seconds": round(seconds, 1),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "module_val_errors_per_epoch": history_cb.errors,
        "ensemble_val_errors_per_epoch": history_cb.ensemble_errors,
    }
    print(f"{row['model']} lambda={lambda_}: test error {ensemble_error:.4f}, mean member "
          f"{row['mean_member_test_error']:.4f}, best epoch {row['best_epoch']}/{row['epochs_run']}, "
          f"{seconds:.0f} s", flush=True)
    return row, logits


def _rounded(obj, digits=5):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def markdown(rows, analyses, args, command, environment, total_seconds, sizes):
    lines = [
        "# Modular-loss MLP ensembles on MNIST (replication of 004, Sec. 4.1)",
        "",
        f"Command: `{command}`",
        "",
        f"Measured {datetime.date.today().isoformat()} on {environment['machine']} "
        f"({environment['cpus']} CPUs shared with other jobs), TF {environment['tensorflow']}, "
        f"Keras {environment['keras']}; {total_seconds / 60:.1f} minutes in all. One trial (seed "
        f"{args.seed}): the paper averages 5.",
        "",
        f"MNIST stands in for Fashion-MNIST (not available here): {sizes[0]:,} training / {sizes[1]:,} "
        f"validation (held out of the training set, seed {args.seed}) / {sizes[2]:,} test examples. Batch "
        f"{args.batch_size}, SGD momentum 0.9, at most {args.epochs} epochs (the paper: 200) and "
        f"early stopping after {args.patience} epochs without a lower validation error; test numbers "
        "at the epoch of lowest validation error.",
        "",
        "| model | lambda | lr | parameters | test error | mean member test error | best member test error "
        "| test ensemble loss | test member loss | best epoch / epochs run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lam = "any (M = 1)" if r["num_modules"] == 1 else f"{r['lambda']:g}"
        lines.append(
            f"| {r['model']} | {lam} | {r['lr']:g} | {r['parameters']:,} | {100 * r['test_error']:.2f}% | "
            f"{100 * r['mean_member_test_error']:.2f}% | {100 * r['best_member_test_error']:.2f}% | "
            f"{r['test_ensemble_loss']:.4f} | {r['test_member_loss']:.4f} | {r['best_epoch']} / {r['epochs_run']} |"
        )
    lines += [
        "",
        "Paper, Table 2 (Fashion-MNIST, 5 trials): 1-M-1024-H 10.2%; 256-M-4-H independent "
        "(lambda = 0) 16.3%, joint (lambda = 1) 10.5%, lambda = 0.95 10.3%.",
        "",
        f"## Module dropping and the other analyses ({rows[-1]['model']}, test set)",
        "",
        "Test error of the ensemble of N randomly kept modules (20 draws per N; "
        "`branchzoo.analysis.modular.module_dropping_curve`), one-vs-all F1 of random and "
        "specialist sub-ensembles (`specialist_subensembles`, 200 candidates, chosen on half of "
        "the test set, scored on the other half) and per-module prediction entropy "
        "(`entropy_statistics`, Table 6).",
        "",
    ]
    M = max(r["num_modules"] for r in rows)
    kept_cols = [M] + sorted({max(1, M // d) for d in (2, 4, 10, 20)} | {1}, reverse=True)
    sizes = sorted(next(iter(analyses.values()))["specialists"], key=int)
    lines.append("| lambda | " + " | ".join(f"{k} of {M} kept" for k in kept_cols) + " | "
                 + " | ".join(f"F1 random / specialist, {n} module{'s' if n != '1' else ''}" for n in sizes)
                 + " | entropy min / max / mean / std |")
    lines.append("|---:|" + "---:|" * (len(kept_cols) + len(sizes) + 1))
    for lam, a in analyses.items():
        curve = a["dropping"]
        err = dict(zip(curve["kept"], (1 - m for m in curve["accuracy_mean"])))
        s, e = a["specialists"], a["entropy"]
        lines.append(
            f"| {lam} | " + " | ".join(f"{100 * err[k]:.2f}%" for k in kept_cols) + " | "
            + " | ".join(f"{s[n]['random_f1']:.3f} / {s[n]['specialist_f1']:.3f}" for n in sizes) + " | "
            f"{e['min']:.3f} / {e['max']:.3f} / {e['mean']:.3f} / {e['std']:.3f} |"
        )
    lines += ["", "Figure: `modular_mnist_dropping.png` (test error against modules dropped, Fig. 4); "
              "`modular_mnist_dominance.png` (module and ensemble validation error per epoch, largest lambda)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BRANCHZOO_DATA_DIR"),
                   help="folder holding mnist/ (default $BRANCHZOO_DATA_DIR)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--lambdas", default="0,0.95,1", help="comma-separated lambda values for the ensemble")
    p.add_argument("--modules", type=int, default=256, help="M of the ensemble (hidden units 1024 / M)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--val-size", type=int, default=10000)
    p.add_argument("--train-examples", type=int, default=None, help="use only this many training examples (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(REPO, "experiments", "output"))
    p.add_argument("--runs", default=os.path.join(REPO, "runs", "modular_mnist"))
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the folder holding mnist/ (or set BRANCHZOO_DATA_DIR), got nothing")
    if 1024 % args.modules:
        p.error(f"--modules: expected a divisor of 1024, got {args.modules}")
    lambdas = [float(v) for v in args.lambdas.split(",")]

    import tensorflow as tf

    from branchzoo.analysis.modular import (default_kept_counts, dominance_figure, entropy_statistics,
                                            keep_probability_curve, module_dropping_curve, module_entropies, robustness_figure,
                                            specialist_subensembles)
    command = " ".join(["python experiments/modular_mnist.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    splits = load_mnist(args.data_dir, args.dataset, args.val_size, args.seed, args.train_examples)
    hidden = 1024 // args.modules
    rows, analyses, curves = [], {}, {}
    row, wide_logits = train_one(1, 1024, 1.0, splits, args)
    rows.append(row)
    y_test = splits[2][1]
    for lam in lambdas:
        row, logits = train_one(args.modules, hidden, lam, splits, args)
        rows.append(row)
        # the reference grid plus the kept counts the table reports (M/2, M/4, M/10, M/20 kept)
        kept = sorted(set(default_kept_counts(args.modules)) | {max(1, args.modules // d) for d in (2, 4, 10, 20)})
        dropping = module_dropping_curve(logits, y_test, kept=kept, draws=20, seed=args.seed)
        analyses[f"{lam:g}"] = {
            "dropping": dropping,
            "keep_probability": keep_probability_curve(logits, y_test, draws=20, seed=args.seed),
            "specialists": specialist_subensembles(logits, y_test, seed=args.seed),
            "entropy": entropy_statistics(module_entropies(logits)),
        }
        curves[f"{row['model']}, λ={lam:g}"] = dropping
    total = time.perf_counter() - start

    os.makedirs(args.output, exist_ok=True)
    environment = {"machine": platform.machine(), "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                   "keras": keras.__version__, "python": platform.python_version()}
    stem = os.path.join(args.output, "modular_mnist")
    fig = robustness_figure(curves, "dropped", title=f"{args.modules}-M-{hidden}-H on MNIST: module dropping")
    ax = fig.axes[0]
    ax.axhline(rows[0]["test_error"], color="k", linestyle=":", linewidth=1, label="1-M-1024-H")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.savefig(stem + "_dropping.png", dpi=90)
    top = rows[-1]
    fig = dominance_figure(top["module_val_errors_per_epoch"], top["ensemble_val_errors_per_epoch"],
                           title=f"{top['model']}, λ={top['lambda']:g}: validation error per epoch")
    fig.savefig(stem + "_dominance.png", dpi=90)
    with open(stem + ".md", "w") as f:
        f.write(markdown(rows, analyses, args, command, environment, total, [len(s[1]) for s in splits]))
    columns = ["model", "lambda", "lr", "parameters", "test_error", "mean_member_test_error",
               "best_member_test_error", "test_ensemble_loss", "test_member_loss", "best_epoch", "epochs_run",
               "val_error_at_best", "seconds"]
    with open(stem + ".csv", "w") as f:
        f.write(",".join(columns) + "\n")
        for r in rows:
            f.write(",".join(str(r[c]) for c in columns) + "\n")
    with open(stem + ".json", "w") as f:
        json.dump(_rounded({"command": command, "environment": environment, "rows": rows, "analyses": analyses,
                            "args": vars(args) | {"output": None, "runs": None}}), f)
    print(f"Wrote {stem}.md/.csv/.json and the figures in {total / 60:.1f} minutes")


if __name__ == "__main__":
    main()
