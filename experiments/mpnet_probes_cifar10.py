#!/usr/bin/env python
"""MPNet2(1:3x3, 4:7x7) at reduced width, trained on CIFAR-10, then the full report.

After Richter et al. (2022), Sec. 4.1 and Fig. 5a: with one 3x3 layer against
four 7x7 layers per block, the paper finds the short pathway dominant (its
probe accuracy advances the solution) and the long one non-dominant, with
smaller accumulated gradients (Fig. 6b); removing the non-dominant layers
costs 2.16 points. This script trains the same topology at a CPU-sized width
and writes every analysis for it:

    BRANCHZOO_DATA_DIR=/work/shared/datasets python experiments/mpnet_probes_cifar10.py

writes ``experiments/output/mpnet_probes_cifar10/``: ``probes-accuracy.png``,
``saturation-layers.png`` (tail patterns shaded), ``cka-output.png``,
``cka-heatmap.png``, ``gradients-flow.png`` (|mean(dL/dW)| accumulated over
every training step), ``pathway_removal-drop.png``,
``probes-with-saturation.png`` (Fig. 3 style), ``report.json`` (every
number, the settings, the training history, a ``dominance`` summary per
block and the ``tail`` of each pathway by probes and saturation together)
and ``summary.md``, written from ``report.json`` (``--summarize REPORT``
rewrites it from an existing report).

Training is ``model.fit`` with the paper's schedule shape (SGD momentum 0.9,
lr x0.1 after a third and after two thirds of the epochs; the paper: 30
epochs, lr 0.1) over fewer epochs, coupled L2 weight decay 5e-4
(`branchzoo.optimizers.SGD`) and flip + 4-pixel pad-crop: a CPU-sized run,
not the paper's 30 epochs.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "experiments", "output", "mpnet_probes_cifar10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BRANCHZOO_DATA_DIR"),
                   help="folder holding CIFAR-10 (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--widths", default="8,16,32,64", help="stage widths (the paper: 64,128,256,512)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="batches per epoch (default: the whole training split)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1,
                   help="SGD learning rate, x0.1 after 1/3 and 2/3 of the epochs (the paper's schedule shape)")
    p.add_argument("--probe-train", type=int, default=5000, help="training examples for the probes")
    p.add_argument("--probe-test", type=int, default=2000, help="test examples for probes and CKA")
    p.add_argument("--saturation-examples", type=int, default=10000, help="test examples for saturation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=DEFAULT_OUTPUT)
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--summarize", metavar="REPORT",
                   help="only (re)write summary.md beside an existing report.json")
    args = p.parse_args(argv)
    if args.summarize:
        return args
    if not args.data_dir:
        p.error("--data-dir: expected the folder holding CIFAR-10 (or set BRANCHZOO_DATA_DIR), got nothing")
    try:
        args.widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        p.error(f"--widths: expected comma-separated integers, got {args.widths!r}")
    for flag in ("epochs", "steps_per_epoch", "batch_size", "probe_train", "probe_test",
                 "saturation_examples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    return args


def dominance(numbers_probes, numbers_gradients):
    """Per block: probe accuracy and |mean(dL/dW)| (accumulated) of each pathway's last conv."""
    blocks = {}
    for name in numbers_probes["layers"]:
        if "/path" not in name:
            continue
        block, layer = name.split("/")
        path = layer.split("_")[0]
        blocks.setdefault(block, {})[path] = name  # the last conv of the pathway wins
    summary = {}
    for block, last in blocks.items():
        summary[block] = {
            path: {
                "layer": name,
                "probe_accuracy": numbers_probes["accuracy"][name],
                "abs_mean_gradient": numbers_gradients["abs_mean_gradient"].get(name),
            }
            for path, name in sorted(last.items())
        }
    short_wins = sum(v["path1"]["probe_accuracy"] > v["path2"]["probe_accuracy"] for v in summary.values())
    larger_gradient = sum(v["path1"]["abs_mean_gradient"] > v["path2"]["abs_mean_gradient"]
                          for v in summary.values())
    return {"blocks": summary, "num_blocks": len(summary), "blocks_where_short_path_probes_higher": short_wins,
            "blocks_where_short_path_gradient_larger": larger_gradient}


def summary_markdown(report):
    """The per-block comparison of the two pathways, the tails and the removal test, from `report`."""
    exp = report["experiment"]
    probes, cka, sat, grads = report["probes"], report["cka"], report["saturation"], report["gradients"]
    removal = report["pathway_removal"]
    dom = report["dominance"]
    titles = probes.get("pathway_titles", {})
    train = exp["training"]
    lines = [
        f"# {exp['model']}, widths {exp['widths']}, on CIFAR-10 (JPEG q75)",
        "",
        f"Written by experiments/mpnet_probes_cifar10.py from report.json. Command: `{exp['command']}`.",
        f"{exp['parameters']:,} trainable parameters; {train['epochs']} epochs of "
        f"{train['steps_per_epoch']} steps of batch {train['batch_size']} ({train['optimizer']}) in "
        f"{train['seconds']:.0f} s wall, {train['cpu_seconds']:.0f} s CPU; test top-1 "
        f"{100 * exp['test_accuracy']:.2f}% (chance 10%). Probes: {probes['num_train']} train / "
        f"{probes['num_test']} test examples, {probes['not_converged']} of {len(probes['layers'])} "
        f"not converged; saturation (delve's rule, every position a sample): {sat['samples']} test "
        f"examples; CKA: linear, {probes['num_test']} test examples; gradient flow: {grads['source']}.",
        "",
        "Last layer of each pathway in each block (path1 = "
        f"{titles.get('path1', 'path1')}, the short one; path2 = {titles.get('path2', 'path2')}):",
        "",
        "| block | probe acc. path1 | probe acc. path2 | CKA with output path1 | path2 | "
        "saturation path1 | path2 | abs. mean grad. path1 / path2 | top-1 lost without path2 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    drops = removal["pathways"]["path2"]["drop"]
    for block, paths in dom["blocks"].items():
        a, b = paths["path1"], paths["path2"]
        ratio = a["abs_mean_gradient"] / b["abs_mean_gradient"] if b["abs_mean_gradient"] else float("nan")
        lines.append(
            f"| {block} | {a['probe_accuracy']:.3f} | {b['probe_accuracy']:.3f} | "
            f"{cka['cka_with_output'][a['layer']]:.3f} | {cka['cka_with_output'][b['layer']]:.3f} | "
            f"{sat['saturation'][a['layer']]:.2f} | {sat['saturation'][b['layer']]:.2f} | {ratio:.1f} | "
            f"{100 * drops[block]:.2f} |"
        )
    lines += [
        "",
        "Means over each pathway's own layers:",
        "",
        "| | path1 | path2 |",
        "|---|---:|---:|",
    ]
    for label, section, key in (("probe accuracy", probes, "mean_accuracy"),
                                ("CKA with output", cka, "mean_cka_with_output"),
                                ("saturation", sat, "mean_saturation"),
                                ("abs. mean gradient (accumulated)", grads, "abs_mean_gradient")):
        lines.append(f"| {label} | {section[key + '/path1']:.4g} | {section[key + '/path2']:.4g} |")
    lines += ["", "Pathway removal (one block at a time, no retraining; the paper: 2.16 points on "
              "average for the non-dominant layers):", ""]
    for p, r in removal["pathways"].items():
        lines.append(f"- without {p} ({titles.get(p, p)}): {100 * r['mean_drop']:.2f} points lost on "
                     f"average over the blocks, {100 * r['all_blocks_drop']:.2f} without it in every block "
                     f"(intact {100 * r['intact_top1']:.2f}%, {r['examples']} test examples).")
    lines += ["", "Tail patterns (probes and saturation together; "
              f"rule: saturation below {report['tail']['rule']['relative']} x the sequence's median and "
              f"probe accuracy within {report['tail']['rule']['tolerance']} of its best; at least "
              f"{report['tail']['rule']['min_length']} layers):", ""]
    for p, t in report["tail"]["pathways"].items():
        if t["layers"]:
            lines.append(f"- {p}: {t['length']} layers from {t['start']} ({100 * t['fraction']:.0f}% of its "
                         f"sequence); probe gain in the tail {t['probe_gain_in_tail']:+.3f}.")
        else:
            lines.append(f"- {p}: none.")
    lines += [
        "",
        f"Short pathway's last layer probes higher in {dom['blocks_where_short_path_probes_higher']} of "
        f"{dom['num_blocks']} blocks; its accumulated gradient is larger in "
        f"{dom['blocks_where_short_path_gradient_larger']} of {dom['num_blocks']}.",
    ]
    return "\n".join(lines) + "\n"


def write_summary(report_path):
    with open(report_path) as f:
        report = json.load(f)
    path = os.path.join(os.path.dirname(os.path.abspath(report_path)), "summary.md")
    with open(path, "w") as f:
        f.write(summary_markdown(report))
    return path


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        print("wrote", write_summary(args.summarize))
        return None
    import _cifar10
    from branchzoo import data
    from branchzoo.analysis.gradients import GradientFlowRecorder
    from branchzoo.analysis.registry import write_report
    from branchzoo.models import mpnet

    info = data.dataset_info("cifar10", data_dir=args.data_dir)

    def attach(model):
        recorder = GradientFlowRecorder(model)
        recorder.attach(model.optimizer)
        return recorder

    model, record, recorder = _cifar10.train_and_evaluate(
        lambda: mpnet([[1, 3], [4, 7]], blocks_per_stage=2, widths=args.widths,
                      num_classes=info.num_classes, input_shape=info.image_shape),
        args, attach=attach)
    options = {
        "probes": {"max_train_examples": args.probe_train, "max_test_examples": args.probe_test},
        "saturation": {"max_examples": args.saturation_examples},
        "cka": {"max_examples": args.probe_test, "heatmap_examples": min(args.probe_test, 1000)},
        "gradients": {"recorded": recorder},
        "pathway_removal": {},
    }
    results, seconds = _cifar10.run_analyses(model, _cifar10.analysis_data(args), options)

    # Fig. 3 style: probe accuracy and saturation in one figure, each pathway's tail shaded
    # where both signals put it.
    tails, results["probes"].figures["with-saturation"] = _cifar10.probes_with_tails(
        model, results["probes"].numbers, results["saturation"].numbers["saturation"], info.num_classes)

    any_tail = next(iter(tails.values()))
    extra = {
        "experiment": {
            "command": _cifar10.command_line("mpnet_probes_cifar10.py", argv),
            "model": "MPNet2(1:3x3, 4:7x7)",
            "widths": args.widths,
            "parameters": record["parameters"],
            "training": record["training"],
            "test_accuracy": record["test_accuracy"],
            "test_loss": record["test_loss"],
            "analysis_seconds": seconds,
            "options": {k: {o: v for o, v in kw.items() if o != "recorded"} for k, kw in options.items()},
        },
        "dominance": dominance(results["probes"].numbers, results["gradients"].numbers),
        "tail": {"pathways": tails, "rule": {k: any_tail[k] for k in ("relative", "tolerance", "min_length")}},
    }
    written = write_report(args.output, results, extra=extra, dpi=args.dpi)
    written.append(write_summary(os.path.join(args.output, "report.json")))
    print(json.dumps(extra["dominance"], indent=1))
    print("wrote", *written, sep="\n  ")
    return extra


if __name__ == "__main__":
    main()
