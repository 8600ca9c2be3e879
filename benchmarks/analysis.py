"""Time of the analysis tools: CKA, saturation, probes, callback overhead (four tables).

1. `cka` (linear, debiased, `CKAAccumulator` over batches of 1,000) on random float32 features [n, d] against
   one float64 Gram product: n x n ``x @ x.T`` (the CKA formulas') and d x d ``x.T @ x``.
2. `layer_saturation` over an epoch of images of `--model` (random, or CIFAR-10 from ``--data-dir``), every
   conv output and pathway sum, against plain inference on the same images.
3. A full probe report (`fit_probes`): extraction and fitting.
4. Each analysis as `AnalysisCallback` runs it at its default period, against one training epoch:
   overhead = seconds per run / (period x seconds per epoch).

    python benchmarks/analysis.py                                   # n = 10,000, d = 4,096, 50,000 images
    python benchmarks/analysis.py --cka-n 2000 --cka-d 1024 \\
        --epoch-examples 5000 --model-kwargs "widths=[16,32,64,128]"   # a reduced run
"""

import argparse

import numpy as np

from _common import head, header, positive_int, row, timed


def cka_table(n, d, repeats):
    from branchzoo.analysis import CKAAccumulator, cka
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = (x[:, : d // 2] @ rng.standard_normal((d // 2, d), dtype=np.float32)
         + rng.standard_normal((n, d), dtype=np.float32))
    x64 = x.astype(np.float64)
    gram_nn, _ = timed(lambda: x64 @ x64.T, repeats)
    gram_dd, _ = timed(lambda: x64.T @ x64, repeats)

    def accumulate():
        acc = CKAAccumulator()
        for i in range(0, n, 1000):
            acc.update(x[i:i + 1000], y[i:i + 1000])
        return acc.result()

    rows = [("one float64 Gram product x @ x.T (n x n)", gram_nn),
            ("one float64 Gram product x.T @ x (d x d)", gram_dd)]
    for label, fn in (("cka linear", lambda: cka(x, y)),
                      ("cka linear, debiased", lambda: cka(x, y, debiased=True)),
                      ("CKAAccumulator linear, batches of 1000", accumulate)):
        rows.append((label, timed(fn, repeats)[0]))
    print(f"# CKA: x, y float32 [{n}, {d}], best of {repeats}")
    print(head("measurement", "seconds", "/ Gram n x n", "/ Gram d x d", align="lrrr"))
    for label, seconds in rows:
        print(row(label, f"{seconds:.3f}", f"{seconds / gram_nn:.2f}", f"{seconds / gram_dd:.2f}"), flush=True)


def _model_and_data(args, overrides):
    import branchzoo
    model = branchzoo.build(args.model, input_shape=(args.image_size, args.image_size, 3), num_classes=10,
                            **overrides)
    if args.data_dir:
        from branchzoo import data
        return (model, *(data.load_dataset("cifar10", split, args.batch_size, augment=False, shuffle=False,
                                           data_dir=args.data_dir) for split in ("train", "test")))

    def random_split(count, seed):
        r = np.random.default_rng(seed)
        return (r.standard_normal((count, args.image_size, args.image_size, 3), dtype=np.float32),
                r.integers(0, 10, count))
    return model, random_split(args.epoch_examples, 1), random_split(min(args.epoch_examples, 10_000), 2)


def saturation_table(args, model, train):
    from branchzoo.analysis import analysis_layers, layer_saturation
    from branchzoo.analysis.extraction import iterate_batches

    def inference():
        for x, _ in iterate_batches(train, args.batch_size):
            model.predict_on_batch(x)

    inference()  # trace
    plain, _ = timed(inference)
    layer_saturation(model, next(iterate_batches(train, args.batch_size)), batch_size=args.batch_size)  # trace
    sat, out = timed(lambda: layer_saturation(model, train, batch_size=args.batch_size))
    print(f"\n# saturation over one epoch of {out['samples']} images, {args.model} {args.model_kwargs or ''}, "
          f"{len(analysis_layers(model))} layers, batch {args.batch_size}")
    print(head("measurement", "seconds", "/ inference", align="lrr"))
    print(row("model inference only", f"{plain:.2f}", "1.00"))
    print(row("layer_saturation (extraction + covariance + eigen)", f"{sat:.2f}", f"{sat / plain:.2f}"), flush=True)


def probes_table(args, model, train, test):
    from branchzoo.analysis import fit_probes
    seconds, result = timed(lambda: fit_probes(model, train, test, max_train_examples=args.probe_train,
                                               max_test_examples=args.probe_test, batch_size=args.batch_size))
    layers = len(result.accuracy)
    print(f"\n# full probe report: {layers} layers, {result.num_train} train / {result.num_test} test examples, "
          f"{args.model} {args.model_kwargs or ''}")
    print(head("measurement", "seconds", "per layer", align="lrr"))
    for key in ("extract", "fit"):
        print(row(key, f"{result.seconds[key]:.2f}", f"{result.seconds[key] / layers:.3f}"))
    print(row("total", f"{seconds:.2f}", f"{seconds / layers:.3f}"), flush=True)


def callback_table(args, model, train, test, names):
    import keras

    from branchzoo.analysis.registry import AnalysisData
    from branchzoo.callbacks import AnalysisCallback
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if isinstance(train, tuple):
        fit_data = dict(x=train[0], y=train[1], batch_size=args.batch_size)
        warm = dict(x=train[0][: args.batch_size], y=train[1][: args.batch_size], batch_size=args.batch_size)
    else:
        fit_data, warm = dict(x=train), dict(x=train.take(1))
    model.fit(**warm, epochs=1, verbose=0)  # trace the train step
    epoch, _ = timed(lambda: model.fit(**fit_data, epochs=1, verbose=0))
    callback = AnalysisCallback(names, AnalysisData(train=train, test=test, num_classes=10))
    callback.set_model(model)
    prepare, _ = timed(callback.on_train_begin)
    print(f"\n# callback overhead: one epoch of {args.epoch_examples} images at batch {args.batch_size} = "
          f"{epoch:.2f} s; drawing the callback's subsets once: {prepare:.2f} s")
    print(head("analysis", "period (epochs)", "seconds per run", "overhead per epoch", align="lrrr"))
    for name in names:
        callback.run([name], 0)  # first run traces the extractor
        seconds, _ = timed(lambda: callback.run([name], 0))
        period = callback.periods[name]
        print(row(name, period, f"{seconds:.2f}", f"{100 * seconds / (period * epoch):.1f}%"), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--cka-n", type=positive_int, default=10_000, help="examples for the CKA timing")
    add("--cka-d", type=positive_int, default=4096, help="features for the CKA timing")
    add("--repeats", type=positive_int, default=1, help="CKA timings: best of this many")
    add("--model", default="mpnet2_1x3_2x7_cifar10", help="zoo model for tables 2-4")
    add("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="builder overrides, e.g. widths=[16,32]")
    add("--image-size", type=positive_int, default=32)
    add("--epoch-examples", type=positive_int, default=50_000,
        help="images in one epoch (random data; with --data-dir the CIFAR-10 train split)")
    add("--data-dir", help="CIFAR-10 (as branchzoo.data reads it) instead of random images")
    add("--batch-size", type=positive_int, default=128)
    add("--probe-train", type=positive_int, default=5000)
    add("--probe-test", type=positive_int, default=2000)
    add("--analyses", default="saturation,gradients,cka,probes", help="analyses for the callback table")
    add("--skip", default="", help="tables to leave out: any of cka,saturation,probes,callback")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"cka", "saturation", "probes", "callback"}
    if unknown:
        p.error(f"--skip: expected names among cka,saturation,probes,callback, got {sorted(unknown)}")

    import keras  # noqa: F401  (TensorFlow started by Keras, before branchzoo: its own oneDNN default)

    from branchzoo.analysis.registry import parse_analysis_names
    from branchzoo.training import parse_model_kwargs
    try:
        names = parse_analysis_names(args.analyses)
    except ValueError as e:
        p.error(f"--analyses: {e}")
    overrides = parse_model_kwargs(args.model_kwargs)
    print(header())
    if "cka" not in skip:
        cka_table(args.cka_n, args.cka_d, args.repeats)
    if skip >= {"saturation", "probes", "callback"}:
        return
    model, train, test = _model_and_data(args, overrides)
    if "saturation" not in skip:
        saturation_table(args, model, train)
    if "probes" not in skip:
        probes_table(args, model, train, test)
    if "callback" not in skip:
        callback_table(args, model, train, test, names)


if __name__ == "__main__":
    main()
