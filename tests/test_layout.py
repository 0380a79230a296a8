"""The package's shape: every public name resolves, the top holds few modules, and no modules import each other."""

import ast
import importlib
import inspect
import types
from pathlib import Path

import tfprune

PACKAGE = Path(tfprune.__file__).parent


def test_every_public_name_resolves():
    for name in tfprune.__all__:
        value = getattr(tfprune, name)
        if name in tfprune._MODULES:
            assert isinstance(value, types.ModuleType), name
        else:
            assert inspect.isclass(value) or inspect.isfunction(value), (name, value)
            assert value.__module__.startswith("tfprune."), (name, value.__module__)
    assert set(dir(tfprune)) >= set(tfprune.__all__)


def test_the_top_of_the_package_holds_the_entry_points_and_folders():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8 and {"__init__.py", "cli.py"} <= set(modules), modules
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (folder / "__init__.py").exists(), f"{folder.name} is not a package"
        assert ast.get_docstring(ast.parse((folder / "__init__.py").read_text())), f"{folder.name} says no role"


def import_graph():
    """`{module: modules it imports}` inside the package, from every import statement (also those inside functions).

    An import of a module's own parent package (its `__init__`) is not an edge, as Python runs the parent first."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {name: set() for name in names}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in names:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target not in (name, "tfprune") and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    edges = import_graph()
    assert len(edges) > 40 and "tfprune.pruning.rebuilding" in edges["tfprune.pruning.prune"]
    assert cycles(edges) == []


def test_the_circle_test_finds_a_circle_around_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_imports():
    for name in import_graph():
        importlib.import_module(name)
