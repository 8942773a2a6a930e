"""The package's shape, held by tests: no import circle (imports inside functions and
under TYPE_CHECKING count), and the code that runs in the spawn helper and the child
loads nothing of the supervisor's (anyio, the host's stores)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "supervisor"

#: modules loaded by the spawn helper and run in the child (helper.py says why they
#: must stay small): none may import what only the supervisor needs
HELPER_SIDE = {"helper", "wire", "init", "_linux", "_named", "mounts"}
SUPERVISOR_ONLY = {"state", "images", "rootfs", "container", "spawn", "cgroups", "confine", "anyio", "trio"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package (or anyio/trio) that ``path`` imports, anywhere."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
                if node.module is None:  # from . import x, y: each may be a module
                    for alias in node.names:
                        found.add(".".join([*base, alias.name]))
                    continue
                found.add(target)
                for alias in node.names:  # from .pkg import module
                    found.add(f"{target}.{alias.name}")
            elif node.module and node.module.split(".")[0] in ("supervisor", "anyio", "trio"):
                found.add(node.module.removeprefix("supervisor.").removeprefix("supervisor"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("anyio", "trio"):
                    found.add(alias.name.split(".")[0])
    return {m.strip(".") for m in found}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
        graph[name] |= {m for m in _imports(path) if m in ("anyio", "trio")}
    return graph


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt in graph and nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


#: the one exception: the helper removes a dead supervisor's cgroups on its way out,
#: when no clone can pay for what it loads any more
AT_EXIT_ONLY = {("helper", "cgroups")}


def test_the_helper_side_loads_nothing_of_the_supervisors() -> None:
    graph = _graph()
    for module in HELPER_SIDE:
        bad = {m for m in graph[module] & SUPERVISOR_ONLY if (module, m) not in AT_EXIT_ONLY}
        assert not bad, (module, bad)
