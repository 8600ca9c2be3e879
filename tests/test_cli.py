"""The CLIs as a user types them: bad input is one line and exit 2 with nothing written,
the README's behaviours (evaluate --model, SIGTERM then --resume, --list) work."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types

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
    # A missing data folder; malformed, invalid or unknown model kwargs.
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
    (["--precision", "float16"], ["`precision` must be one of", "mixed_bfloat16", "precision='float16'"]),
    (["--resume"], ["nothing to resume"]),
    (["--model", "mpnt"], ["Unknown model name 'mpnt'", "Close matches: mpnet"]),
    (["--epochs", "0"], ["`epochs` must be >= 1", "epochs=0"]),
    (["--lr", "nan"], ["`lr` must be a positive finite number"]),
    (["--dataset", "image_folder"], ["image_folder", "--data-dir", "BRANCHZOO_DATA_DIR"]),
    # A model or a batch that does not fit the dataset (digits: 10 classes, 32x32x3 images,
    # 1,437 training images) is refused before training, naming both numbers.
    (["--model-kwargs", "num_classes=3"], ["num_classes=3", "'digits'", "10 classes"]),
    (["--model-kwargs", "input_shape=[32,32,1]"], ["input_shape=[32, 32, 1]", "[32, 32, 3]"]),
    (["--model-kwargs", "input_shape=[28,28,3]"], ["input_shape=[28, 28, 3]", "[32, 32, 3]"]),
    (["--batch-size", "100000"], ["batch_size=100000", "1437 training examples"]),
])
def test_train_user_errors_exit_2_and_write_nothing(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BRANCHZOO_DATA_DIR", raising=False)
    out = tmp_path / "run"
    model = [] if "--model" in args else ["--model", "mpnet"]
    code, err = run_in_process(TRAIN, [*model, *args, "--output", str(out)], capsys)
    assert code == 2, err
    assert "train.py: error:" in err and "Traceback" not in err
    for word in words:
        assert word in err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("cli", ["train", "evaluate", "publish"])
def test_user_preset_with_a_misspelt_builder_exit_2_and_write_nothing(cli, tmp_path, capsys, monkeypatch):
    from branchzoo import publish, zoo

    folder = tmp_path / "zoo"
    folder.mkdir()
    entry = {"name": "my_mpnet", "builder": "mpnte", "config": {}, "dataset": "digits", "paper": "mine",
             "recipe": {"dataset": "digits", "epochs": 1, "batch_size": 8, "lr": 0.1}}
    (folder / "my_mpnet.json").write_text(json.dumps(entry))
    monkeypatch.setenv("BRANCHZOO_ZOO_DIR", str(folder))
    zoo.clear_cache()
    out = tmp_path / "run"
    main = {"train": TRAIN.main, "evaluate": EVALUATE.main, "publish": publish.main}[cli]
    argv = {"train": ["--model", "my_mpnet", "--output", str(out)],
            "evaluate": ["--model", "my_mpnet", "--output", str(out / "e.json")],
            "publish": ["my_mpnet"]}[cli]
    try:
        code, err = run_in_process(types.SimpleNamespace(main=main), argv, capsys)
    finally:
        zoo.clear_cache()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "error: Unknown builder 'mpnte' in zoo entry" in err and "my_mpnet.json" in err
    assert "Close matches: mpnet" in err
    assert not out.exists() and sorted(p.name for p in folder.iterdir()) == ["my_mpnet.json"]
    assert json.loads((folder / "my_mpnet.json").read_text()) == entry


def _unwritable(kind, tmp_path):
    """A path no folder can be made at: below a plain file, below /proc, or a file itself."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    if kind == "proc":
        if not os.path.isdir("/proc"):
            pytest.skip("no /proc here")
        return "/proc/nope/x"
    return str(blocker / "x") if kind == "below_a_file" else str(blocker)


@pytest.mark.parametrize("flag", ["--output", "--logdir", "--export"])
@pytest.mark.parametrize("kind", ["proc", "below_a_file", "a_file"])
def test_train_unwritable_paths_exit_2_before_training(flag, kind, tmp_path, capsys, monkeypatch):
    from branchzoo import training

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "run_prepared", no_training)
    bad = _unwritable(kind, tmp_path)
    out = tmp_path / "run"
    args = ["--model", "mpnet", "--output", str(out), flag, bad]
    code, err = run_in_process(TRAIN, args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"`{flag[2:]}`" in err and repr(bad) in err
    assert not out.exists() and (tmp_path / "a_file").read_text() == "not a folder"


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
    (lambda run, tmp: ["--checkpoint", str(run / "model.keras"), "--analysis", "saturation",
                       "--report", _unwritable("below_a_file", tmp)], ["`report`", "is a file"]),
])
def test_evaluate_user_errors_exit_2(make_args, words, trained_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code, err = run_in_process(EVALUATE, [*make_args(trained_run, tmp_path), "--output", str(out)], capsys)
    assert code == 2, err
    assert "evaluate.py: error:" in err and "Traceback" not in err
    for word in words:
        assert word in err
    assert not out.exists()


def test_evaluate_missing_checkpoint_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.keras"
    code, err = run_in_process(EVALUATE, ["--checkpoint", str(missing)], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert "checkpoint" in err and str(missing) in err


@pytest.mark.parametrize("kind", ["proc", "below_a_file"])
def test_evaluate_unwritable_output_exit_2_before_loading(kind, trained_run, tmp_path, capsys, monkeypatch):
    import keras

    def no_loading(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(keras.models, "load_model", no_loading)
    bad = _unwritable(kind, tmp_path)
    code, err = run_in_process(EVALUATE, ["--checkpoint", str(trained_run / "model.keras"),
                                          "--output", os.path.join(bad, "e.json")], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "`output`" in err


class _Terminal:
    """A stand-in for stderr on a terminal: progress lines are shown there."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass


def test_evaluate_model_prints_and_writes_nothing_unasked(tmp_path, capsys, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = EVALUATE.main(["--model", "mpnet", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and '"top1"' in printed and '"output": null' in printed
    assert os.listdir(here) == []  # no eval-*.json in the current folder
    assert terminal.buffer.getvalue() == ""  # --quiet: no progress, even on a terminal


def test_evaluate_checkpoint_writes_beside_it_and_says_what_it_does(trained_run, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "copy"
    run.mkdir()
    for name in ("model.keras", "config.json"):
        shutil.copy(trained_run / name, run / name)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        code = EVALUATE.main(["--checkpoint", str(run / "model.keras"), "--batch-size", "4"])
    finally:
        monkeypatch.undo()
    printed = capsys.readouterr().out
    assert code == 0
    written = run / "eval-model-image_folder.json"
    assert read_json(written)["dataset"] == "image_folder"
    assert os.listdir(here) == [] and str(written) in printed and '"top1"' in printed
    assert "Evaluating model on the 'image_folder' test split (6 examples)" in terminal.buffer.getvalue()


def test_decoding_a_dataset_says_so_on_a_terminal_unless_quiet(tmp_path, monkeypatch):
    import io
    import shutil

    from branchzoo import _progress, data

    monkeypatch.setenv("BRANCHZOO_HOME", str(tmp_path / "home"))
    seen = {}
    try:
        for case, stream, quiet in (("terminal", _Terminal(), False), ("quiet", _Terminal(), True),
                                    ("log file", io.StringIO(), False)):
            data.clear_cache()
            shutil.rmtree(tmp_path / "home", ignore_errors=True)
            monkeypatch.setattr(sys, "stderr", stream)
            _progress.set_quiet(quiet)
            data.dataset_info("digits")  # decoded anew: the cache folder is empty
            seen[case] = (stream.buffer if isinstance(stream, _Terminal) else stream).getvalue()
    finally:
        _progress.set_quiet(False)
        monkeypatch.undo()
        data.clear_cache()
    assert "Decoding dataset 'digits'" in seen["terminal"] and "done in" in seen["terminal"]
    assert "writing" in seen["terminal"]
    assert seen["quiet"] == "" and seen["log file"] == ""


def test_a_training_run_shows_no_python_warning(tmp_path, capsys):
    """What Python shows by default (not the deprecation notes of libraries) stays empty."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_in_process(TRAIN, ["--model", "mpnet", "--dataset", "digits", "--epochs", "1",
                                           "--steps-per-epoch", "2", "--batch-size", "32", *TINY,
                                           "--output", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 0, err
    hidden_by_default = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
             for w in caught if not issubclass(w.category, hidden_by_default)]
    assert shown == []


def test_readme_and_cards_agree():
    """The README's 2-epoch figure is the card's; every card names a registered dataset."""
    import re

    import branchzoo
    from branchzoo import data

    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    figure = re.search(r"reached (\d+\.\d)% test top-1 after its 2 epochs", readme).group(1)
    notes = branchzoo.model_card("mpnet_tiny_digits")["recipe"]["notes"]
    assert f"after 2 epochs was 21% against {figure}% here" in notes
    registered = set(data.list_datasets())
    for name in branchzoo.list_models():
        card = branchzoo.model_card(name)
        assert {card["dataset"], card["recipe"].get("dataset", card["dataset"])} <= registered, name


def test_readme_table_says_what_the_gan_headline_measures():
    from branchzoo.publish import models_table

    row = next(line for line in models_table().splitlines() if "`branched_gan_cifar10_catdog`" in line)
    assert "discriminator accuracy" in row and "50% = fooled" in row


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
