"""Shared test settings: quiet TensorFlow, an isolated cache, the repo root."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """Caches (weights, decoded datasets) go to a per-session folder unless CI sets one; returns it.

    Tests that give themselves an empty cache and then read a real dataset point BRANCHZOO_HOME back
    here, so that each real dataset is decoded once per run (CIFAR-10: half a minute of CPU).
    """
    if not os.environ.get("BRANCHZOO_HOME"):
        os.environ["BRANCHZOO_HOME"] = str(tmp_path_factory.mktemp("branchzoo_home"))
    yield os.environ["BRANCHZOO_HOME"]
