"""Multi-worker training: TF_CONFIG checks, the launcher, sharding, two real workers, kill and resume.

Workers run on 127.0.0.1 only; every subprocess runs under a timeout in its
own process group, which is killed in a `finally`.
"""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO
from test_cli import TRAIN, run_in_process
from test_train import read_json

from branchzoo import distributed, launch

# A shallow tiny MPNet: quick to trace, and well-conditioned enough that runs
# which differ only in reduction order stay close (see test_train's mirrored test).
SHALLOW = ["--model-kwargs", "pathways=[[1,3],[1,5]]", "blocks_per_stage=1", "widths=[4,4,8,8]"]
EXAMPLE = distributed.TF_CONFIG_EXAMPLE


def tf_config(index=0, workers=("127.0.0.1:2222", "127.0.0.1:2223"), **extra):
    return json.dumps({"cluster": {"worker": list(workers), **extra}, "task": {"type": "worker", "index": index}})


# -- TF_CONFIG ----------------------------------------------------------------------


def test_parse_tf_config_places_each_task():
    task = distributed.parse_tf_config(tf_config(1))
    assert (task.num_workers, task.rank, task.is_chief) == (2, 1, False)
    assert task.address == "127.0.0.1:2223" and task.name == "worker:1"
    assert distributed.parse_tf_config(tf_config(0)).is_chief
    # With a chief job, the chief is rank 0 and workers follow.
    text = json.dumps({"cluster": {"chief": ["127.0.0.1:2221"], "worker": ["127.0.0.1:2222"]},
                       "task": {"type": "worker", "index": 0}})
    task = distributed.parse_tf_config(text)
    assert (task.num_workers, task.rank, task.is_chief) == (2, 1, False)
    assert task.addresses == ["127.0.0.1:2221", "127.0.0.1:2222"]
    assert distributed.parse_tf_config(json.dumps(task.as_dict())) == task
    assert distributed.parse_tf_config(EXAMPLE).num_workers == 2  # the example in every message is valid


@pytest.mark.parametrize("text, words", [
    (None, ["TF_CONFIG is not set"]),
    ("  ", ["TF_CONFIG is empty"]),
    ("{cluster: 1}", ["not valid JSON"]),
    ("[1, 2]", ["JSON object", "list"]),
    ('{"task": {"type": "worker", "index": 0}}', ["no 'cluster'"]),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:2222"]}}), ["no 'task'"]),
    (tf_config(2), ["task index 2 is out of range", "indices 0..1"]),
    (tf_config(-1), ["task index -1 is out of range"]),
    (tf_config("0"), ["task index must be an integer", "'0'"]),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}),
     ["task type 'chief' is not a job of the cluster"]),
    (tf_config(0, workers=("127.0.0.1",)), ["'127.0.0.1' is not 'host:port'"]),
    (tf_config(0, workers=("127.0.0.1:70000",)), ["port in 1..65535"]),
    (tf_config(0, workers=("127.0.0.1:2222", "127.0.0.1:2222")), ["appears twice"]),
    (tf_config(0, ps=["127.0.0.1:2224"]), ["jobs ['ps']", "no parameter servers"]),
    (tf_config(0, workers=()), ["non-empty list"]),
])
def test_bad_tf_config_says_what_is_wrong_and_shows_an_example(text, words):
    with pytest.raises(ValueError) as e:
        distributed.parse_tf_config(text)
    message = str(e.value)
    for word in words:
        assert word in message, message
    assert f"A valid example (the same cluster on every worker, each with its own task index): " \
           f"TF_CONFIG='{EXAMPLE}'" in message


def test_port_in_use_is_named():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        task = distributed.parse_tf_config(tf_config(1, workers=("127.0.0.1:1", f"127.0.0.1:{port}")))
        with pytest.raises(ValueError, match=f"port {port} is already in use") as e:
            distributed.check_port_free(task)
        assert "worker:1" in str(e.value) and EXAMPLE in str(e.value)
    distributed.check_port_free(task)  # free again once closed


def test_output_paths_and_backup_dirs(tmp_path):
    chief = distributed.parse_tf_config(tf_config(0))
    worker = distributed.parse_tf_config(tf_config(1))
    out = str(tmp_path / "run")
    assert distributed.OutputPaths(chief).path(out) == out
    assert distributed.OutputPaths(None).path(out) == out
    paths = distributed.OutputPaths(worker)
    model, logs = paths.path(os.path.join(out, "model.keras")), paths.path(os.path.join(out, "logs"))
    assert not model.startswith(out) and model.endswith("model.keras")
    assert paths.path(os.path.join(out, "model.keras")) == model and logs != model
    os.makedirs(logs)
    folder = os.path.dirname(model)
    assert os.path.isdir(folder)
    paths.cleanup()
    assert not os.path.exists(folder)
    assert distributed.backup_dir(out, chief) == os.path.join(out, "backup")
    assert distributed.backup_dir(out, worker) == os.path.join(out, "backup-worker1")


@pytest.mark.parametrize("rows, expected", [
    ([[0, 2, 1], [1, 2, 1]], 2),     # both finished epoch 2
    ([[0, 3, 2], [1, 2, 1]], 2),     # worker 1 was killed before backing up epoch 3: both resume at 2
    ([[0, 2, 1], [1, 3, 2]], 2),     # the chief may lag too
    ([[0, 1, 0], [1, 0, 0]], 0),     # one worker was killed before its first backup: start again
    ([[0, 2, 1], [0, 2, 1], [1, 2, 1], [1, 2, 1]], 2),  # two replicas per worker
])
def test_common_restore_epoch(rows, expected):
    assert distributed.common_restore_epoch(rows, resume=True) == expected


@pytest.mark.parametrize("rows, resume, words", [
    ([[0, 4, 3], [1, 1, 0]], True, ["last epochs are {0: 4, 1: 1}", "workers [0] hold no backup of epoch 1"]),
    ([[0, 0, 0], [1, 0, 0]], True, ["no worker holds a backup"]),
    ([[0, 0, 0], [1, 2, 1]], False, ["workers [1] holds an interrupted run", "Pass --resume"]),
])
def test_common_restore_epoch_refuses(rows, resume, words):
    with pytest.raises(ValueError) as e:
        distributed.common_restore_epoch(rows, resume=resume)
    for word in words:
        assert word in str(e.value)
    assert distributed.common_restore_epoch([[0, 0, 0], [1, 0, 0]], resume=False) == 0


def test_backup_keeps_previous_checkpoint_and_restores_the_agreed_epoch(tmp_path):
    import keras

    from branchzoo.callbacks import AtomicBackupAndRestore

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    backup = AtomicBackupAndRestore(str(tmp_path / "b"), keep_previous=True)
    backup.set_model(model)
    saved = {}
    for epoch in range(3):  # epochs 1, 2, 3 finish
        model.layers[0].kernel.assign(np.full((3, 2), float(epoch + 1), "float32"))
        backup.on_epoch_end(epoch)
        saved[epoch + 1] = model.layers[0].kernel.numpy().copy()
    metadata = backup.read_metadata()
    assert metadata["epoch"] == 3 and metadata["previous"]["epoch"] == 2
    assert sorted(f for f in os.listdir(tmp_path / "b") if f.endswith(".h5")) == \
        ["epoch-0002.weights.h5", "epoch-0003.weights.h5"]  # epoch 1 is gone

    for epoch in (2, 3):
        model.layers[0].kernel.assign(np.zeros((3, 2), "float32"))
        model._initial_epoch = None
        backup.restore_epoch = epoch
        backup.on_train_begin()
        np.testing.assert_array_equal(model.layers[0].kernel.numpy(), saved[epoch])
        assert model._initial_epoch == epoch and backup.restore_epoch is None
    backup.restore_epoch = 0  # a fresh start loads nothing
    model.layers[0].kernel.assign(np.zeros((3, 2), "float32"))
    backup.on_train_begin()
    assert not model.layers[0].kernel.numpy().any()
    backup.restore_epoch = 1
    with pytest.raises(ValueError, match="no checkpoint of epoch 1"):
        backup.on_train_begin()


# -- train.py --strategy multiworker: user errors ------------------------------------------


@pytest.mark.parametrize("config, args, words", [
    (None, [], ["TF_CONFIG is not set", EXAMPLE]),
    ("not json", [], ["not valid JSON", EXAMPLE]),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:2222"]}}), [], ["no 'task'", EXAMPLE]),
    (tf_config(5), [], ["task index 5 is out of range", EXAMPLE]),
    (tf_config(0), ["--batch-size", "33"], ["split evenly over the 2 workers", "batch_size=33"]),
    (tf_config(0), ["--cpu-devices", "2"], ["cpu_devices", "cpu_devices=2"]),
])
def test_train_multiworker_user_errors_exit_2_and_write_nothing(config, args, words, tmp_path, capsys,
                                                                 monkeypatch):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", config)
    out = tmp_path / "run"
    code, err = run_in_process(TRAIN, ["--model", "mpnet", "--strategy", "multiworker", *args,
                                       "--output", str(out)], capsys)
    assert code == 2, err
    assert "train.py: error:" in err and "Traceback" not in err
    for word in words:
        assert word in err
    assert not out.exists()


def test_train_multiworker_port_in_use_exits_2_before_starting(tmp_path, capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("TF_CONFIG", tf_config(0, workers=(f"127.0.0.1:{port}", "127.0.0.1:1")))
        out = tmp_path / "run"
        code, err = run_in_process(TRAIN, ["--model", "mpnet", "--strategy", "multiworker",
                                           "--output", str(out)], capsys)
    assert code == 2, err
    assert f"port {port} is already in use" in err and "Traceback" not in err
    assert not out.exists()


# -- the launcher -------------------------------------------------------------------------

# A stand-in worker: prints its TF_CONFIG, then does what argv[1] says.
FAKE_WORKER = """
import json, os, sys, time
config = json.loads(os.environ["TF_CONFIG"])
index = config["task"]["index"]
print(json.dumps(config), flush=True)
print("to stderr", file=sys.stderr, flush=True)
open(os.path.join(sys.argv[2], f"pid{index}"), "w").write(str(os.getpid()))
action = sys.argv[1]
if action == "fail1" and index == 1:
    sys.exit(3)
if action in ("fail1", "sleep"):
    time.sleep(120)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def fake_worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER)
    return str(script)


def test_launch_gives_each_worker_its_tf_config_and_prefixes_output(fake_worker, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    code = launch.launch([fake_worker, "ok", str(tmp_path)], 2, stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    configs = {}
    for line in lines:
        prefix, _, text = line.partition("] ")
        configs[prefix + "]"] = distributed.parse_tf_config(text)
    assert sorted(configs) == ["[worker 0]", "[worker 1]"]
    first, second = configs["[worker 0]"], configs["[worker 1]"]
    assert first.cluster == second.cluster and len(set(first.addresses)) == 2
    assert all(a.startswith("127.0.0.1:") for a in first.addresses)
    assert (first.task_index, second.task_index) == (0, 1) and first.is_chief
    assert "[worker 0] to stderr" in err.getvalue() and "[worker 1] to stderr" in err.getvalue()
    assert "[launch] worker 0: pid" in err.getvalue()


def test_launch_port_base(fake_worker, tmp_path):
    base = launch.free_ports(1)[0]
    out = io.StringIO()
    assert launch.launch([fake_worker, "ok", str(tmp_path)], 2, port_base=base, stdout=out,
                         stderr=io.StringIO()) == 0
    config = json.loads(out.getvalue().splitlines()[0].partition("] ")[2])
    assert config["cluster"]["worker"] == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]


def test_launch_stops_everyone_when_one_worker_fails(fake_worker, tmp_path):
    start = time.time()
    err = io.StringIO()
    code = launch.launch([fake_worker, "fail1", str(tmp_path)], 2, grace=5, stdout=io.StringIO(), stderr=err)
    assert code == 3  # the failing worker's code
    assert time.time() - start < 60  # the other worker did not run its 120 s
    assert "worker 1 exited with code 3; stopping the others" in err.getvalue()
    assert not _alive(int((tmp_path / "pid0").read_text()))


def test_launch_sigterm_stops_every_worker(fake_worker, tmp_path):
    def terminate_when_started():
        deadline = time.time() + 60
        while not all((tmp_path / f"pid{i}").exists() for i in range(2)) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # let the pid files be written
        os.kill(os.getpid(), signal.SIGTERM)  # to this process, where launch() handles it

    sender = threading.Thread(target=terminate_when_started, daemon=True)
    sender.start()
    err = io.StringIO()
    code = launch.launch([fake_worker, "sleep", str(tmp_path)], 2, grace=5, stdout=io.StringIO(), stderr=err)
    sender.join()
    assert code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; stopping every worker" in err.getvalue()
    assert not any(_alive(int((tmp_path / f"pid{i}").read_text())) for i in range(2))
    assert signal.getsignal(signal.SIGTERM) is not None  # launch() put the old handler back


def test_launch_timeout_stops_every_worker(fake_worker, tmp_path):
    err = io.StringIO()
    start = time.time()
    code = launch.launch([fake_worker, "sleep", str(tmp_path)], 2, grace=5, timeout=3, stdout=io.StringIO(),
                         stderr=err)
    assert code == 124 and time.time() - start < 60
    assert "timed out after 3 s" in err.getvalue()
    assert not any(_alive(int(f.read_text())) for f in tmp_path.glob("pid*"))  # (a slow start: no file)


@pytest.mark.parametrize("argv, words", [
    (["--workers", "2", "train.py"], ["put the worker command after --"]),
    (["--workers", "2", "--", "train.py", "--model", "mpnet"], ["add --strategy multiworker"]),
    (["--workers", "0", "--", "x.py"], ["`workers` must be >= 1"]),
    (["--workers", "2", "--"], ["`command` must name"]),
])
def test_launch_usage_errors_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


# -- real workers ---------------------------------------------------------------------------


def _kill_group(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_launch(args, tmp_path, timeout, monkeypatch, check=True):
    """`launch.launch` here (no extra TensorFlow start-up), bounded by `timeout`; returns (code, output).

    The workers' TMPDIR is ``tmp_path/worker-tmp``: it must end up empty.
    """
    tmp = tmp_path / "worker-tmp"
    tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    out = io.StringIO()
    code = launch.launch(args, 2, grace=5, timeout=timeout, stdout=out, stderr=out)
    if check and code != 0:
        raise AssertionError(f"launch {args} failed ({code}):\n{out.getvalue()[-6000:]}")
    return code, out.getvalue()


def run_train(args, timeout):
    """train.py in its own process group; returns the Popen to `finish`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc, timeout):
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{stderr[-5000:]}"


SHARD_WORKER = """
import json, os, sys
from branchzoo import distributed
strategy = distributed.make_strategy(distributed.read_tf_config())  # before any other TF call
from branchzoo import data
ds = data.load_dataset("digits", "train", batch_size=int(sys.argv[2]), seed=0, epochs=1, steps_per_epoch=3)
seen = []
for batch in strategy.experimental_distribute_dataset(distributed.shard_by_data(ds)):
    images, labels = (strategy.experimental_local_results(t)[0].numpy() for t in batch)
    seen.append({"labels": labels.tolist(), "sums": images.sum(axis=(1, 2, 3)).tolist()})
index = distributed.read_tf_config().task_index
with open(os.path.join(sys.argv[1], f"seen{index}.json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.slow  # two more TensorFlow processes: ~50 s on the shared 2-core machine
def test_each_worker_reads_its_own_shard_of_the_global_batch(tmp_path, monkeypatch):
    from branchzoo import data

    script = tmp_path / "shard.py"
    script.write_text(SHARD_WORKER)
    run_launch([str(script), str(tmp_path), "10"], tmp_path, 300, monkeypatch)
    seen = [read_json(tmp_path / f"seen{i}.json") for i in range(2)]
    full = data.load_dataset("digits", "train", batch_size=10, seed=0, epochs=1, steps_per_epoch=3)
    steps = 0
    for step, (images, labels) in enumerate(full):
        # Worker 0 holds the first half of each global batch of 10, worker 1 the second half.
        assert seen[0][step]["labels"] + seen[1][step]["labels"] == labels.numpy().tolist()
        sums = np.asarray(images).astype("float64").sum(axis=(1, 2, 3))
        np.testing.assert_allclose(seen[0][step]["sums"] + seen[1][step]["sums"], sums, rtol=1e-5)
        assert len(seen[0][step]["labels"]) == len(seen[1][step]["labels"]) == 5
        steps += 1
    assert steps == len(seen[0]) == len(seen[1]) == 3


@pytest.mark.slow  # ~25 s: two worker processes and a mirrored run (the killed-worker test is slow too)
def test_two_workers_match_a_mirrored_run(tmp_path, monkeypatch):
    """Two local workers, one epoch: the chief's metrics equal a one-process mirrored run.

    Both runs have two replicas with synchronized BatchNorm fed the same
    halves of the same global batches, so they compute the same sums; only
    the all-reduce implementation differs (collective ring over gRPC vs
    MirroredStrategy's local reduction), and a sum of two operands does not
    depend on the order. We measured bit-identical results; the tolerance
    (1e-5 relative) leaves room for other reduction kernels, far below the
    ~1% that a different batch split or unsynchronized BatchNorm causes.
    """
    out = tmp_path / "multi"
    common = ["--model", "mpnet_tiny_digits", "--epochs", "1", "--batch-size", "64", "--lr", "0.005",
              *SHALLOW, "--deterministic", "--no-validate", "--verbose", "0"]
    mirrored = run_train([*common, "--strategy", "mirrored", "--cpu-devices", "2",
                          "--output", str(tmp_path / "mirrored")], timeout=600)
    try:
        run_launch(["train.py", *common, "--strategy", "multiworker", "--output", str(out)],
                   tmp_path, 600, monkeypatch)
    finally:
        finish(mirrored, timeout=600)
    multi = read_json(out / "metrics.json")
    single = read_json(tmp_path / "mirrored" / "metrics.json")
    assert multi["workers"] == 2 and multi["replicas"] == single["replicas"] == 2
    # Same number of global batches: the global batch is --batch-size, not 2x.
    assert multi["optimizer_iterations"] == single["optimizer_iterations"] == int(np.ceil(1437 / 64))
    assert multi["history"]["loss"][0] == pytest.approx(single["history"]["loss"][0], rel=1e-5)
    for key in ("loss", "top1", "top5"):
        assert multi[key] == pytest.approx(single[key], rel=1e-5), key
    # The chief alone wrote the outputs; the worker's temporary folder is gone.
    assert sorted(os.listdir(out)) == ["config.json", "logs", "metrics.json", "model.keras"]
    assert os.listdir(out / "logs") == ["train"]
    assert os.listdir(tmp_path / "worker-tmp") == []
    assert read_json(out / "config.json")["cluster"]["task"] == {"type": "worker", "index": 0}


@pytest.mark.slow
def test_killed_worker_then_resumed_job_loses_nothing(tmp_path, monkeypatch):
    """SIGKILL one worker mid-epoch; the restarted job resumes and ends where an uninterrupted one does.

    Same tolerance as the mirrored resume test (test_train): the resumed run
    replays the same batches from the same weights and optimizer state, so
    loss within 1e-5 relative and identical top-1; weights within 1e-6.
    """
    import keras

    import branchzoo

    branchzoo.register_keras_objects()  # no custom_objects below

    out, straight, export = tmp_path / "run", tmp_path / "straight", tmp_path / "export"
    args = ["train.py", "--model", "mpnet_tiny_digits", "--epochs", "3", "--batch-size", "128", *SHALLOW,
            "--no-validate", "--deterministic", "--verbose", "0", "--strategy", "multiworker"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")

    def launch_cli(*more, stderr=subprocess.DEVNULL):
        return subprocess.Popen([sys.executable, "-m", "branchzoo.launch", "--workers", "2", "--grace", "5",
                                 "--timeout", "900", "--", *args, *more], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True)

    proc = launch_cli("--output", str(out), stderr=subprocess.PIPE)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        metadata = out / "backup-worker1" / "training_metadata.json"
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if metadata.exists() and read_json(metadata)["epoch"] >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "".join(lines)[-3000:]
        pid = next(int(l.split("pid ")[1].split(",")[0]) for l in lines if "[launch] worker 1: pid" in l)
        os.kill(pid, signal.SIGKILL)  # mid-epoch 2: no chance to clean up
        assert proc.wait(timeout=120) == 128 + signal.SIGKILL  # the launcher stopped the chief too
    finally:
        _kill_group(proc)
    reader.join(timeout=5)
    assert "worker 1 was killed by SIGKILL; stopping the others" in "".join(lines)
    assert not (out / "metrics.json").exists()
    done = [read_json(out / b / "training_metadata.json")["epoch"] for b in ("backup", "backup-worker1")]
    assert all(1 <= d < 3 for d in done), done

    # Without --resume the interrupted run is not overwritten (every worker refuses).
    code, output = run_launch([*args, "--output", str(out)], tmp_path, 300, monkeypatch, check=False)
    assert code == 2 and "--resume" in output

    # The restarted job, and an uninterrupted one for reference, side by side.
    reference = launch_cli("--output", str(straight))
    try:
        run_launch([*args, "--output", str(out), "--resume", "--export", str(export)], tmp_path, 900,
                   monkeypatch)
        assert reference.wait(timeout=900) == 0
    finally:
        _kill_group(reference)
    metrics, expected = read_json(out / "metrics.json"), read_json(straight / "metrics.json")
    assert metrics["first_epoch_in_this_process"] == min(done) + 1
    assert metrics["optimizer_iterations"] == expected["optimizer_iterations"] == 3 * int(np.ceil(1437 / 128))
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert metrics["top1"] == expected["top1"]
    resumed = keras.models.load_model(out / "model.keras").get_weights()
    reference_weights = keras.models.load_model(straight / "model.keras").get_weights()
    for a, b in zip(resumed, reference_weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Only the chief's outputs remain: no backups, no worker files; its export works.
    assert sorted(os.listdir(out)) == ["config.json", "logs", "metrics.json", "model.keras"]
    assert os.path.isfile(export / "saved_model.pb") and metrics["export_max_abs_diff"] <= 1e-5
    assert os.listdir(tmp_path / "worker-tmp") == []
