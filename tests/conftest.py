"""Shared test settings: quiet TensorFlow, an isolated cache, the repo root."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Caches (weights, decoded datasets) go to a per-session folder unless CI sets one."""
    if not os.environ.get("BRANCHZOO_HOME"):
        os.environ["BRANCHZOO_HOME"] = str(tmp_path_factory.mktemp("branchzoo_home"))
    yield
