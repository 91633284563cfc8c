"""Layering rules of docs/design.md §5: the import-linter contracts in pyproject.toml hold on the
tree, and each kind of violation they exist for is caught (checked on a copy with one import
added); runtime/ shows nothing itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "streamsync"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config",
                           str(tree / "pyproject.toml")],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=60)


def test_the_tree_keeps_every_import_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


VIOLATIONS = [
    ("adapters/http.py", "import streamsync.runtime.app", "Layers"),
    ("adapters/http.py", "import streamsync.core.soql", "Adapters import neither"),
    ("config.py", "import streamsync.core.describe_check", "Config is schema only"),
    ("errors.py", "import streamsync.config", "Layers"),
    ("core/ids.py", "import asyncio", "Core does no I/O"),
    ("core/mapping.py", "import streamsync.runtime.flusher", "Layers"),
    ("emulators/salesforce/__init__.py", "import streamsync.errors", "Emulators share no code"),
    ("runtime/app.py", "import streamsync.emulators.iterable", "Only demo.py"),
    ("cli/status.py", "import streamsync.emulators.salesforce", "Only demo.py"),
    ("runtime/status.py", "import streamsync.cli.output", "Layers"),
    ("emulators/iterable/__init__.py", "import streamsync.emulators.salesforce",
     "The two emulators are independent"),
]


@pytest.mark.parametrize(("module", "line", "contract"), VIOLATIONS,
                         ids=[f"{m}:{line.split()[-1]}" for m, line, _ in VIOLATIONS])
def test_a_forbidden_import_is_caught(tmp_path: Path, module: str, line: str,
                                      contract: str) -> None:
    shutil.copytree(ROOT / "streamsync", tmp_path / "streamsync",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "streamsync" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith(" BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout


def test_runtime_shows_nothing_itself() -> None:
    """Presentation lives in streamsync/cli/: runtime returns data and never writes to the
    console nor asks whether it is a terminal."""
    words = re.compile(r"(?<![\w.])print\(|sys\.stdout|sys\.stderr|isatty|\\r")
    bad = [
        (str(p), found.group())
        for p in sorted((PKG / "runtime").rglob("*.py"))
        for found in words.finditer(p.read_text(encoding="utf-8"))
    ]
    assert bad == []
    assert words.search("x = 1\nprint(x)") and not words.search("fingerprint(d)")
