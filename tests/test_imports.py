"""The house holds together: every module of ``bot/`` and ``runner/`` imports on its own,
no two modules import each other (directly or round a longer loop, type-only imports
included), and the bot reaches neither the deblending room nor the judge."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "runner")
NOT_FOR_THE_BOT = ("runner.deblend", "runner.judge")


def modules() -> dict[str, Path]:
    """Every importable module of the two packages (folders without ``__init__.py``, such
    as the worker files copied into a deblender's environment, are not modules)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            folders = [ROOT.joinpath(*parts[:depth]) for depth in range(1, len(parts))]
            if all((folder / "__init__.py").is_file() for folder in folders):
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                found[name] = path
    return found


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return True
    return False


def _ours(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours a dotted name is, or lives in (None: not ours)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(known: dict[str, Path], *, lazy: bool) -> dict[str, set[str]]:
    """Module → the modules of ours it imports: at load time (type-only ones included),
    and with ``lazy`` those inside functions too. ``from a import b`` names module
    ``a.b`` when there is one, else ``a``; importing a module loads its packages too, but
    a module's own packages are not counted as its imports."""
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 2)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if not lazy and _in_function(node, parents):
                continue
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            else:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                named = [f"{base}.{alias.name}" for alias in node.names]
            for target in filter(None, (_ours(n, known) for n in named)):
                parts = target.split(".")
                targets |= {".".join(parts[:depth]) for depth in range(1, len(parts) + 1)}
        graph[name] = (targets & known.keys()) - own
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import one another round a loop (Tarjan's strongly
    connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_one_another_round_a_loop() -> None:
    assert circles(imports(modules(), lazy=False)) == []


def test_the_bot_reaches_neither_deblend_nor_judge() -> None:
    """Through any chain of imports, lazy ones included."""
    graph = imports(modules(), lazy=True)
    reached = {name: name for name in graph if name.split(".")[0] == "bot"}
    todo = list(reached)
    while todo:
        node = todo.pop()
        for nxt in graph[node] - reached.keys():
            reached[nxt] = reached[node]  # reached from that module of the bot
            todo.append(nxt)
    banned = tuple(f"{room}." for room in NOT_FOR_THE_BOT)
    assert {name: via for name, via in reached.items() if f"{name}.".startswith(banned)} == {}


CHECK = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("bot", "runner")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module imported first, with no module of ours loaded yet: a circle shows up
    as an ImportError in whichever module it is entered from."""
    names = [name for name in modules() if not name.endswith("__main__")]
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(names)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    assert json.loads(done.stdout) == {}
