"""The package's layers, read from its import statements (``docs/architecture.md``).

Every ``import`` and ``from ... import`` of the package is parsed (module level and inside
functions alike), and each must point down: a layer imports only from layers below it, and
nothing imports in a circle. The lazy facades (``stackelberg.__getattr__``,
``stackelberg.games.__getattr__``) import by name at run time and are not statements.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stackelberg"

#: The layers, lowest first: a package may import from a lower rank only (and from itself).
LAYERS = {
    "checks": 0,
    "utils": 0,
    "_moved": 0,
    "game": 1,
    "models": 1,
    "data": 2,  # its fixed-block batches come as game.Indexed
    "solvers": 2,
    "solve": 3,
    "stackelberg": 4,  # the package's own __init__: the game API, the solvers, the loop
    "games": 5,
    "unlearnable": 6,
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports (a name imported from a package counts
    as its submodule when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_every_package_has_a_layer() -> None:
    assert {_layer(m) for m in _modules()} <= set(LAYERS)


def test_no_layer_imports_from_a_layer_above_it() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in _graph().items()
        for target in targets
        if _layer(target) != _layer(source) and LAYERS[_layer(target)] >= LAYERS[_layer(source)]
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    # A package's __init__ re-exporting its submodules, which import their siblings through
    # the package, is not a cycle of code: only cycles between modules count.
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in itertools.pairwise(c))]
    assert not real, "\n".join(" -> ".join(c) for c in real)


# -- the moved paths ---------------------------------------------------------------------------


def test_the_old_paths_of_the_application_still_import_and_warn() -> None:
    import stackelberg.unlearnable.training as new

    for old in ("stackelberg.games.unlearnable.training", "stackelberg.cli"):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning) as caught:  # the parent package's warns too
            module = importlib.import_module(old)
        assert any(f"{old} moved to stackelberg" in str(w.message) for w in caught)
        assert module.__name__.startswith("stackelberg.unlearnable")
    # The same module objects, not copies: a class or a monkeypatch is the same either way.
    assert sys.modules["stackelberg.games.unlearnable.training"] is new
    from stackelberg.games.unlearnable.training import GeneratorTraining

    assert GeneratorTraining is new.GeneratorTraining
    with pytest.warns(DeprecationWarning, match="train_preset_generator moved"):
        from stackelberg.unlearnable.presets import train_preset_generator
    from stackelberg.unlearnable.driver import train_preset_generator as moved

    assert train_preset_generator is moved


def test_python_m_the_old_command_module_still_runs() -> None:
    with warnings.catch_warnings():
        result = subprocess.run(
            [sys.executable, "-m", "stackelberg.cli", "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "usage: stackelberg" in result.stdout
