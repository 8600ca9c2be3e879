"""The full analysis report of an MPNet2(1:3x3, 4:7x7) briefly trained on real CIFAR-10 (opt-in)."""

import json
import os

import pytest

from test_train import run_cli

REAL_DATA = os.environ.get("BRANCHZOO_DATA_DIR")
HAS_CIFAR = bool(REAL_DATA and os.path.exists(os.path.join(REAL_DATA, "cifar10-jpeg.tar.gz")))
FIGURES = ["probes-accuracy.png", "probes-with-saturation.png", "saturation-layers.png",
           "cka-output.png", "cka-heatmap.png", "gradients-flow.png", "pathway_removal-drop.png"]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not HAS_CIFAR, reason="needs BRANCHZOO_DATA_DIR holding cifar10-jpeg.tar.gz")
def test_mpnet_report_on_real_cifar10(tmp_path):
    out = tmp_path / "report"
    run_cli("experiments/mpnet_probes_cifar10.py", "--data-dir", REAL_DATA, "--widths", "4,4,8,8",
            "--epochs", "1", "--steps-per-epoch", "20", "--batch-size", "32", "--probe-train", "400",
            "--probe-test", "200", "--saturation-examples", "400",
            "--output", str(out))
    report = json.loads((out / "report.json").read_text())
    assert {"probes", "saturation", "cka", "gradients", "pathway_removal", "experiment", "dominance",
            "tail"} <= set(report)
    assert report["gradients"]["source"] == "accumulated over 20 training steps"
    assert report["probes"]["not_converged"] == 0
    assert set(report["tail"]["pathways"]) == {"path1", "path2"}
    for name in FIGURES:
        assert 0 < os.path.getsize(out / name) < 400_000
    probes = report["probes"]
    assert probes["num_train"] == 400 and probes["num_test"] == 200
    assert len(probes["layers"]) == 1 + 8 * 6  # stem + 8 blocks x (1 + 4 convs + sum)
    assert probes["best_probe_accuracy"] > 0.15  # chance is 0.10: real images carry signal
    assert report["saturation"]["samples"] == 400
    assert report["dominance"]["num_blocks"] == 8
    assert report["experiment"]["training"]["history"]["loss"][0] < 2.6
