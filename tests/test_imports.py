"""The project's imports run one way, from the entry points down to the core: no module
imports, directly or through others, a module that imports it back. Imports inside
functions count (they run, only later); those under ``if TYPE_CHECKING:`` do not (they
never run). ``from package import module`` is an import of that module alone."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# the layers, bottom up: a module imports its own package and the layers below it, never
# a layer above, nor another package of its own layer
LAYERS = (("dataselect",), ("models",), ("scorers", "attribution"), ("pipelines",))
PACKAGES = tuple(package for layer in LAYERS for package in layer)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _runs(node: ast.AST) -> bool:
    """False for ``if TYPE_CHECKING:`` (and ``typing.TYPE_CHECKING``) blocks."""
    if not isinstance(node, ast.If):
        return True
    test = node.test
    name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
    return name != "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(child for child in ast.iter_child_nodes(node) if _runs(child))
    return found


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            submodules = [f"{base}.{a.name}" for a in node.names
                          if f"{base}.{a.name}" in modules]
            wanted = submodules if len(submodules) == len(node.names) else [base, *submodules]
        for target in wanted:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_module_imports_one_that_imports_it_back():
    modules = project_modules()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_cycles_through_function_level_imports(tmp_path):
    modules = {name: tmp_path / f"{name}.py" for name in ("a", "b", "c", "d")}
    modules["a"].write_text("import b\n")
    modules["b"].write_text("def f():\n    import c\n")
    modules["c"].write_text("from a import x\n")
    modules["d"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                            "    import a\n")
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["d"] == set()
    assert import_cycles(graph) == [["a", "b", "c"]]


def layer_of(module: str) -> int:
    package = module.partition(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_the_layers_run_one_way():
    """dataselect (the core) imports nothing above it; models (model support) only the
    core; scorers and attribution import models and the core, not each other, and
    neither imports pipelines."""
    modules = project_modules()
    for name, path in modules.items():
        for target in imported(name, path, modules):
            same_package = target.partition(".")[0] == name.partition(".")[0]
            assert same_package or layer_of(target) < layer_of(name), (name, target)


# what the input readers may import from the rest of the core: its bottom layer only
READER_IMPORTS = ("dataselect.errors", "dataselect.checks", "dataselect.storage",
                  "dataselect.schemas", "dataselect.json_text")


def test_the_readers_sit_below_the_rest_of_the_core():
    """dataselect.readers (one module per input format) imports nothing of the core but
    its bottom layer: formats and corpus look readers up, never the other way."""
    modules = project_modules()
    readers = [name for name in modules if name.startswith("dataselect.readers")]
    assert {"dataselect.readers.base", "dataselect.readers.jsonl",
            "dataselect.readers.parquet", "dataselect.readers.arrow"} <= set(readers)
    for name in readers:
        for target in imported(name, modules[name], modules):
            assert target.startswith("dataselect.readers") or target in READER_IMPORTS, \
                (name, target)


def test_the_recipe_schema_sits_below_the_job_runner():
    """The recipe's YAML loader and error formatting are modules of their own, below its
    schema, and the schema takes policies and scorers from the core and the registry, not
    from the job runner that runs recipes (``pipelines.jobs``, ``run_recipe``)."""
    modules = project_modules()
    below = {"pipelines.recipe_errors": set(),
             "pipelines.recipe_yaml": {"pipelines.recipe_errors"},
             "pipelines.recipe": {"pipelines.recipe_errors", "pipelines.recipe_yaml"}}
    for name, allowed in below.items():
        found = {t for t in imported(name, modules[name], modules)
                 if t.startswith("pipelines.")}
        assert found <= allowed, (name, found - allowed)
