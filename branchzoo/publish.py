"""Produce what a zoo entry publishes: parameter counts, weights, measured metrics.

Nothing in a model card is typed by hand; this command writes it:

    python -m branchzoo.publish --parameters            # every entry's parameter counts
    python -m branchzoo.publish mpnet_tiny_digits       # train by the recipe, evaluate,
                                                        # write weights + sha256 + metrics
    python -m branchzoo.publish --table --readme README.md   # README's table, from the cards
    python -m branchzoo.publish --comparisons           # each card's result against its "baseline"

The weights file lands beside the entry in zoo_models/ as
``<name>-<sha256[:8]>.weights.h5`` (the weights key is separate from the model
name, and a new training run never overwrites the file of an older one).
"""

import argparse
import datetime
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from branchzoo._io import atomic_open, sha256_of, write_json_atomic  # noqa: E402


def _update_entry(name, **fields):
    from branchzoo import zoo

    entry = zoo.get_entry(name)
    path = entry["_path"]
    with open(path) as f:
        stored = json.load(f)
    stored.update(fields)
    write_json_atomic(path, stored)
    zoo.clear_cache()


def _gpu_count():
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def publish_parameters(names):
    from branchzoo import zoo

    for name in names:
        params = zoo.count_parameters(zoo.build(name))
        _update_entry(name, parameters=params)
        print(f"{name}: {params}")


def publish_weights(name, run_dir=None, seed=0):
    """Trains `name` by its recipe, evaluates it and publishes weights and metrics."""
    import keras

    import branchzoo
    from branchzoo import training, zoo

    entry = zoo.get_entry(name)
    run_dir = run_dir or os.path.join("runs", f"publish-{name}")
    run = training.resolve_run_config(name, seed=seed, output=run_dir)
    started, cpu_started = time.time(), time.process_time()
    resumed = os.path.exists(os.path.join(run_dir, "backup"))
    trained = training.train(run, resume=resumed, verbose=2)
    # CPU seconds (all threads) measure the work whatever else shares the machine; wall seconds do
    # not. A resumed run's seconds cover only the last process: "resumed" says so.
    budget = {"epochs": trained["epochs"], "resumed": resumed,
              "seconds_in_last_process": round(time.time() - started),
              "cpu_seconds_in_last_process": round(time.process_time() - cpu_started),
              "cpu": training.cpu_name(), "cores": os.cpu_count(), "gpus": _gpu_count()}
    checkpoint = os.path.join(run_dir, "model.keras")
    metrics = training.evaluate(
        checkpoint=checkpoint, output=os.path.join(run_dir, "eval.json"), verbose=0
    )

    # A fresh, uncompiled model holds the weights: no optimizer state in the file.
    branchzoo.register_keras_objects()
    trained = keras.models.load_model(checkpoint, compile=False)
    model = zoo.build(name)
    model.set_weights(trained.get_weights())
    folder = os.path.dirname(entry["_path"])
    tmp = os.path.join(folder, f".tmp-{name}.weights.h5")
    model.save_weights(tmp)
    digest = sha256_of(tmp)
    fname = f"{name}-{digest[:8]}.weights.h5"
    os.replace(tmp, os.path.join(folder, fname))

    command = f"python -m branchzoo.publish {name}" + (f" --seed {seed}" if seed else "")
    _update_entry(
        name,
        parameters=zoo.count_parameters(model),
        weights={"file": fname, "sha256": digest, "origin": fname},
        metrics={
            "dataset": metrics["dataset"],
            "split": "test",
            **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
            "command": command,
            "training_budget": budget,
            "measured": datetime.date.today().isoformat(),
            "environment": metrics["environment"],
        },
    )
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"Published {fname} ({digest}); test {scores}")
    for line in publish_comparisons(involving=entry["name"]):
        print(line)
    return fname


def _headline(card):
    """The metric a card leads with: the recipe's ``"headline_metric"``, default ``top1``."""
    return card["recipe"].get("headline_metric", "top1")


def compare_with_baseline(card, baseline_card):
    """A card's headline test metric against its baseline's: the card's ``comparison``.

    Both cards must hold metrics written by the publish command on the same
    dataset; returns None otherwise. ``same_budget`` says whether both trained
    for the same number of epochs (wall time is recorded in each card's
    ``training_budget`` but depends on the machine's load).
    """
    metrics, base = card.get("metrics"), baseline_card.get("metrics")
    if not metrics or not base or metrics.get("dataset") != base.get("dataset"):
        return None
    headline = _headline(card)
    if headline not in metrics or headline not in base:
        return None
    higher_is_better = not headline.endswith("loss")
    value, other = metrics[headline], base[headline]
    better = value > other if higher_is_better else value < other
    verdict = ("better than" if better else "equal to" if value == other else "worse than")
    epochs = (metrics.get("training_budget", {}).get("epochs"), base.get("training_budget", {}).get("epochs"))
    return {
        "baseline": baseline_card["name"],
        "metric": headline,
        "value": value,
        "baseline_value": other,
        "difference": round(value - other, 4),
        "verdict": f"{headline} {verdict} the baseline's",
        "same_budget": epochs[0] is not None and epochs[0] == epochs[1],
        "epochs": {"model": epochs[0], "baseline": epochs[1]},
        "command": "python -m branchzoo.publish --comparisons",
    }


def publish_comparisons(involving=None):
    """Writes ``comparison`` into every card that names a ``baseline`` entry.

    With `involving`, only the cards that are that entry or name it as their
    baseline. Returns one line per card written.
    """
    from branchzoo import zoo

    lines = []
    for name in zoo.list_models():
        card = zoo.model_card(name)
        baseline = card.get("baseline")
        if not baseline or (involving and involving not in (name, zoo.get_entry(baseline)["name"])):
            continue
        comparison = compare_with_baseline(card, zoo.model_card(baseline))
        if comparison is None:
            continue
        _update_entry(name, comparison=comparison)
        lines.append(f"{name}: {comparison['verdict']} ({comparison['value']:.4f} vs "
                     f"{comparison['baseline_value']:.4f} for {baseline})")
    return lines


def architecture(card):
    """The README table's architecture column for a card: its builder's title, else its family."""
    from branchzoo import registry

    title = registry.get_builder(card["builder"]).get("title")
    return title(card["config"]) if title else card["family"]


def models_table(pattern="*"):
    """The README's table of registered models, from their cards (markdown).

    The result column shows the recipe's ``"headline_metric"`` (default
    ``top1``) as measured on the test split by the publish command, in its
    task's words where the task describes it (`Task.metric_descriptions`).
    """
    from branchzoo import tasks, zoo

    rows = ["| model | architecture | paper | trainable params | dataset | weights | test result |",
            "|---|---|---|---:|---|---|---:|"]
    for name in zoo.list_models(pattern):
        card = zoo.model_card(name)
        arch = architecture(card)
        params = card["parameters"]["trainable"] if card["parameters"] else None
        metrics = card["metrics"]
        headline = _headline(card)
        result = "-"
        if metrics and headline in metrics:
            value = metrics[headline]
            shown = f"{100 * value:.2f}%" if headline in ("top1", "top5") or "acc" in headline else f"{value:.4g}"
            described = tasks.task_for(zoo.get_entry(name)).metric_descriptions.get(headline)
            if described:
                result = f"{shown} {described} ({headline}, {metrics['dataset']})"
            else:
                result = f"{shown} {'' if headline == 'top1' else headline + ' '}({metrics['dataset']})"
        aliases = f" (alias: {', '.join(card['aliases'])})" if card["aliases"] else ""
        rows.append(
            f"| `{name}`{aliases} | {arch} | {card['paper'][:3]}: {card['paper'].split(', ', 1)[-1]} | "
            f"{params / 1e6:.2f}M | {card['dataset']} | {'yes' if card['weights'] else 'no'} | {result} |"
        )
    return "\n".join(rows)


def write_readme_table(path, table):
    """Replaces what stands between ``<!-- models-table -->`` markers in `path`."""
    start, end = "<!-- models-table -->", "<!-- /models-table -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no '{start}' ... '{end}' markers for the table.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_open(path) as f:
        f.write(f"{head}{start}\n{table}\n{end}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="models to train and publish")
    p.add_argument("--parameters", action="store_true",
                   help="recompute the parameter counts of the named (default: all) entries")
    p.add_argument("--table", action="store_true", help="print the README's table of models")
    p.add_argument("--readme", metavar="PATH",
                   help="with --table: write it into PATH between the models-table markers")
    p.add_argument("--comparisons", action="store_true",
                   help="write each card's comparison with its baseline entry, from both cards' metrics")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.names or args.parameters or args.table or args.comparisons):
        p.error("name at least one model to publish, or pass --parameters")
    from branchzoo import zoo

    try:  # a bad name, entry or builder: one line and exit 2, before anything is trained or written
        for name in args.names:
            zoo.builder(name)
        if args.comparisons:
            for line in publish_comparisons():
                print(line)
            return 0
        if args.table:
            table = models_table()
            if args.readme:
                write_readme_table(args.readme, table)
            print(table)
            return 0
        if args.parameters:
            publish_parameters(args.names or zoo.list_models())
            return 0
        from branchzoo import training

        for name in args.names:
            training.resolve_run_config(name, seed=args.seed)  # checks the recipe; writes nothing
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    for name in args.names:
        publish_weights(name, seed=args.seed)
    return 0

if __name__ == "__main__":
    sys.exit(main())
