"""Time of the analysis tools (issue 12): CKA, saturation, probes, callback overhead.

    python benchmarks/analysis.py                                   # the issue's sizes
    python benchmarks/analysis.py --cka-n 2000 --cka-d 1024 \\
        --epoch-examples 5000 --model-kwargs "widths=[16,32,64,128]"   # a reduced run

Four tables, each with the command's settings in a comment line above it:

1. `cka` on random float32 features [n, d] (default n = 10,000, d = 4,096;
   activations are float32, the arithmetic float64), linear and debiased,
   and `CKAAccumulator` over batches of 1,000, against one float64 Gram-matrix
   product: the n x n ``x @ x.T`` (the Gram matrix the CKA formulas are
   written with; Kornblith et al.'s code forms it) and the d x d
   ``x.T @ x``. Target: linear CKA within 2x of one Gram product.
2. `layer_saturation` over one CIFAR-10 epoch (default 50,000 images, random
   data unless ``--data-dir`` has CIFAR-10) of `--model`: every conv output
   and pathway sum, streamed; next to the model's plain inference time over
   the same images.
3. A full probe report (`fit_probes`, every conv output and pathway sum,
   5,000 train / 2,000 test examples by default): extraction and fitting.
4. Each analysis run by `AnalysisCallback` at its default period (with the
   callback's default subsets: 5,000 train / 2,000 test examples), against
   one training epoch of `--epoch-examples` images at `--batch-size`:
   overhead = seconds per run / (period x seconds per epoch). Target: at
   most 10%.
"""

import argparse
import os
import platform
import time

from _args import positive_int  # benchmarks/_args.py (the script's folder is on sys.path)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def timed(fn, repeats=1):
    """Best wall time of `repeats` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


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
        seconds, _ = timed(fn, repeats)
        rows.append((label, seconds))
    print(f"# CKA: x, y float32 [{n}, {d}], best of {repeats}")
    print("| measurement | seconds | / Gram n x n | / Gram d x d |")
    print("|---|---:|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {seconds / gram_nn:.2f} | {seconds / gram_dd:.2f} |", flush=True)


def _model_and_data(args, overrides):
    import branchzoo

    model = branchzoo.build(args.model, input_shape=(args.image_size, args.image_size, 3), num_classes=10,
                            **overrides)
    if args.data_dir:
        from branchzoo import data

        def split(name):
            return data.load_dataset("cifar10", name, args.batch_size, augment=False, shuffle=False,
                                     data_dir=args.data_dir)
        return model, split("train"), split("test")

    def random_split(count, seed):
        r = np.random.default_rng(seed)
        return (r.standard_normal((count, args.image_size, args.image_size, 3), dtype=np.float32),
                r.integers(0, 10, count))
    return model, random_split(args.epoch_examples, 1), random_split(min(args.epoch_examples, 10_000), 2)


def saturation_table(args, model, train):
    from branchzoo.analysis import analysis_layers, layer_saturation
    from branchzoo.analysis.extraction import iterate_batches

    count = len(analysis_layers(model))

    def inference():
        for x, _ in iterate_batches(train, args.batch_size):
            model.predict_on_batch(x)

    inference()  # trace
    plain, _ = timed(inference)
    first = next(iterate_batches(train, args.batch_size))
    layer_saturation(model, first, batch_size=args.batch_size)  # trace the extractor
    sat, out = timed(lambda: layer_saturation(model, train, batch_size=args.batch_size))
    print(f"\n# saturation over one epoch of {out['samples']} images, {args.model} {args.model_kwargs or ''}, "
          f"{count} layers, batch {args.batch_size}")
    print("| measurement | seconds | / inference |")
    print("|---|---:|---:|")
    print(f"| model inference only | {plain:.2f} | 1.00 |")
    print(f"| layer_saturation (extraction + covariance + eigen) | {sat:.2f} | {sat / plain:.2f} |", flush=True)


def probes_table(args, model, train, test):
    from branchzoo.analysis import fit_probes

    seconds, result = timed(lambda: fit_probes(model, train, test, max_train_examples=args.probe_train,
                                               max_test_examples=args.probe_test, batch_size=args.batch_size))
    print(f"\n# full probe report: {len(result.accuracy)} layers, {result.num_train} train / "
          f"{result.num_test} test examples, {args.model} {args.model_kwargs or ''}")
    print("| measurement | seconds | per layer |")
    print("|---|---:|---:|")
    for key in ("extract", "fit"):
        print(f"| {key} | {result.seconds[key]:.2f} | {result.seconds[key] / len(result.accuracy):.3f} |")
    print(f"| total | {seconds:.2f} | {seconds / len(result.accuracy):.3f} |", flush=True)


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
    start = time.perf_counter()
    callback.on_train_begin()
    prepare = time.perf_counter() - start
    print(f"\n# callback overhead: one epoch of {args.epoch_examples} images at batch {args.batch_size} = "
          f"{epoch:.2f} s; drawing the callback's subsets once: {prepare:.2f} s")
    print("| analysis | period (epochs) | seconds per run | overhead per epoch |")
    print("|---|---:|---:|---:|")
    for name in names:
        callback.run([name], 0)  # first run traces the extractor
        seconds, _ = timed(lambda: callback.run([name], 0))
        period = callback.periods[name]
        print(f"| {name} | {period} | {seconds:.2f} | {100 * seconds / (period * epoch):.1f}% |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cka-n", type=positive_int, default=10_000, help="examples for the CKA timing")
    p.add_argument("--cka-d", type=positive_int, default=4096, help="features for the CKA timing")
    p.add_argument("--repeats", type=positive_int, default=1, help="CKA timings: best of this many")
    p.add_argument("--model", default="mpnet2_1x3_2x7_cifar10", help="zoo model for tables 2-4")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="builder overrides, e.g. widths=[16,32,64,128]")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--epoch-examples", type=positive_int, default=50_000,
                   help="images in one epoch (random data; with --data-dir the CIFAR-10 train split)")
    p.add_argument("--data-dir", help="CIFAR-10 (as branchzoo.data reads it) instead of random images")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--probe-train", type=positive_int, default=5000)
    p.add_argument("--probe-test", type=positive_int, default=2000)
    p.add_argument("--analyses", default="saturation,gradients,cka,probes",
                   help="analyses for the callback table")
    p.add_argument("--skip", default="", help="tables to leave out: any of cka,saturation,probes,callback")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"cka", "saturation", "probes", "callback"}
    if unknown:
        p.error(f"--skip: expected names among cka,saturation,probes,callback, got {sorted(unknown)}")

    import keras
    import tensorflow as tf

    from branchzoo.analysis.registry import parse_analysis_names
    from branchzoo.training import parse_model_kwargs

    try:
        names = parse_analysis_names(args.analyses)
    except ValueError as e:
        p.error(f"--analyses: {e}")
    overrides = parse_model_kwargs(args.model_kwargs)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__} ({keras.config.backend()}), GPUs: {len(tf.config.list_physical_devices('GPU'))}")
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
