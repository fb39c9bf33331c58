"""The shape of the code, held by tests: imports run one way (no cycles, counting
imports inside functions), no module imports another's private names, no function
is longer than a screen, and the worker side stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daskmri"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text()))
    return found


MODULES = _modules()


def _imports(name: str, path: Path, tree: ast.Module) -> list[tuple[str, str]]:
    """``(module, imported name)`` for every daskmri import in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""][:1])
            base = base.rstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                edges.append((full, "") if full in MODULES else (base, alias.name))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("daskmri"):
            edges.extend((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            edges.extend((a.name, "") for a in node.names if a.name.startswith("daskmri"))
    return edges


GRAPH = {
    name: {target for target, _ in _imports(name, path, tree) if target != name}
    for name, (path, tree) in MODULES.items()
}


def test_no_import_cycles():
    def reach(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in GRAPH.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    # The package itself only re-exports lazily (PEP 562); its __version__ is a leaf.
    cycles = sorted(
        (a, b) for a, targets in GRAPH.items() for b in targets if b != "daskmri" and a in reach(b)
    )
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{name} imports {target}.{alias}"
        for name, (path, tree) in MODULES.items()
        for target, alias in _imports(name, path, tree)
        if alias.startswith("_") and alias != "__version__" and target != name
    ]
    assert private == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for name, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:] or body  # the docstring does not count
                lines = node.end_lineno - body[0].lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


@pytest.mark.parametrize(
    "module", ["daskmri.parse", "daskmri.store.regions", "daskmri.execute.processes"]
)
def test_the_worker_side_imports_neither_xarray_nor_pandas_nor_distributed(module):
    """What a worker process unpickles to run a chunk task."""
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('xarray', 'pandas', 'distributed') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
