"""python -m branchzoo.gpu_check: its no-GPU answer, its arguments, and (slow) its table on the CPU."""

import pytest
import tensorflow as tf

from branchzoo import gpu_check

NO_GPU = not tf.config.list_physical_devices("GPU")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: the check would run")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("No GPU visible to TensorFlow")


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["--steps", "5", "--warmup", "5"], "--warmup: expected fewer than --steps (5) steps, got 5"),
    (["--mixed", "float16"], "invalid choice: 'float16'"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_one_entry_of_every_family():
    from branchzoo import zoo

    families = {zoo.get_entry(name)["builder"] for name in gpu_check.ENTRIES}
    assert families == {"mpnet", "resnext_cifar", "modular_mlp", "branched_resnet18", "branched_stem_cnn",
                        "branched_gan"}


@pytest.mark.slow
def test_the_table_on_the_cpu(capsys):
    assert gpu_check.main(["--cpu", "--models", "mpnet_tiny_digits", "--steps", "3", "--warmup", "1",
                           "--batch-size", "16"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mpnet_tiny_digits")]
    assert [row.split("|")[2].strip() for row in rows] == ["float32", "mixed_float16", "float32 + XLA"]
    for row in rows:
        rate, loss = float(row.split("|")[3]), float(row.split("|")[4])
        assert rate > 0 and 0 < loss < 10
