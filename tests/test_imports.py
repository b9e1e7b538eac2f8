"""pirl's imports run one way: the module graph read from the source (ast, no import executed) has
no circle, simulator code never imports JAX, and no function imports a pirl module (a late import
of pirl would only hide a circle; late imports of optional heavy dependencies are fine).

Edges: every import statement outside a function body (module level, including ``if`` blocks and
class bodies). ``from pirl.a import b`` points at the module pirl.a.b when b is one, else at
pirl.a. Importing pirl.a.b also runs pirl/a/__init__.py, but that edge is left out, as import
analysers (grimp, import-linter) do: a package's __init__ that re-exports its submodules' names
(pirl.checkpoints) is not a circle.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pirl"
JAX_FAMILY = {"jax", "jaxlib", "flax", "optax", "orbax", "chex"}

# Functions allowed to import a pirl module late: {(module, function): why}. Keep it empty.
LATE_PIRL_IMPORTS: dict[tuple[str, str], str] = {}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The modules an import statement in ``module`` names (pirl's resolved to the module files)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def walk(tree: ast.AST, function: str | None = None):
    """(import statement, enclosing function name or None) for every import in the tree."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, function
        inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
        yield from walk(child, "<lambda>" if isinstance(child, ast.Lambda) else inner)


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, enclosing function or None, line) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    return [(name, fn, node.lineno) for node, fn in walk(tree) for name in imported(node, module)]


def graph() -> dict[str, set[str]]:
    """pirl module → the pirl modules it imports outside functions."""
    return {m: {name for name, fn, _ in imports_of(m) if fn is None and name in MODULES} for m in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle [a, b, ..., a] of the directed graph, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond


def test_relative_and_submodule_imports_resolve():
    node = ast.parse("from pirl.checkpoints import openpi, load_openpi").body[0]
    assert imported(node, "pirl.train") == ["pirl.checkpoints.openpi", "pirl.checkpoints"]
    node = ast.parse("from . import base").body[0]
    assert imported(node, "pirl.envs.pool") == ["pirl.envs.base"]
    node = ast.parse("from .validation import CheckpointError").body[0]
    assert imported(node, "pirl.checkpoints") == ["pirl.checkpoints.validation"]


def test_graph_sees_the_known_edges():
    edges = graph()
    # A checked sample, so that an empty or broken graph cannot pass the acyclicity test.
    assert {"pirl.runsetup", "pirl.eval", "pirl.sft", "pirl.cli"} <= edges["pirl.train"]
    assert "pirl.runsetup" in edges["pirl.eval"] and "pirl.runsetup" in edges["pirl.sft"]
    assert "pirl.envs.worker" in edges["pirl.envs.pool"]
    assert "pirl.checkpoints.remote" in edges["pirl.checkpoints.openpi"]


def test_module_graph_is_acyclic():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " → ".join(cycle)


def in_envs(module: str) -> bool:
    """Whether ``module`` is pirl.envs or inside it (not merely a name that starts the same)."""
    return module == "pirl.envs" or module.startswith("pirl.envs.")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if in_envs(m)))
def test_simulator_code_never_imports_jax(module):
    for name, _, line in imports_of(module):  # function-local imports included
        where = f"{MODULES[module].relative_to(ROOT)}:{line}"
        assert name.split(".")[0] not in JAX_FAMILY, f"{where} imports {name}"
        if name.split(".")[0] == "pirl":  # pirl code outside envs/ brings JAX with it
            assert in_envs(name), f"{where} imports {name}"


def test_no_function_imports_pirl_modules():
    unexpected = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {name} inside {fn}()"
        for m in MODULES
        for name, fn, line in imports_of(m)
        if fn is not None and name.split(".")[0] == "pirl" and (m, fn) not in LATE_PIRL_IMPORTS
    ]
    assert not unexpected, "late pirl imports (import at module level instead):\n" + "\n".join(unexpected)
