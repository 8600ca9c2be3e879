"""What the CIFAR-10 experiment scripts share: training by the papers' schedule shape, the
analyses with their timings, the recorded command and the Fig. 3 figure.

Imported by experiments/mpnet_probes_cifar10.py and
experiments/tail_patterns_cifar10.py (each run as a script, so this folder is
on ``sys.path``).
"""

import sys
import time

OPTIMIZER = "SGD momentum 0.9, coupled L2 5e-4, lr x0.1 at 1/3 and 2/3"


def compile_sgd(model, steps_per_epoch, epochs, lr, l2=5e-4):
    """Compiles `model` for the papers' schedule shape: SGD momentum 0.9 with coupled L2
    (`branchzoo.optimizers.SGD`), lr x0.1 after a third and after two thirds of the steps."""
    import keras

    from branchzoo import optimizers

    boundaries = [round(steps_per_epoch * epochs * f) for f in (1 / 3, 2 / 3)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [lr, lr * 0.1, lr * 0.01])
    model.compile(optimizer=optimizers.SGD(schedule, momentum=0.9, l2=l2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def train_and_evaluate(build, args, attach=None):
    """Seeds, builds (``build()``), trains on CIFAR-10 by `compile_sgd` with flip + pad-crop and
    evaluates on the test split, timing all of it.

    `args` carries ``seed``, ``data_dir``, ``batch_size``, ``steps_per_epoch``, ``epochs`` and
    ``lr``; ``attach(model)`` runs after compiling (e.g. to attach a gradient recorder).
    Returns ``(model, record, attached)``: ``record`` holds ``training`` (the settings,
    seconds, CPU seconds and history, as the reports store them), ``test_accuracy``,
    ``test_loss`` and ``parameters`` (trainable); ``attached`` is what ``attach`` returned.
    """
    import keras
    import numpy as np

    from branchzoo import data

    keras.utils.set_random_seed(args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    model = build()
    train = data.load_dataset("cifar10", "train", args.batch_size, data_dir=args.data_dir, seed=args.seed,
                              steps_per_epoch=args.steps_per_epoch)
    steps_per_epoch = int(train.cardinality().numpy())
    compile_sgd(model, steps_per_epoch, args.epochs, args.lr)
    attached = attach(model) if attach is not None else None
    test = data.load_dataset("cifar10", "test", 256, data_dir=args.data_dir)
    history = model.fit(train, epochs=args.epochs, verbose=2, shuffle=False)  # the pipeline shuffles
    loss, accuracy = model.evaluate(test, verbose=0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"{model.name}: trained in {seconds:.0f} s; test accuracy {accuracy:.4f}", flush=True)
    record = {
        "parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "training": {"epochs": args.epochs, "steps_per_epoch": steps_per_epoch, "batch_size": args.batch_size,
                     "lr": args.lr, "optimizer": OPTIMIZER,
                     "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                     "history": {k: [round(float(v), 4) for v in vs] for k, vs in history.history.items()}},
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
    }
    return model, record, attached


def analysis_data(args):
    """CIFAR-10 for the analyses: the training split unaugmented, the test split, batches of 256."""
    from branchzoo import data
    from branchzoo.analysis.registry import AnalysisData

    info = data.dataset_info("cifar10", data_dir=args.data_dir)
    return AnalysisData(
        train=data.load_dataset("cifar10", "train", 256, augment=False, data_dir=args.data_dir, seed=args.seed),
        test=data.load_dataset("cifar10", "test", 256, data_dir=args.data_dir),
        num_classes=info.num_classes, class_names=list(info.class_names), seed=args.seed,
    )


def run_analyses(model, data, options):
    """Runs each named analysis with its keyword arguments: ``(results, seconds)``, seconds rounded to 0.1."""
    from branchzoo.analysis.registry import get_analysis

    results, seconds = {}, {}
    for name, kwargs in options.items():
        t0 = time.perf_counter()
        results[name] = get_analysis(name)(model, data, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    return results, seconds


def command_line(script, argv=None):
    """The command that ran `script`, as the reports record it (the data folder left out)."""
    args = argv if argv is not None else sys.argv[1:]
    return (f"BRANCHZOO_DATA_DIR=<data> python experiments/{script} "
            + " ".join(a for a in args if not a.startswith("--data-dir"))).strip()


def probes_with_tails(model, probes, saturation, num_classes):
    """Each pathway's tail pattern from the probe and saturation numbers, and the Fig. 3 style
    figure (probe accuracy and saturation together, tails shaded): ``(tails, figure)``."""
    from branchzoo.analysis import plots, tail
    from branchzoo.analysis.extraction import analysis_layers
    from branchzoo.analysis.probes import ProbeResult

    infos = analysis_layers(model)
    tails = tail.tail_patterns(infos, saturation=saturation, accuracy=probes["accuracy"])
    result = ProbeResult(
        layers=infos, accuracy=probes["accuracy"], train_accuracy=probes["train_accuracy"],
        model_test_accuracy=probes["model_test_accuracy"], num_classes=num_classes,
        num_train=probes["num_train"], num_test=probes["num_test"], not_converged=probes["not_converged"],
        pathway_titles=probes.get("pathway_titles", {}))
    figure = plots.plot_probes(result, saturation=saturation, spans=tail.tail_spans(tails, infos))
    return tails, figure
