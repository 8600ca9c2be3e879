"""Train a branched ResNet18 briefly on CIFAR-10 and write its specialization report.

After Brokman & Gilboa (2022), Sec. 6 (Figs. 5-7): the per-branch
covariance / correlation of the correct-logit response, each branch's mean
contribution to the correct logit per class, per-branch confidence and
silent branches, for a BranchSum classifier trained by its zoo recipe
(shortened to this script's budget) through `branchzoo.training`:

    python experiments/branch_specialization.py --data-dir /work/shared/datasets \\
        --base-width 4 --epochs 4 --steps-per-epoch 100 --batch-size 128

writes ``experiments/output/specialization_cifar10/`` (the run's
``metrics.json`` and ``config.json``, the report's PNGs and
``report.json``, and ``README.md`` with the command and the numbers); the
trained model stays in ``runs/specialization-<model>/``.
The same pipeline runs in tests/test_specialization_realdata.py at a
smaller size.
"""

import argparse
import json
import os
import shutil
import sys
import time


def run(model="branched_resnet18_8x16_cifar10", data_dir=None, base_width=4, num_branches=None,
        epochs=3, steps_per_epoch=150, batch_size=64, analysis_batches=None, output=None, seed=0,
        verbose=2, work=None, report_only=False):
    """Trains `model` (builder overrides: `base_width`, `num_branches`) and writes the report.

    The training run (``model.keras``, ``config.json``, ``metrics.json``,
    logs) stays in `work` (default ``runs/specialization-<model>``), so the
    report can be redone with ``evaluate.py --checkpoint <work>/model.keras
    --analysis specialization --report DIR``.

    Args:
        analysis_batches: test batches (of 100) the analysis reads; None:
            the whole test split. The image-folder CIFAR-10 test split is
            sorted by class, so its first batches hold one or two classes.

        report_only: skip training; write the report of the model already in `work`.

    Returns:
        dict: ``metrics`` (of the trained run), ``report`` (the specialization
        numbers), ``folder``, ``train_seconds``.
    """
    from branchzoo import training

    output = output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "output",
                                    "specialization_cifar10")
    work = work or os.path.join("runs", f"specialization-{model}")
    timing = os.path.join(work, "train_seconds.txt")
    if report_only:
        with open(os.path.join(work, "metrics.json")) as f:
            metrics = json.load(f)
        with open(timing) as f:
            trained = float(f.read())
    else:
        shutil.rmtree(work, ignore_errors=True)
        kwargs = {"base_width": base_width}
        if num_branches is not None:
            kwargs["num_branches"] = num_branches
        config = training.resolve_run_config(
            model, data_dir=data_dir, epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
            model_kwargs=kwargs, output=work, seed=seed, jit_compile="off", validate=False)
        start = time.time()
        metrics = training.train(config, verbose=verbose)
        trained = time.time() - start
        with open(timing, "w") as f:
            f.write(f"{trained:.1f}\n")
    os.makedirs(output, exist_ok=True)
    evaluation = training.evaluate(
        checkpoint=os.path.join(work, "model.keras"), analysis="specialization", report=output,
        output=os.path.join(work, "eval.json"), batch_size=100, analysis_batches=analysis_batches, verbose=0)
    for name in ("metrics.json", "config.json"):
        shutil.copy(os.path.join(work, name), os.path.join(output, f"run-{name}"))
    with open(os.path.join(output, "report.json")) as f:
        report = json.load(f)["specialization"]
    return {"metrics": metrics, "evaluation": evaluation, "report": report, "folder": output,
            "train_seconds": trained}


def write_readme(result, command):
    m, r = result["metrics"], result["report"]
    acc = ", ".join(f"{a:.3f}" for a in r["branch_accuracy"])
    share = ", ".join(f"{s:.3f}" for s in r["activity_share"])
    dominant = ", ".join("-" if d is None else str(d) for d in r["dominant_branch"])
    top = ", ".join("-" if t is None else f"{t:.2f}" for t in r["top_branch_share"])
    lines = [
        "# Branch specialization of a branched ResNet18 on CIFAR-10 (000, Sec. 6, Figs. 5-7)",
        "",
        f"Command: `{command}` (training took {result['train_seconds'] / 60:.1f} min on this machine).",
        "",
        f"Trained model: {m['parameters']['trainable']:,} trainable parameters, {m['epochs']} epochs of "
        f"{m['optimizer_iterations'] // max(m['epochs'], 1)} steps; test top-1 {m['top1']:.4f} "
        f"(whole test split). The analysis reads {r['num_examples']} test images.",
        "",
        f"- silent branches: {r['silent_branches']} ({r['num_silent']} of {r['num_branches']})",
        f"- output-energy share per branch: {share}",
        f"- accuracy of each branch alone: {acc}; of their unclamped sum: {r['sum_accuracy']:.3f}",
        f"- mean |correlation| between active branches (correct-logit response): {r['mean_abs_correlation']:.3f}",
        f"- per class, the branch contributing most to the correct logit: {dominant}",
        f"- per class, its share of the positive contributions: {top} (mean {r['mean_top_branch_share']:.3f}; "
        f"1/N = {1 / r['num_branches']:.3f} would be no specialization)",
        "",
        "Figures: `specialization-correlation.png` / `-covariance.png` (Fig. 5), "
        "`-class_contribution.png` (Fig. 6), `-confidence.png` (Fig. 7), `-activity.png` (silent branches).",
    ]
    with open(os.path.join(result["folder"], "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="branched_resnet18_8x16_cifar10")
    p.add_argument("--data-dir", default=os.environ.get("BRANCHZOO_DATA_DIR"))
    p.add_argument("--base-width", type=int, default=4)
    p.add_argument("--num-branches", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--analysis-batches", type=int, default=None,
                   help="test batches of 100 to analyse (default: the whole test split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    p.add_argument("--report-only", action="store_true",
                   help="skip training: redo the report of the model left in runs/specialization-<model>")
    args = p.parse_args(argv)
    result = run(args.model, args.data_dir, args.base_width, args.num_branches, args.epochs,
                 args.steps_per_epoch, args.batch_size, args.analysis_batches, args.output, args.seed,
                 report_only=args.report_only)
    argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    write_readme(result, "python experiments/branch_specialization.py " + " ".join(argv))
    print(json.dumps({k: result["report"][k] for k in ("silent_branches", "mean_abs_correlation",
                                                        "mean_top_branch_share", "sum_accuracy")}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
