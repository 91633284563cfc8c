"""Layering rules of docs/design.md §5, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "streamsync"
IO_MODULES = {"aiohttp", "aiosqlite", "asyncio", "sqlite3", "socket", "uvloop", "aiosfstream"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_emulators_import_nothing_from_the_product() -> None:
    bad = [
        (str(p), name)
        for p in _modules("emulators")
        for name in _imports(p)
        if name.startswith("streamsync") and not name.startswith("streamsync.emulators")
    ]
    assert bad == []


def test_product_does_not_import_emulators() -> None:
    allowed = {PKG / "demo.py"}
    bad = [
        (str(p), name)
        for p in PKG.rglob("*.py")
        if "emulators" not in p.parts and p not in allowed
        for name in _imports(p)
        if name.startswith("streamsync.emulators")
    ]
    assert bad == []


def test_core_is_pure() -> None:
    bad = [
        (str(p), name)
        for p in _modules("core")
        for name in _imports(p)
        if name.split(".")[0] in IO_MODULES
    ]
    assert bad == []


def test_nothing_below_the_command_line_imports_it() -> None:
    bad = [
        (str(p), name)
        for sub in ("core", "adapters", "runtime")
        for p in _modules(sub)
        for name in _imports(p)
        if name == "streamsync.cli" or name.startswith("streamsync.cli.")
    ]
    assert bad == []


def test_runtime_shows_nothing_itself() -> None:
    """Presentation lives in streamsync/cli/: runtime returns data and never writes to the
    console nor asks whether it is a terminal."""
    bad = [
        (str(p), word)
        for p in _modules("runtime")
        for word in ("print(", "sys.stdout", "sys.stderr", "isatty", "\\r")
        if word in p.read_text(encoding="utf-8")
    ]
    assert bad == []
