"""One registry type for builders, tasks, analyses and zoo entries, and one error for an unknown name."""

import sys

import pytest

from branchzoo import registry, tasks, zoo
from branchzoo.analysis.registry import get_analysis
from branchzoo.registry import Registry, UnknownName


@pytest.mark.parametrize("lookup, words", [
    (lambda: registry.get_builder("mpnte"), ["Unknown builder 'mpnte'", "Close matches: mpnet", "resnext_cifar"]),
    (lambda: tasks.get_task("clasification"), ["Unknown task 'clasification'", "Close matches: classification"]),
    (lambda: get_analysis("probs"), ["Unknown analysis 'probs'", "Close matches: probes"]),
    (lambda: zoo.get_entry("mpnt"), ["Unknown model name 'mpnt'", "Close matches: mpnet", "list_models()"]),
])
def test_every_registry_raises_the_same_one_line_error(lookup, words, monkeypatch):
    monkeypatch.delenv("BRANCHZOO_ZOO_DIR", raising=False)
    with pytest.raises(UnknownName) as info:
        lookup()
    assert isinstance(info.value, ValueError)  # what `except ValueError` (and the CLIs) catch
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_register_refuses_a_second_object_under_a_name():
    things = Registry("thing")
    assert things.register("a", 1) == 1
    things.register("a", 1)  # the same again (a module imported twice) changes nothing
    with pytest.raises(ValueError, match="A thing named 'a' is already registered"):
        things.register("a", 2)
    assert things.names() == ["a"] and "a" in things and "b" not in things
    error = things.unknown("b", where="recipe.json")
    assert str(error) == "Unknown thing 'b' in recipe.json. Registered things: a."
    assert (error.kind, error.name, error.close) == ("thing", "b", [])


DECLARED = Registry("plug-in", modules={"late": "registry_plugin_for_test"})


def test_a_declared_entry_is_listed_without_its_module_and_imported_on_first_get(tmp_path, monkeypatch):
    (tmp_path / "registry_plugin_for_test.py").write_text(
        "import test_registry\ntest_registry.DECLARED.register('late', 'loaded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert DECLARED.names() == ["late"] and "registry_plugin_for_test" not in sys.modules
    assert DECLARED.get("late") == "loaded"
    monkeypatch.delitem(sys.modules, "registry_plugin_for_test")


def test_a_registry_loads_its_plugins_once_before_listing():
    calls = []
    late = Registry("entry", load=lambda: calls.append(1) or late.register("x", 0))
    assert late.names() == ["x"] and late.get("x") == 0
    with pytest.raises(UnknownName):
        late.get("y")
    assert calls == [1]


def test_builders_declare_their_families_and_refuse_another():
    assert registry.builder_family("resnext_cifar") == "resnext_gated"
    with pytest.raises(ValueError, match=r"`family` of builder 'mpnet' must be 'mpnet'.*family='other'"):
        registry.register_builder("mpnet", family="other")
