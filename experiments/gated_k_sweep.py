#!/usr/bin/env python
"""Fig. 3 of Ahmed & Torresani (2017) at CPU size: learned fan-in K = 1, 2, 4, 8 on CIFAR-10.

Ahmed & Torresani (2017), Fig. 3: ResNeXt {20,4,8} (M=6 modules, C=8, w=4)
with learned connectivity for every fan-in K; the paper finds K=4 best on
CIFAR-100. Table 1: pruning the blocks no gate reads saves more parameters at
K=1 than at K=4 ({29,8,8}: 0.65M and 0.81M of 0.86M at test time).

Each K trains the `resnext_gated_tiny_cifar10` recipe (coupled L2, Algorithm
1's plain gate step, joint phase then gates frozen to their top-K) with
``fan_in=K`` and ``--epochs`` epochs in all (the recipe's phases and
learning-rate steps scaled to fit), then is evaluated on the test split and
pruned (`parameter_report`):

    BRANCHZOO_DATA_DIR=/work/shared/datasets python experiments/gated_k_sweep.py

writes ``experiments/output/gated_k_sweep/``: ``report.json`` (per K: test
top-1, train / test parameters, superfluous blocks, gate statistics, CPU
seconds), ``summary.md`` and ``k_sweep.png``. Runs are resumable: a K whose
run folder under ``--runs`` holds a finished model is evaluated, not
retrained.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = "resnext_gated_tiny_cifar10"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BRANCHZOO_DATA_DIR"),
                   help="folder holding CIFAR-10 (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--fan-ins", default="1,2,4,8", help="comma-separated K values (1..8)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per K (at least 2: joint + finetune)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="batches per epoch (default: the whole training split, 782 batches of 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(REPO, "experiments", "output", "gated_k_sweep"))
    p.add_argument("--runs", default=os.path.join(REPO, "runs", "gated_k_sweep"))
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir: expected the folder holding CIFAR-10 (or set BRANCHZOO_DATA_DIR), got nothing")
    try:
        args.fan_ins = [int(k) for k in args.fan_ins.split(",")]
    except ValueError:
        p.error(f"--fan-ins: expected comma-separated integers, got {args.fan_ins!r}")
    if not args.fan_ins or any(not 1 <= k <= 8 for k in args.fan_ins):
        p.error(f"--fan-ins: expected values between 1 and 8 (C=8), got {args.fan_ins}")
    if args.epochs < 2:
        p.error(f"--epochs: expected at least 2 (the recipe's two phases), got {args.epochs}")
    return args


def run_one(k, args):
    """Trains (or reuses) K's run; returns its row of the report."""
    import keras
    import numpy as np

    from branchzoo import training
    from branchzoo.analysis.registry import AnalysisData, get_analysis

    folder = os.path.join(args.runs, f"k{k}")
    metrics_path = os.path.join(folder, "metrics.json")
    cpu = None
    if not os.path.exists(metrics_path):
        run = training.resolve_run_config(
            ENTRY, data_dir=args.data_dir, epochs=args.epochs, seed=args.seed, output=folder,
            model_kwargs={"fan_in": k}, steps_per_epoch=args.steps_per_epoch)
        start = time.process_time()
        training.train(run, resume=os.path.exists(os.path.join(folder, "backup")), verbose=2)
        cpu = round(time.process_time() - start)
    with open(metrics_path) as f:
        metrics = json.load(f)
    model = keras.models.load_model(os.path.join(folder, "model.keras"), compile=False)
    numbers = get_analysis("connectivity")(model, AnalysisData()).numbers
    return {
        "fan_in": k,
        "test_top1": metrics["top1"],
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "train_params": numbers["train_params"],
        "test_params": numbers["test_params"],
        "test_param_share": numbers["test_params"] / numbers["train_params"],
        "superfluous_blocks": numbers["superfluous_blocks"],
        "gate_mean": numbers.get("gate_mean"),
        "gates_at_1": numbers.get("gates_at_1"),
        "top_k_ties": numbers.get("top_k_ties"),
        "top_k_choices": numbers.get("top_k_choices"),
        "cpu_seconds": cpu,
        "parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    }


def figure(rows):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ks = [r["fan_in"] for r in rows]
    ax.plot(ks, [100 * r["test_top1"] for r in rows], "-o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("fan-in K")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Fig. 3 at CPU size", fontsize=9)
    bx.bar([str(k) for k in ks], [r["test_param_share"] for r in rows])
    bx.set_xlabel("fan-in K")
    bx.set_ylabel("test / train parameters")
    bx.set_title("after pruning (Table 1)", fontsize=9)
    fig.tight_layout()
    return fig


def summary_markdown(report):
    rows = report["rows"]
    lines = [
        f"# Learned fan-in K on CIFAR-10 (JPEG q75): {report['model']}",
        "",
        f"Written by experiments/gated_k_sweep.py from report.json. Command: `{report['command']}`.",
        f"Each K: the `{ENTRY}` recipe with fan_in=K, {rows[0]['epochs']} epochs in all"
        + (f" of {rows[0]['steps_per_epoch']} batches each." if rows[0].get("steps_per_epoch") else "."),
        "",
        "| K | test top-1 | train params | test params (pruned) | test / train | superfluous blocks | "
        "gates at 1 | top-K ties | CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gates_at_1 = "-" if r["gates_at_1"] is None else f"{100 * r['gates_at_1']:.0f}%"
        ties = "-" if r["top_k_ties"] is None else f"{r['top_k_ties']} of {r['top_k_choices']}"
        lines.append(
            f"| {r['fan_in']} | {100 * r['test_top1']:.2f}% | {r['train_params']:,} | {r['test_params']:,} | "
            f"{r['test_param_share']:.3f} | {r['superfluous_blocks']} | {gates_at_1} | {ties} | "
            f"{r['cpu_seconds'] if r['cpu_seconds'] is not None else '-'} |")
    best = max(rows, key=lambda r: r["test_top1"])
    lines += ["", f"Best K here: {best['fan_in']} (the paper's Fig. 3: K=4)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    from branchzoo._io import write_json_atomic
    from branchzoo.training import environment

    rows = []
    for k in args.fan_ins:
        rows.append(run_one(k, args))
        print(json.dumps(rows[-1]), flush=True)
    command = "BRANCHZOO_DATA_DIR=<data> python experiments/gated_k_sweep.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--data-dir"))
    report = {"command": command.strip(), "model": "ResNeXt {20,4,8} widths 16/32/64, learned K",
              "entry": ENTRY, "rows": rows, "environment": environment()}
    os.makedirs(args.output, exist_ok=True)
    write_json_atomic(os.path.join(args.output, "report.json"), report)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(summary_markdown(report))
    figure(rows).savefig(os.path.join(args.output, "k_sweep.png"), dpi=80)
    print("wrote", args.output)
    return report


if __name__ == "__main__":
    main()
