"""The package's shape, read from the source with `ast` (nothing is imported): modules small enough to read in
one sitting, no import cycle, and layers that import only downward. docs/architecture.md lists the same
layers; a test keeps the two equal. And the tests' own shape: a test module imports no other test module, and
no helper from conftest (shared helpers live in tests/contracts.py)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mtlrun"
TESTS = REPO / "tests"
MAX_LINES = 400

# Bottom to top. A module may import from its own layer and the layers below, never from a layer above. An
# entry names a module, or a package and everything under it; `mtlrun` is the package's own __init__ only.
LAYERS = [
    ("foundation", ("mtlrun", "mtlrun.errors", "mtlrun.checks", "mtlrun.distributed", "mtlrun.schema", "mtlrun.hub",
                    "mtlrun.untrusted_files",
                    "mtlrun.moved_modules")),
    ("data", ("mtlrun.data",)),
    ("tasks", ("mtlrun.metrics", "mtlrun.sequence_metrics", "mtlrun.crf", "mtlrun.detection", "mtlrun.tasks",
               "mtlrun.task_selection")),
    ("models", ("mtlrun.models",)),
    ("weighting", ("mtlrun.weighting",)),
    ("engine", ("mtlrun.engine", "mtlrun.diagnostics")),
    ("assembly", ("mtlrun.config", "mtlrun.instantiate", "mtlrun.validation", "mtlrun.overrides", "mtlrun.trust",
                  "mtlrun.build", "mtlrun.objective", "mtlrun.inference")),
    ("commands", ("mtlrun.train", "mtlrun.eval", "mtlrun.predict", "mtlrun.export", "mtlrun.sweep", "mtlrun.report",
                  "mtlrun.affinity", "mtlrun.cli", "mtlrun.__main__")),
]

# Function-level imports that close an import cycle, each with the reason it is tolerated. Every entry is a
# debt to pay off, not a pattern to copy; a top-level import never qualifies.
# None today: models.base -> models.multimodal went when MultiModalInput moved into models/base.py.
LAZY_CYCLE_ALLOWED: dict[tuple[str, str], str] = {}

# Modules over MAX_LINES that are being split right now (path prefixes: the module and the modules it is
# split into); the strict test below ignores them, the xfail one does not. Remove an entry once it is done.
def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The mtlrun modules an import statement names (`from a import b`: a.b where b is a module, else a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "mtlrun"]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer if modules()[importer].name == "__init__.py" else importer.rpartition(".")[0]
        package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        base = f"{package}.{base}" if base else package
    if base.split(".")[0] != "mtlrun":
        return []
    return sorted({f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names})


@cache
def imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, lazy) for every import of an mtlrun module; lazy: inside a function."""
    found = []

    def visit(node, importer: str, lazy: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((importer, target, child.lineno, lazy) for target in resolve(importer, child)
                             if target != importer)
            visit(child, importer, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for name, path in modules().items():
        visit(ast.parse(path.read_text(), str(path)), name, False)
    return found


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "mtlrun" and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = index, len(entry)
    return best


def oversized() -> dict[str, int]:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in modules().values()}
    return {path: n for path, n in sizes.items() if n > MAX_LINES}


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"put these modules in a layer (LAYERS here and docs/architecture.md): {missing}"


def test_layers_import_only_downward():
    upward = [f"{importer} (layer {LAYERS[layer_of(importer)][0]}) imports {target} (layer "
              f"{LAYERS[layer_of(target)][0]}), line {line}{' (in a function)' if lazy else ''}"
              for importer, target, line, lazy in imports()
              if target in modules() and layer_of(target) > layer_of(importer)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for importer, target, _, lazy in imports():
        if target in graph and not (lazy and (importer, target) in LAZY_CYCLE_ALLOWED):
            graph[importer].add(target)
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles (a function-level import counts too): {cycles}"


def test_the_allowed_lazy_imports_are_lazy_and_still_needed():
    lazy = {(i, t) for i, t, _, is_lazy in imports() if is_lazy}
    eager = {(i, t) for i, t, _, is_lazy in imports() if not is_lazy}
    for pair in LAZY_CYCLE_ALLOWED:
        assert pair in lazy and pair not in eager, f"{pair}: no longer a function-level import; drop the entry"


# Libraries a module imports in the function that uses them, never with the module: every mtlrun command imports
# most of mtlrun, and these cost seconds of start-up that a run without their feature should not pay (importing
# torchvision.ops imports torch._dynamo: the imports of a train run took 6.4-7.3 s of CPU with it, 2.9-3.3 s
# without; `mtlrun eval` and `predict` never import it now, a train run when torch.optim builds its optimizer).
IMPORTED_WHERE_USED = ("torchvision",)


def import_time_statements(tree: ast.Module):
    """The statements that run when the module is imported: its own, and those inside its module-level if / try
    / with / for blocks and class bodies; not function bodies, which run when called."""
    stack = list(reversed(tree.body))  # in file order
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack += reversed([child for child in ast.iter_child_nodes(node)
                               if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case))])


def test_slow_libraries_are_imported_where_they_are_used():
    eager = []
    for name, path in modules().items():
        for node in import_time_statements(ast.parse(path.read_text(), str(path))):
            named = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            eager += [f"{name}, line {node.lineno}: {n}" for n in named if n.split(".")[0] in IMPORTED_WHERE_USED]
    assert not eager, "import these inside the functions that use them:\n" + "\n".join(eager)


def test_no_module_over_400_lines():
    assert not oversized(), f"modules over {MAX_LINES} lines: {oversized()}"


def test_docs_list_the_same_layers():
    text = (REPO / "docs" / "architecture.md").read_text()
    listed = [(m["name"], tuple(re.findall(r"`([\w.]+)`", m["modules"])))
              for m in re.finditer(r"^\d+\. \*\*(?P<name>\w+)\*\*: (?P<modules>.+)$", text, re.M)]
    assert listed == LAYERS


def test_no_test_module_imports_another_or_conftest():
    """A test module that imports another runs, and couples to, the other's module-level code; shared code
    goes in tests/contracts.py (fixtures and hooks in conftest.py, which pytest loads itself)."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # relative: a test folder is no package, so test code
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top.startswith("test_") or top in ("conftest", ""):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: imports {name}")
    assert not found, "test modules import test code (move what they share into tests/contracts.py):\n" + \
        "\n".join(found)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit to worry about)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                components.append(component)
    return components
