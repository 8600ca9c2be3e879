"""train.py / evaluate.py end to end: outputs, TensorBoard, SavedModel, mirrored, resume."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

# A shallow tiny MPNet (one block of one conv per pathway and stage): a third of the default tiny
# model's CPU time per run, for tests whose point is not the depth
TINY = ["--model-kwargs", "widths=[4,4,8,8]", "pathways=[[1,3],[1,5]]", "blocks_per_stage=1"]


def run_cli(script, *args, check=True, timeout=900, unset=()):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    for key in unset:
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_json(path):
    with open(path) as f:
        return json.load(f)


def scalar_tags(logdir):
    """Tags of every scalar written under `logdir` (TF2 summaries are tensors)."""
    from tensorboard.backend.event_processing import event_accumulator

    tags = set()
    has_graph = False
    for events in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        acc = event_accumulator.EventAccumulator(events, size_guidance={"tensors": 0})
        acc.Reload()
        tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
        has_graph = has_graph or acc.Tags()["graph"]
    return tags, has_graph


def check_run_outputs(out, logdir, export, epochs):
    import keras
    import tensorflow as tf

    import branchzoo

    branchzoo.register_keras_objects()  # no custom_objects below

    config = read_json(os.path.join(out, "config.json"))
    metrics = read_json(os.path.join(out, "metrics.json"))
    assert config["dataset"] == "digits" and config["epochs"] == epochs
    assert config["resolved_model_config"]["input_shape"] == [32, 32, 3]
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert len(metrics["history"]["loss"]) == epochs
    assert not os.path.exists(os.path.join(out, "backup"))  # removed once finished

    tags, has_graph = scalar_tags(logdir)
    assert {"epoch_loss", "epoch_top1", "epoch_learning_rate"} <= tags, tags
    assert has_graph

    model = keras.models.load_model(os.path.join(out, "model.keras"))
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    reloaded = tf.saved_model.load(export)
    served = np.asarray(reloaded.serve(tf.constant(x)))
    np.testing.assert_allclose(served, model.predict(x, verbose=0), atol=1e-5, rtol=0)
    assert metrics["export_max_abs_diff"] <= 1e-5
    return config, metrics


def test_train_cli_digits_end_to_end(tmp_path):
    out, logdir, export = tmp_path / "run", tmp_path / "tb", tmp_path / "savedmodel"
    proc = run_cli(
        "train.py", "--model", "mpnet", "--dataset", "digits", "--epochs", "2", *TINY,
        "--batch-size", "128", "--output", str(out), "--logdir", str(logdir), "--export", str(export),
    )
    assert "top1" in proc.stdout
    config, metrics = check_run_outputs(str(out), str(logdir), str(export), epochs=2)
    assert config["model"] == "mpnet_tiny_digits"
    assert config["resolved_model_config"]["widths"] == [4, 4, 8, 8]

    # evaluate.py on the checkpoint reproduces the run's final test metrics.
    eval_json = tmp_path / "eval.json"
    proc = run_cli("evaluate.py", "--checkpoint", str(out / "model.keras"), "--output", str(eval_json))
    assert "top1" in proc.stdout and "top5" in proc.stdout
    evaluated = read_json(eval_json)
    assert evaluated["dataset"] == "digits"
    for key in ("loss", "top1", "top5"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-5)


@pytest.mark.slow
def test_readme_main_command(tmp_path):
    """The README's command, exactly (mpnet_tiny_digits by its recipe, 2 epochs)."""
    out = tmp_path / "run"
    start = time.time()
    run_cli("train.py", "--model", "mpnet", "--dataset", "digits", "--epochs", "2",
            "--output", str(out), "--export", str(tmp_path / "savedmodel"))
    _, metrics = check_run_outputs(str(out), str(out / "logs"), str(tmp_path / "savedmodel"), epochs=2)
    assert time.time() - start < 5 * 60
    assert metrics["top1"] > 0.5  # trained: chance is 0.1


def test_mirrored_strategy_matches_single_device(tmp_path):
    # A shallow MPNet and a small learning rate: SGD on deep plain BN networks
    # amplifies float rounding (two single-device runs that differ only in the
    # BN variance formula drift ~1% apart within an epoch of the deep tiny
    # model), so only a well-conditioned run can show the two strategies agree.
    common = ["--model", "mpnet_tiny_digits", "--epochs", "1", "--batch-size", "64", "--lr", "0.005",
              "--model-kwargs", "pathways=[[1,3],[1,5]]", "blocks_per_stage=1", "widths=[8,8,16,16]",
              "--deterministic", "--no-validate"]
    run_cli("train.py", *common, "--strategy", "default", "--output", str(tmp_path / "single"))
    run_cli("train.py", *common, "--strategy", "mirrored", "--cpu-devices", "2",
            "--output", str(tmp_path / "mirrored"))
    single = read_json(tmp_path / "single" / "metrics.json")
    mirrored = read_json(tmp_path / "mirrored" / "metrics.json")
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    assert mirrored["optimizer_iterations"] == single["optimizer_iterations"]  # same global batches
    assert mirrored["history"]["loss"][0] == pytest.approx(single["history"]["loss"][0], rel=1e-3)
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=1e-2)
    # The saved model carries no TF-only synchronized BatchNormalization flag.
    import keras

    model = keras.models.load_model(tmp_path / "mirrored" / "model.keras")
    assert not any(getattr(l, "synchronized", False) for l in model._flatten_layers())


@pytest.mark.slow  # ~35 s: a CLI run killed and restarted; the default run resumes through test_cli's SIGTERM test
def test_resume_after_kill_continues_from_last_finished_epoch(tmp_path):
    out = tmp_path / "run"
    args = ["train.py", "--model", "mpnet_tiny_digits", "--epochs", "4", "--batch-size", "128",
            *TINY, "--no-validate", "--deterministic", "--output", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metadata = out / "backup" / "training_metadata.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metadata.exists() and read_json(metadata)["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    done = read_json(metadata)["epoch"]
    assert 2 <= done < 4
    backups = sorted(os.listdir(out / "backup"))
    assert backups == sorted([f"epoch-{done:04d}.weights.h5", "training_metadata.json"]) or \
        any(b.startswith(".tmp-") for b in backups)  # killed mid-write: the temp file is ignored

    # Without --resume the interrupted run is not silently overwritten.
    refused = run_cli(*args, check=False)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    # Changed settings are refused too.
    changed = run_cli(*[a if a != "4" else "5" for a in args], "--resume", check=False)
    assert changed.returncode != 0 and "epochs" in changed.stderr

    run_cli(*args, "--resume")
    metrics = read_json(out / "metrics.json")
    assert metrics["first_epoch_in_this_process"] == done + 1
    assert metrics["epochs_run_in_this_process"] == 4 - done
    from branchzoo import data

    steps = int(np.ceil(data.dataset_info("digits").num_examples["train"] / 128))
    assert metrics["optimizer_iterations"] == 4 * steps  # optimizer state was restored
    assert not (out / "backup").exists()

    # Nothing lost: the same batches, weights and optimizer state as a run never
    # interrupted, so the same final model.
    straight = tmp_path / "straight"
    run_cli(*[a if a != str(out) else str(straight) for a in args])
    reference = read_json(straight / "metrics.json")
    assert metrics["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert metrics["top1"] == reference["top1"]


REAL_DATA = os.environ.get("BRANCHZOO_DATA_DIR")


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA and os.path.isdir(os.path.join(REAL_DATA, "mnist"))
                         and os.path.exists(os.path.join(REAL_DATA, "cifar10-jpeg.tar.gz"))),
                    reason="needs BRANCHZOO_DATA_DIR holding mnist/ and cifar10-jpeg.tar.gz")
@pytest.mark.parametrize("dataset, shape", [("mnist", [28, 28, 1]), ("cifar10", [32, 32, 3])])
def test_train_briefly_on_real_data(dataset, shape, tmp_path):
    out = tmp_path / "run"
    run_cli("train.py", "--model", "mpnet", "--dataset", dataset, "--data-dir", REAL_DATA,
            "--epochs", "2", "--steps-per-epoch", "20", "--batch-size", "64", *TINY,
            "--output", str(out))
    config = read_json(out / "config.json")
    metrics = read_json(out / "metrics.json")
    assert config["resolved_model_config"]["input_shape"] == shape
    assert metrics["optimizer_iterations"] == 40
    loss = metrics["history"]["loss"]
    assert loss[1] < loss[0] < 2.6  # it learns: below chance (ln 10 = 2.30) plus slack, and falling
