"""The import graph of the project's modules: imports point down, never in a circle.

A reader of a level script should meet only what lies below it (the data, the
discriminators, the training helpers, the metrics it logs); sample.py, evaluate.py,
bench.py and report.py sit on top and use the levels. An import inside a function is
still an import: a cycle hidden in a function body is a cycle. So the graph is read
from the source with `ast` (every `import x` and `from x import y`, at any depth),
not from what Python happens to have loaded.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The project's modules: the top-level files and the experiments (which nobody imports).
FILES = sorted(ROOT.glob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
MODULES = {path.stem for path in ROOT.glob("*.py")}
LEVEL_SCRIPTS = ("level1", "upsample_level")
ABOVE_THE_LEVELS = {"sample", "evaluate", "bench", "report"}


def project_imports(path: Path, modules=MODULES) -> set[str]:
    """Every project module that `path` imports, at module level or inside a function."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    return imported & modules


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}; experiments/x.py is "experiments/x"."""
    return {(path.stem if path.parent == ROOT else f"experiments/{path.stem}"): project_imports(path) - {path.stem}
            for path in FILES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle [a, b, ..., a] of the graph, or None: depth-first search, where meeting a
    module that is still on the current path closes a cycle."""
    on_path, done = [], set()

    def visit(module):
        if module in on_path:
            return on_path[on_path.index(module):] + [module]
        if module in done:
            return None
        on_path.append(module)
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported)
            if cycle:
                return cycle
        on_path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    """The grader of the test below: an import inside a function counts, and a graph
    without a cycle passes."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("import os\n\ndef f():\n    from a import g\n")
    graph = {name: project_imports(tmp_path / f"{name}.py", {"a", "b"}) for name in "ab"}
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert graph["level1"], "the graph was read (level1 imports data, training, ...)"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("script", LEVEL_SCRIPTS)
def test_the_level_scripts_import_only_what_lies_below_them(script):
    imported = import_graph()[script]
    assert not imported & ABOVE_THE_LEVELS, (
        f"{script}.py imports {sorted(imported & ABOVE_THE_LEVELS)}, which sit above the levels")
    allowed = {"data", "flags", "discriminators", "training", "metrics", "level1"}
    assert imported <= allowed, f"{script}.py imports {sorted(imported - allowed)}"
