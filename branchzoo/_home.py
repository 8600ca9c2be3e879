"""Where branchzoo keeps its caches (weights, decoded datasets, extracted archives)."""

import os


def branchzoo_home():
    """The cache root: ``$BRANCHZOO_HOME``, default ``~/.keras/branchzoo``."""
    home = os.environ.get("BRANCHZOO_HOME")
    if not home:
        keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
        home = os.path.join(keras_home, "branchzoo")
    return home
