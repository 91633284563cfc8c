"""streamsync/cli/exit_codes.py is the only source of exit codes, and README.md lists it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from streamsync.cli import main
from streamsync.cli.exit_codes import EXIT_CODES, EXIT_OK, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = [*sorted((ROOT / "streamsync" / "cli").glob("*.py")),
                ROOT / "streamsync" / "backfill.py", ROOT / "streamsync" / "__main__.py",
                ROOT / "streamsync" / "demo.py"]


def _literal_exits(path: Path, root: Path = ROOT) -> list[str]:
    """`return 1`, `sys.exit(2)`, `exit(0)`, `SystemExit(130)`: an exit code not named."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        value: ast.expr | None = None
        if isinstance(node, ast.Return):
            value = node.value
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("sys.exit", "exit", "SystemExit", "os._exit") and node.args:
                value = node.args[0]
        if isinstance(value, ast.Constant) and type(value.value) is int:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_command_exits_with_a_literal_number() -> None:
    assert [line for path in ENTRY_POINTS for line in _literal_exits(path)] == []


def test_the_check_sees_a_literal_exit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\n\ndef f(x):\n    if x:\n        return EXIT_OK\n    return 2\n\n"
                   "sys.exit(130)\nraise SystemExit(EXIT_USAGE)\n")
    assert _literal_exits(bad, tmp_path) == ["bad.py:6: return 2", "bad.py:8: sys.exit(130)"]


def test_readme_lists_the_table() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", section, flags=re.M))
    assert {int(code) for code in rows} == set(EXIT_CODES)
    for code, (name, meaning) in EXIT_CODES.items():
        assert rows[str(code)] == f"{name}: {meaning}"


def test_help_names_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    for code, (name, _) in EXIT_CODES.items():
        assert f"{code} {name}" in text


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert main(["status", "--frobnicate"]) == EXIT_USAGE
    assert main(["--version"]) == EXIT_OK
