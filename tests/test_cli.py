"""The CLIs as a user types them: bad input is one line and exit 2 with nothing written,
the README's behaviours (evaluate --model, SIGTERM then --resume, --list) work."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from test_train import TINY, read_json, run_cli


def _load_cli(script):
    spec = importlib.util.spec_from_file_location(script[:-3] + "_cli", os.path.join(REPO, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = _load_cli("train.py")
EVALUATE = _load_cli("evaluate.py")


def run_in_process(cli, argv, capsys):
    """Runs a CLI's main() here (no TensorFlow start-up per case); returns (code, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    # The four inputs of issue 9 that printed tracebacks or left config.json behind.
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], ["data_dir", "/nonexistent"]),
    (["--model-kwargs", "widths=[8,x]"], ["widths", "not valid JSON", "[8,x]"]),
    (["--model-kwargs", "pathways=[[0,3]]"], ["pathways", "must be >= 1", "Received"]),
    (["--model-kwargs", "nosuch=3"], ["takes no argument 'nosuch'", "widths", "nosuch=3"]),
    # More, as a user types them.
    (["--model-kwargs", "widths"], ["key=value", "widths"]),
    (["--model-kwargs", "widths=[4,4]", "input_shape=[32,32]"], ["input_shape"]),
    (["--model-kwargs", "num_classes=0"], ["num_classes", "num_classes=0"]),
    (["--dataset", "nosuch"], ["nosuch"]),
    (["--batch-size", "0"], ["batch_size", "batch_size=0"]),
    (["--steps-per-epoch", "0"], ["steps_per_epoch"]),
    (["--lr", "-1"], ["`lr` must be a positive finite number"]),
    (["--seed", "-1"], ["seed", "seed=-1"]),
    (["--cpu-devices", "0"], ["cpu_devices", "cpu_devices=0"]),
    (["--analysis", "nosuch"], ["Unknown analysis 'nosuch'"]),
    (["--analysis-every", "0"], ["analysis_every"]),
    (["--resume"], ["nothing to resume"]),
])
def test_train_user_errors_exit_2_and_write_nothing(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BRANCHZOO_DATA_DIR", raising=False)
    out = tmp_path / "run"
    code, err = run_in_process(TRAIN, ["--model", "mpnet", *args, "--output", str(out)], capsys)
    assert code == 2, err
    assert "train.py: error:" in err and "Traceback" not in err
    for word in words:
        assert word in err
    assert not out.exists()  # nothing half-written


def test_train_list_output(capsys):
    TRAIN.main(["--list", "mpnet2_*cifar10"])
    assert capsys.readouterr().out.split() == ["mpnet2_1x3_2x7_cifar10", "mpnet2_2x3_2x7_cifar10"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny run on a tiny image folder (with --data-dir), shared by the evaluate tests."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cli")
    folder = root / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    folder / split / cls / f"{i}.png")
    out = root / "run"
    run_cli("train.py", "--model", "mpnet", "--dataset", "image_folder", "--data-dir", str(folder),
            "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "1", *TINY,
            "--output", str(out), unset=["BRANCHZOO_DATA_DIR"])
    return out


def test_steps_per_epoch_does_not_truncate_the_final_test_evaluation(trained_run):
    metrics = read_json(trained_run / "metrics.json")
    assert metrics["optimizer_iterations"] == 1
    # The test split has 6 images: 2 batches of 4, while --steps-per-epoch is 1.
    # The run's final metrics are of the whole split: equal to evaluating all 6
    # images here, and (with these random images) not to evaluating the first 4.
    import keras

    from branchzoo import data

    model = keras.models.load_model(trained_run / "model.keras")
    x, y, _ = data.load_arrays("image_folder", "test", data_dir=str(trained_run.parent / "images"))
    info = data.dataset_info("image_folder", data_dir=str(trained_run.parent / "images"))
    x = (x.astype("float32") / 255.0 - np.array(info.mean, "float32")) / np.array(info.std, "float32")
    losses = keras.losses.sparse_categorical_crossentropy(y, model.predict(x, verbose=0), from_logits=True)
    assert metrics["split"] == "test"
    assert metrics["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-4)
    assert metrics["loss"] != pytest.approx(float(np.mean(losses[:4])), rel=1e-4)


def test_evaluate_checkpoint_reads_data_dir_from_its_run(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BRANCHZOO_DATA_DIR", raising=False)
    out = tmp_path / "eval.json"
    code, err = run_in_process(EVALUATE, ["--checkpoint", str(trained_run / "model.keras"),
                                          "--batch-size", "4", "--output", str(out)], capsys)
    assert code == 0, err
    evaluated = read_json(out)
    assert evaluated["dataset"] == "image_folder"
    metrics = read_json(trained_run / "metrics.json")
    # Same loss as the run's final evaluation: both read the whole test split.
    assert evaluated["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert evaluated["top1"] == pytest.approx(metrics["top1"], abs=1e-6)


@pytest.mark.parametrize("make_args, words", [
    (lambda run, tmp: ["--model", "mpnt"], ["Unknown model name 'mpnt'"]),
    (lambda run, tmp: ["--model", "mpnet2_1x3_2x7_cifar10", "--dataset", "digits"],
     ["no published weights", "train"]),
    (lambda run, tmp: ["--model", "mpnet", "--weights", str(tmp / "none.weights.h5")], ["weights", "none.weights.h5"]),
    (lambda run, tmp: ["--checkpoint", str(_lonely_copy(run, tmp))], ["`dataset` is needed", "config.json"]),
    (lambda run, tmp: ["--checkpoint", str(_garbage(tmp)), "--dataset", "digits"], ["could not be loaded", "garbage.keras"]),
    (lambda run, tmp: ["--checkpoint", str(run / "model.keras"), "--analysis", "nope"], ["Unknown analysis 'nope'"]),
    (lambda run, tmp: ["--checkpoint", str(run / "model.keras"), "--batch-size", "0"], ["batch_size"]),
    (lambda run, tmp: ["--model", "mpnet", "--report", str(tmp / "r")], ["--report needs --analysis"]),
])
def test_evaluate_user_errors_exit_2(make_args, words, trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, err = run_in_process(EVALUATE, [*make_args(trained_run, tmp_path), "--output", str(out)], capsys)
    assert code == 2, err
    assert "evaluate.py: error:" in err and "Traceback" not in err
    for word in words:
        assert word in err
    assert not out.exists()


def _lonely_copy(run, tmp):
    import shutil

    path = tmp / "alone" / "model.keras"
    path.parent.mkdir()
    shutil.copy(run / "model.keras", path)
    return path


def _garbage(tmp):
    path = tmp / "garbage.keras"
    path.write_bytes(b"not a zip file")
    return path


def test_evaluate_model_name_reproduces_the_card(tmp_path):
    """README: `evaluate.py --model NAME` evaluates the published weights."""
    import branchzoo

    out = tmp_path / "eval.json"
    proc = run_cli("evaluate.py", "--model", "mpnet", "--output", str(out))
    card = branchzoo.model_card("mpnet")["metrics"]
    evaluated = read_json(out)
    assert evaluated["model"] == "mpnet_tiny_digits"
    assert evaluated["top1"] == pytest.approx(card["top1"], abs=1e-4)
    assert "top1" in proc.stdout


def test_sigterm_stops_with_130_then_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["train.py", "--model", "mpnet", "--epochs", "3", "--batch-size", "128", *TINY,
            "--no-validate", "--output", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metadata = out / "backup" / "training_metadata.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not metadata.exists():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()
    run_cli(*args, "--resume")
    metrics = read_json(out / "metrics.json")
    assert metrics["first_epoch_in_this_process"] >= 2
    assert len(metrics["history"]["loss"]) == 3 - metrics["first_epoch_in_this_process"] + 1


def test_strategy_auto_is_single_device_without_gpus():
    import tensorflow as tf

    from branchzoo import training

    strategy = training.make_strategy("auto")
    if tf.config.list_logical_devices("GPU")[1:]:
        pytest.skip("more than one GPU here: auto picks MirroredStrategy")
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(strategy, tf.distribute.MirroredStrategy)


def test_readme_table_is_the_cards_table():
    """README's models table is exactly what `publish --table` makes from the cards."""
    from branchzoo.publish import models_table

    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    table = text.split("<!-- models-table -->\n", 1)[1].split("\n<!-- /models-table -->", 1)[0]
    assert table == models_table()


def test_package_doctests():
    import doctest

    import branchzoo
    import branchzoo.zoo

    for module in (branchzoo, branchzoo.zoo):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__
