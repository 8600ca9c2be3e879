"""A branched ResNet18 with 8 branches, trained briefly on the real CIFAR-10, yields the specialization figures."""

import importlib.util
import json
import os

import pytest

from conftest import REPO

REAL_DATA = os.environ.get("BRANCHZOO_DATA_DIR")


@pytest.mark.slow  # 50-90 s of CIFAR-10 training: CI runs it in the slow step
@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA and os.path.exists(os.path.join(REAL_DATA, "cifar10-jpeg.tar.gz"))),
                    reason="needs BRANCHZOO_DATA_DIR holding cifar10-jpeg.tar.gz")
def test_specialization_figures_on_cifar10(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "branch_specialization", os.path.join(REPO, "experiments", "branch_specialization.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.run(data_dir=REAL_DATA, base_width=2, epochs=2, steps_per_epoch=40, batch_size=64,
                        output=str(tmp_path / "report"), work=str(tmp_path / "run"), verbose=0)
    metrics, report = result["metrics"], result["report"]
    assert metrics["dataset"] == "cifar10" and metrics["optimizer_iterations"] == 80
    loss = metrics["history"]["loss"]
    assert loss[1] < loss[0]  # it learns
    assert metrics["top1"] > 0.15  # above chance (0.10) on the whole test split
    assert report["num_branches"] == 8 and report["num_examples"] == 10_000  # the whole test split
    assert all(v is not None for row in report["class_contribution"] for v in row)  # every class seen
    files = sorted(os.listdir(tmp_path / "report"))
    for fig in ("activity", "class_contribution", "confidence", "correlation", "covariance"):
        assert f"specialization-{fig}.png" in files
        assert 0 < os.path.getsize(tmp_path / "report" / f"specialization-{fig}.png") < 400_000
    stored = json.loads((tmp_path / "report" / "report.json").read_text())
    assert stored["evaluated"]["dataset"] == "cifar10"
    assert len(stored["specialization"]["class_contribution"]) == 8
