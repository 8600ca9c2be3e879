"""How branchzoo's modules import each other: no cycles, and listing without TensorFlow, Keras or matplotlib."""

import ast
import os
import subprocess
import sys
import textwrap

from conftest import REPO

HEAVY = ("tensorflow", "keras", "matplotlib")


def package_modules(root, package):
    """``{dotted module name: file path}`` of every module of `package` under `root`."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imported_modules(path, name, known):
    """The modules of `known` that module `name` imports anywhere in its file (inside functions too)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()

    def add(target):
        while target and target not in known:  # `from branchzoo.x import f`: the module branchzoo.x
            target = target.rsplit(".", 1)[0] if "." in target else ""
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def import_graph(root, package):
    """Module -> modules it imports, less a module's import of its own package's ``__init__``.

    That one edge is how a module lazily loads the plug-ins its package
    registers (``import branchzoo.analysis`` from branchzoo.analysis.registry),
    so it does not count as a cycle.
    """
    modules = package_modules(root, package)
    packages = {m for m, p in modules.items() if p.endswith("__init__.py")}
    return {
        m: {t for t in imported_modules(p, m, modules) if not (t in packages and m.startswith(t + "."))}
        for m, p in modules.items()
    }


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import g\n")
    (package / "c.py").write_text("def f():\n    import pkg  # registers plug-ins\n")
    assert cycles(import_graph(str(tmp_path), "pkg")) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles_between_modules():
    graph = import_graph(REPO, "branchzoo")
    assert "branchzoo.models.branched_gan" in graph and graph["branchzoo.models.branched_gan"]
    assert cycles(graph) == []


def test_models_know_no_training_callbacks_or_analyses():
    graph = import_graph(REPO, "branchzoo")
    banned = ("branchzoo.tasks", "branchzoo.training", "branchzoo.callbacks", "branchzoo.gan_task",
              "branchzoo.analysis")
    for module, targets in graph.items():
        if module.startswith("branchzoo.models"):
            assert not [t for t in targets if t.startswith(banned)], module


def _run_python(script):
    env = dict(os.environ)
    env.pop("BRANCHZOO_ZOO_DIR", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_listing_and_cards_are_instant_and_load_no_tensorflow_keras_or_matplotlib():
    seconds, loaded, family = _run_python("""
        import sys, time
        start = time.perf_counter()
        import branchzoo
        branchzoo.list_models()
        card = branchzoo.model_card("mpnet_tiny_digits")
        print(time.perf_counter() - start)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}))
        print(card["family"])
    """.format(heavy=HEAVY))
    assert loaded == "[]"
    assert family == "mpnet"
    assert float(seconds) < 1.0


def test_train_list_loads_no_tensorflow_keras_or_matplotlib():
    lines = _run_python("""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("train_cli", "train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        assert train.main(["--list", "mpnet_tiny*"]) == 0
        print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}))
    """.format(heavy=HEAVY))
    assert lines == ["mpnet_tiny_digits", "[]"]


def test_submodules_load_on_first_use_after_the_tensorflow_setup():
    # `import branchzoo` sets oneDNN and the start-up filter before any submodule imports TensorFlow.
    lines = _run_python("""
        import sys
        import branchzoo
        print("tensorflow" in sys.modules, [type(f).__name__ for f in sys.meta_path][:1])
        model = branchzoo.models.mpnet(pathways=[[1, 3]], blocks_per_stage=1, widths=[4, 4, 8, 8])
        print("tensorflow" in sys.modules, type(model).__name__)
    """)
    assert lines[0] == "False ['_QuietFinder']"
    assert lines[1] == "True Functional"


def test_every_builder_of_branchzoo_models_is_declared_with_its_family():
    import branchzoo.models  # noqa: F401  (registers the builders)
    from branchzoo import registry

    registered = {name: record["family"] for name, record in registry.BUILDERS.items()
                  if record["fn"].__module__.startswith("branchzoo.models.")}
    assert registered == registry.FAMILIES
