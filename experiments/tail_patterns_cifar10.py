#!/usr/bin/env python
"""Tail patterns of VGG16, ResNet34 and DenseNet18 at reduced width on CIFAR-10 (Fig. 3).

After Richter et al. (2022), Sec. 3 and Fig. 3: trained on CIFAR-10 at its
native 32x32, VGG16 shows a tail of low-saturated layers over which the probe
accuracy stops improving, DenseNet18 and ResNet34 (both with the ImageNet
stem) tails over which it decays. This script trains each zoo entry
(``vgg16_cifar10``, ``resnet34_cifar10``, ``densenet18_cifar10``) with every
width scaled by ``--width-multiplier`` and reads both signals:

    BRANCHZOO_DATA_DIR=/work/shared/datasets python experiments/tail_patterns_cifar10.py

writes ``experiments/output/tail_patterns_cifar10/<model>/`` (the probes and
saturation reports, ``probes-with-saturation.png`` with the tail shaded as in
Fig. 3, ``report.json``), and ``summary.md`` for all of them, written from the
reports (``--summarize`` rewrites it). A model whose ``report.json`` exists
is not trained again, so an interrupted run resumes at the next model.

Training is ``model.fit`` with the cards' recipe shape over fewer epochs:
SGD momentum 0.9, coupled L2 5e-4 (`branchzoo.optimizers.SGD`), lr 0.1
x0.1 after a third and after two thirds of the epochs, flip + 4-pixel
pad-crop (the paper: 30 epochs at full width). The tail rule is
`branchzoo.analysis.tail.tail_pattern`'s (the paper gives none).
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "experiments", "output", "tail_patterns_cifar10")
MODELS = ("vgg16_cifar10", "resnet34_cifar10", "densenet18_cifar10")
# The paper's Fig. 3 reading of each network's tail.
PAPER = {
    "vgg16_cifar10": "tail: low-saturated last layers, probe accuracy stops improving (Fig. 3a)",
    "resnet34_cifar10": "tail: skipped residual blocks, probe accuracy zig-zags and decays (Fig. 3c)",
    "densenet18_cifar10": "tail: the last dense block, probe accuracy decays (Fig. 3b)",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("BRANCHZOO_DATA_DIR"),
                   help="folder holding CIFAR-10 (default: $BRANCHZOO_DATA_DIR)")
    p.add_argument("--models", default=",".join(MODELS), help=f"zoo entries, comma-separated, of {MODELS}")
    p.add_argument("--width-multiplier", type=float, default=0.25, help="scales every width (the paper: 1)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="batches per epoch (default: the whole training split)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--probe-train", type=int, default=5000, help="training examples for the probes")
    p.add_argument("--probe-test", type=int, default=2000, help="test examples for the probes")
    p.add_argument("--saturation-examples", type=int, default=5000, help="test examples for saturation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=DEFAULT_OUTPUT)
    p.add_argument("--dpi", type=int, default=80)
    p.add_argument("--summarize", action="store_true",
                   help="only (re)write summary.md from the reports under --output")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models: expected names from {', '.join(MODELS)}, got {unknown or args.models!r}")
    if args.summarize:
        return args
    if not args.data_dir:
        p.error("--data-dir: expected the folder holding CIFAR-10 (or set BRANCHZOO_DATA_DIR), got nothing")
    if not 0 < args.width_multiplier <= 1:
        p.error(f"--width-multiplier: expected a number in (0, 1], got {args.width_multiplier}")
    for flag in ("epochs", "steps_per_epoch", "batch_size", "probe_train", "probe_test", "saturation_examples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    return args


def describe_tail(t, names_total):
    """One line for a `tail_pattern` result."""
    if not t["layers"]:
        return "none"
    text = f"{t['length']} of {names_total} layers from {t['start']}"
    gain = t["probe_gain_in_tail"]
    if gain is None:
        return text
    return (f"{text} (saturation {t['mean_saturation_tail']:.2f} in the tail vs {t['mean_saturation_rest']:.2f} "
            f"before; probe gain in the tail {gain:+.3f})")


def _single(report, analysis):
    """The tail one signal alone finds (the probes or saturation report's own ``tail``)."""
    t = report[analysis]["tail"]["main"]
    return f"{t['length']} from {t['start']}" if t["layers"] else "none"


def summary_markdown(reports):
    """The table of every model's tail from its report."""
    lines = ["# Tail patterns at reduced width on CIFAR-10 (JPEG q75), after Fig. 3", "",
             "Written by experiments/tail_patterns_cifar10.py from each model's report.json.", ""]
    rule = None
    rows, commands = [], []
    for name, r in reports.items():
        exp, t = r["experiment"], r["tail"]
        rule = t["rule"]
        train = exp["training"]
        acc, names = r["probes"]["accuracy"], r["probes"]["layers"]  # layers in forward order
        best = max(names, key=acc.get)
        rows.append(
            f"| {name} | x{exp['width_multiplier']} | {exp['parameters']:,} | {train['epochs']} x "
            f"{train['steps_per_epoch']} | {train['cpu_seconds'] / 60:.0f} | {100 * exp['test_accuracy']:.2f}% | "
            f"{r['probes']['not_converged']} of {len(names)} | {best} ({acc[best]:.3f}) | "
            f"{acc[names[-1]]:.3f} | {_single(r, 'probes')} | {_single(r, 'saturation')} | "
            f"{describe_tail(t['result'], len(names))} |")
        if exp["command"] not in commands:
            commands.append(exp["command"])
    lines += [("Command: " if len(commands) == 1 else "Commands (a model whose report.json exists is not "
               "trained again): ") + ", ".join(f"`{c}`" for c in commands) + ".", "",
              "| model | width | parameters | epochs x steps | CPU min | test top-1 | probes not converged "
              "| best probe layer | last layer's probe | probes alone: tail | saturation alone: tail "
              "| tail (probes and saturation together) |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|", *rows, ""]
    if rule:
        lines.append(f"Tail rule (ours; the paper gives none): saturation below {rule['relative']} x the "
                     f"network's median (saturation alone), probe accuracy within {rule['tolerance']} of its "
                     f"best (probes alone), both together for the last column, at least "
                     f"{rule['min_length']} layers. The paper's readings: "
                     + "; ".join(f"{m}: {PAPER[m]}" for m in reports) + ".")
    return "\n".join(lines) + "\n"


def write_summary(output, models):
    reports = {}
    for name in models:
        path = os.path.join(output, name, "report.json")
        if os.path.exists(path):
            with open(path) as f:
                reports[name] = json.load(f)
    path = os.path.join(output, "summary.md")
    with open(path, "w") as f:
        f.write(summary_markdown(reports))
    return path


def run_one(name, args, argv):
    import _cifar10
    from branchzoo import zoo
    from branchzoo.analysis.registry import write_report

    model, record, _ = _cifar10.train_and_evaluate(lambda: zoo.build(name, width_multiplier=args.width_multiplier),
                                                args)
    data = _cifar10.analysis_data(args)
    options = {"probes": {"max_train_examples": args.probe_train, "max_test_examples": args.probe_test},
               "saturation": {"max_examples": args.saturation_examples}}
    results, seconds = _cifar10.run_analyses(model, data, options)
    tails, results["probes"].figures["with-saturation"] = _cifar10.probes_with_tails(
        model, results["probes"].numbers, results["saturation"].numbers["saturation"], data.num_classes)
    (pathway, result), = tails.items()
    extra = {
        "experiment": {
            "command": _cifar10.command_line("tail_patterns_cifar10.py", argv), "model": name,
            "width_multiplier": args.width_multiplier, **record, "analysis_seconds": seconds,
            "options": options, "paper": PAPER[name],
        },
        "tail": {"pathway": pathway, "result": result,
                 "rule": {k: result[k] for k in ("relative", "tolerance", "min_length")}},
    }
    return write_report(os.path.join(args.output, name), results, extra=extra, dpi=args.dpi)


def main(argv=None):
    args = parse_args(argv)
    if not args.summarize:
        for name in args.models:
            if os.path.exists(os.path.join(args.output, name, "report.json")):
                print(f"{name}: report.json exists, not trained again", flush=True)
                continue
            print("wrote", *run_one(name, args, argv), sep="\n  ", flush=True)
    print("wrote", write_summary(args.output, args.models))


if __name__ == "__main__":
    main()
