"""Training throughput (images/second) of every registered MPNet on this machine.

    python benchmarks/train_throughput.py                      # all mpnet* entries, 32x32
    python benchmarks/train_throughput.py --models "mpnet2*" --image-size 64

Each model is compiled like train.py compiles it (SGD, cross-entropy, top-1
and top-5) and fit on random images of the given size for `--steps` steps
after one warm-up epoch (tracing and first-step costs excluded); the table
gives images/second and milliseconds per step of that timed epoch.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mpnet*", help="fnmatch pattern over zoo names")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed steps (one epoch)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="builder overrides for every model, e.g. widths=[16,32,64,128]")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    import branchzoo
    from branchzoo.models.mpnet import mpnet_title
    from branchzoo.training import compile_classifier, parse_model_kwargs

    overrides = parse_model_kwargs(args.model_kwargs)
    size, batch = args.image_size, args.batch_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * args.steps, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, batch * args.steps)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}, Keras {keras.__version__} ({keras.config.backend()}), "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"# images {size}x{size}x3, batch {batch}, {args.steps} timed steps")
    print("| model | config | parameters | ms / step | images / s |")
    print("|---|---|---:|---:|---:|")
    for name in branchzoo.list_models(args.models):
        card = branchzoo.model_card(name)
        model = branchzoo.build(name, input_shape=(size, size, 3), num_classes=10, **overrides)
        compile_classifier(model, keras.optimizers.SGD(0.01, momentum=0.9))
        model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # trace + warm-up
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
        seconds = time.perf_counter() - start
        config = mpnet_title(card["config"]["blocks_per_stage"], card["config"]["pathways"])
        if overrides:
            config += f" {overrides}"
        print(f"| {name} | {config} | {model.count_params():,} | "
              f"{1000 * seconds / args.steps:.0f} | {len(x) / seconds:.1f} |", flush=True)
        del model
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
