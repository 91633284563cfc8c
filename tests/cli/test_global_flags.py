"""Every command takes -c/--config, --log-level and --log-json the same way, before or after its
name (streamsync/cli/options.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streamsync.cli import build_parser, main
from streamsync.cli.exit_codes import EXIT_FAILED, EXIT_USAGE

# What each command needs besides the global flags to parse at all.
REQUIRED: dict[str, list[str]] = {
    "replay": ["--channel", "/data/LeadChangeEvent", "--from", "new"],
    "store": ["--to", "postgresql://sync@db.internal:5432/streamsync"],
}


def _commands() -> list[list[str]]:
    """Every leaf command of the real parser (`dlq list`, not `dlq`), found by walking it, so a
    command added later is covered without editing this test."""
    def leaves(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [path]
        return [leaf for name, child in subs[0].choices.items()
                for leaf in leaves(child, [*path, name])]
    return leaves(build_parser(), [])


COMMANDS = _commands()


def config_error_code(command: list[str]) -> int:
    """2, except for `plan`, whose 2 means "changes pending" (cli/exit_codes.py)."""
    return EXIT_FAILED if command == ["plan"] else EXIT_USAGE


def test_every_command_is_there() -> None:
    assert {" ".join(c) for c in COMMANDS} == {
        "run", "plan", "backfill", "replay", "status", "dlq list", "dlq retry", "dlq purge",
        "store migrate", "check-config", "demo"}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("where", ["before", "after", "between"])
@pytest.mark.parametrize("flag", ["-c", "--config"])
def test_global_flags_anywhere_mean_the_same(command: list[str], where: str, flag: str) -> None:
    flags = [flag, "my.toml", "--log-level", "DEBUG", "--log-json"]
    rest = REQUIRED.get(command[0], [])
    if where == "before":
        argv = [*flags, *command, *rest]
    elif where == "after":
        argv = [*command, *rest, *flags]
    else:  # after the first word: `dlq -c x list`, `status -c x`
        argv = [command[0], *flags, *command[1:], *rest]
    args = build_parser().parse_args(argv)
    assert (args.config, args.log_level, args.log_json) == ("my.toml", "debug", True)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_flag_before_the_command_is_not_reset_by_it(command: list[str]) -> None:
    args = build_parser().parse_args(
        ["-c", "first.toml", "--log-level", "error", *command, *REQUIRED.get(command[0], [])])
    assert (args.config, args.log_level, args.log_json) == ("first.toml", "error", False)
    later = build_parser().parse_args(
        ["-c", "first.toml", *command, *REQUIRED.get(command[0], []), "-c", "later.toml"])
    assert later.config == "later.toml"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != ["demo"]], ids=" ".join)
@pytest.mark.parametrize("before", [True, False])
def test_every_command_reads_the_config_it_is_given(
    command: list[str], before: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSYNC_CONFIG", str(tmp_path / "from-env.toml"))
    missing = tmp_path / "given.toml"
    flags = ["-c", str(missing)]
    rest = REQUIRED.get(command[0], [])
    argv = [*flags, *command, *rest] if before else [*command, *rest, *flags]
    assert main(argv) == config_error_code(command)
    err = capsys.readouterr().err
    assert f"cannot read config file {missing}" in err and "from-env" not in err


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != ["demo"]], ids=" ".join)
def test_without_the_flag_every_command_reads_streamsync_config(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from_env = tmp_path / "from-env.toml"
    monkeypatch.setenv("STREAMSYNC_CONFIG", str(from_env))
    assert main([*command, *REQUIRED.get(command[0], [])]) == config_error_code(command)
    assert f"cannot read config file {from_env}" in capsys.readouterr().err


def test_demo_refuses_a_config_it_would_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "-c", "config.toml"]) == EXIT_USAGE
    assert "--config does not apply" in capsys.readouterr().err
