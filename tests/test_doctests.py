"""Every docstring example in branchzoo runs as a doctest, and gives the output it shows.

The modules are found by reading the package's source for ``>>>`` lines, so a new module's
examples run without being listed here; every such line must belong to an example that
doctest finds (not, say, to a comment or to a nested function's docstring).
"""

import doctest
import importlib
import os
import re

import pytest

from conftest import REPO

PROMPT = re.compile(r"^\s*>>> ", re.MULTILINE)


def modules_with_examples():
    """(module name, number of ``>>>`` lines) of every branchzoo module whose source shows one."""
    found = []
    for folder, dirs, files in os.walk(os.path.join(REPO, "branchzoo")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            with open(path, encoding="utf-8") as f:
                prompts = len(PROMPT.findall(f.read()))
            if prompts:
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), prompts))
    return found


MODULES = modules_with_examples()


@pytest.fixture(autouse=True)
def forget_registered_datasets(monkeypatch):
    """Datasets an example registers (``my_line``, ``my_folder``) are forgotten after it."""
    from branchzoo.data import specs

    monkeypatch.setattr(specs, "_SPECS", dict(specs._SPECS))


def test_the_package_has_examples():
    assert len(MODULES) > 40 and "branchzoo" in dict(MODULES) and "branchzoo.zoo" in dict(MODULES)


@pytest.mark.parametrize("name, prompts", MODULES, ids=[name for name, _ in MODULES])
def test_docstring_examples(name, prompts):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    assert sum(len(test.examples) for test in tests) == prompts, f"{name}: a >>> line that doctest does not run"
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted == prompts and failed == 0, name
