"""The layer rule, read from the code: imports point down only, no circles, no private names across
modules. Layers, top to bottom: entry (`cli`, `__main__`, the lazy `cotdistill/__init__.py`) >
`run/` > stages (`generate/ filter/ train/ evaluate/ compress/`) > domain > plumbing. Imports inside
functions count. See docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cotdistill"
ENTRY = {"cotdistill", "cotdistill.cli", "cotdistill.__main__"}
STAGES = {"generate", "filter", "train", "evaluate", "compress", "synthesize"}
DOMAIN = {"backends", "cards", "losses", "topk_store", "answers", "problems", "traces", "prompts",
          "models", "textstats"}
# `reasoning` (the <think> markers: split, join) imports nothing of ours and `records.Message`
# folds a turn's `reasoning_content` with it, so it sits with the records.
PLUMBING = {"records", "config", "errors", "infra", "reasoning"}
# The one sideways import the design allows: evaluate samples with generate's sampling fields.
SIDEWAYS_ALLOWED = {("cotdistill.evaluate.config", "cotdistill.generate.config")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> tuple[int, str]:
    """(rank, group): higher ranks may import lower ones, and a group may import itself."""
    if module in ENTRY:
        return 5, "entry"
    top = module.split(".")[1]
    if top == "run":
        return 4, "run"
    if top in STAGES:
        return 3, top
    if top in DOMAIN:
        return 2, "domain"
    if top in PLUMBING:
        return 1, "plumbing"
    raise AssertionError(f"{module} belongs to no layer: add it to one in tests/test_layers.py")


def imports(path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every cotdistill import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        ours = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cotdistill")
        if ours and isinstance(node, ast.ImportFrom):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:  # `from cotdistill.x import submodule`
                    found.append((sub, [], node.lineno))
                else:
                    found.append((node.module, [alias.name], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.startswith("cotdistill")]
    return found


def graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {name: set() for name in mods}
    private = []
    for name, path in mods.items():
        for target, names, line in imports(path, set(mods)):
            if target != name:
                edges[name].add(target)
            private += [f"{path.name}:{line} takes {n} from {target}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    edges, _ = graph()
    edges.pop("cotdistill", None)  # the lazy public face may import everything
    assert cycles(edges) == []


def test_imports_point_down_only():
    edges, _ = graph()
    wrong = []
    for source, targets in edges.items():
        if source == "cotdistill":
            continue
        rank, group = layer(source)
        for target in targets:
            if target == "cotdistill":
                wrong.append(f"{source} imports the package face")
                continue
            other_rank, other_group = layer(target)
            upward = other_rank > rank
            sideways = other_rank == rank == 3 and other_group != group
            if (upward or sideways) and (source, target) not in SIDEWAYS_ALLOWED:
                wrong.append(f"{source} -> {target}")
    assert wrong == []


def test_no_private_name_crosses_a_module():
    _, private = graph()
    assert private == []


def test_the_checks_see_a_circle_and_an_upward_import():
    # The rule's own test: a circle and an upward arrow planted in a copy of the graph are found.
    edges = {"cotdistill.records": {"cotdistill.run.plan"},
             "cotdistill.run.plan": {"cotdistill.records"}}
    assert cycles(edges) == [["cotdistill.records", "cotdistill.run.plan"]]
    assert layer("cotdistill.records")[0] < layer("cotdistill.run.plan")[0]


def test_tests_take_shared_helpers_from_tests_helpers_only():
    # Tests mirror the package; what several test files share lives in tests/helpers/, so no
    # test file imports another (a helper moved with its test would break the importer).
    tests = PACKAGE.parent / "tests"
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if (module or "").startswith("tests.") and not module.startswith("tests.helpers"):
                wrong.append(f"{path.relative_to(tests)}:{node.lineno} imports {module}")
    assert wrong == []
