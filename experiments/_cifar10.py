"""What the CIFAR-10 experiment scripts share: the SGD recipe shape and the Fig. 3 figure.

Imported by experiments/mpnet_probes_cifar10.py and
experiments/tail_patterns_cifar10.py (each run as a script, so this folder is
on ``sys.path``).
"""

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
