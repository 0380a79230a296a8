"""The public names: what `tfprune/__init__.py` promises, what static readers see, what the API reference covers.

`_PUBLIC` (name -> module, resolved lazily by `__getattr__`) is the runtime source of truth. The API reference is
built by griffe, which reads source and cannot run `__getattr__`, so `__init__.py` repeats each name as an import
under `if typing.TYPE_CHECKING:`. These tests keep the two in step and check that docs/api covers every public name
by its public path only (never a module behind it, which may move). Everything is read with `ast`: nothing here
imports TensorFlow or Keras.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

import tfprune

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfprune"
API_DOCS = ROOT / "docs" / "api"
SUBPACKAGES = ("callbacks", "criteria", "layers", "search")  # their own __all__ is public too
DIRECTIVE = re.compile(r"^::: *(\S+)", re.MULTILINE)


def _module_tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _table(name):
    """A dict literal of tfprune/__init__.py (`_PUBLIC`, `_MODULES`), read from the source."""
    for node in _module_tree(PACKAGE / "__init__.py").body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"tfprune/__init__.py has no `{name} = {{...}}` dict literal.")


def _public_table():
    """`{public name: the module that defines it, or the module it is}`: `_PUBLIC` and `_MODULES` together."""
    return {**_table("_PUBLIC"), **_table("_MODULES")}


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _type_checking_imports():
    """`{name: module}` of the `from module import name as name` lines under `if typing.TYPE_CHECKING:`."""
    imports = {}
    for node in _module_tree(PACKAGE / "__init__.py").body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for statement in node.body:
            assert isinstance(statement, ast.ImportFrom) and statement.level == 0, (
                f"line {statement.lineno}: only `from tfprune.<module> import <name> as <name>` belongs in the "
                "TYPE_CHECKING block.")
            for alias in statement.names:
                assert alias.asname in (None, alias.name), (
                    f"line {statement.lineno}: `{alias.name} as {alias.asname}` renames a public name; the name "
                    "must be the same as in `_PUBLIC`.")
                assert alias.name not in imports, f"{alias.name} is imported twice under TYPE_CHECKING."
                imports[alias.name] = statement.module
    return imports


def _static_all(subpackage):
    """`__all__` of tfprune/<subpackage>/__init__.py, read from the source."""
    for node in _module_tree(PACKAGE / subpackage / "__init__.py").body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]:
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"tfprune/{subpackage}/__init__.py has no literal `__all__`.")


def _api_directives():
    """Every identifier documented with `::: identifier` in docs/api/*.md, with the page it is on."""
    found = {}
    for page in sorted(API_DOCS.glob("*.md")):
        for identifier in DIRECTIVE.findall(page.read_text()):
            found.setdefault(identifier, page.name)
    return found


def _module_exists(dotted):
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_all_is_the_public_table():
    assert tfprune.__all__ == sorted(_public_table())


def test_type_checking_imports_name_the_modules_of_public():
    public, imports, modules = _public_table(), _type_checking_imports(), _table("_MODULES")
    for name, module in public.items():
        if module == f"tfprune.{name}":
            # A public module at its own path (tfprune.callbacks, ...): griffe sees the submodule itself, and an
            # import of it into its own package would only shadow it.
            assert _module_exists(module), f"_MODULES maps {name!r} to {module!r}, which is not a module."
            assert name not in imports, f"{name!r} is a submodule; remove its TYPE_CHECKING import."
        elif name in modules:  # a public module that lives elsewhere (tfprune.models is tfprune.training.models)
            package, _, last = module.rpartition(".")
            assert _module_exists(module) and last == name, f"_MODULES maps {name!r} to {module!r}."
            assert imports.get(name) == package, f"add `from {package} import {name} as {name}` under TYPE_CHECKING."
        else:
            assert imports.get(name) == module, (
                f"_PUBLIC maps {name!r} to {module!r}, but the TYPE_CHECKING block imports it from "
                f"{imports.get(name)!r}: add or fix `from {module} import {name} as {name}`.")
    extra = sorted(set(imports) - set(public))
    assert not extra, f"TYPE_CHECKING imports names that are not in _PUBLIC: {extra}."


def test_type_checking_imports_read_existing_modules():
    for name, module in _type_checking_imports().items():
        assert _module_exists(module), f"{name!r} is imported from {module!r}, which is not a module."


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_subpackage_all_is_static(subpackage):
    names = _static_all(subpackage)
    assert names and len(names) == len(set(names))


def test_api_reference_covers_every_public_name():
    documented = _api_directives()
    wanted = [f"tfprune.{name}" for name in tfprune.__all__]
    wanted += [f"tfprune.{package}.{name}" for package in SUBPACKAGES for name in _static_all(package)]
    missing = [identifier for identifier in wanted if identifier not in documented]
    assert not missing, f"docs/api/*.md has no `::: name` directive for {missing}."


def test_api_reference_uses_public_paths_only():
    public = {f"tfprune.{name}" for name in tfprune.__all__} | {f"tfprune.{package}" for package in SUBPACKAGES}
    public |= {f"tfprune.{package}.{name}" for package in SUBPACKAGES for name in _static_all(package)}
    internal = {identifier: page for identifier, page in _api_directives().items() if identifier not in public}
    assert not internal, (
        f"docs/api documents names by paths that are not public (modules behind them move): {internal}. "
        "Use `tfprune.<name>` or `tfprune.<callbacks|criteria|layers|search>.<name>`.")


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_each_public_subpackage_is_an_attribute_of_a_fresh_import(subpackage):
    """`tfprune.criteria.Taylor` works right after `import tfprune`, before anything imported the subpackage."""
    code = f"import tfprune; print(tfprune.{subpackage}.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.split()[-1] == f"tfprune.{subpackage}"
