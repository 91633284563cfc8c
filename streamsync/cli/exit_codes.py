"""The exit codes of every `streamsync` command: this table is their only source.

README.md's Commands section lists the same table; tests/cli/test_exit_codes.py checks both that
it does and that no command returns a code that is not named here.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CHANGES: Final = 2
"""`plan` only: applying the config would change something (terraform plan
-detailed-exitcode); `plan` reports its own usage and config errors as EXIT_FAILED instead."""
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final[dict[int, tuple[str, str]]] = {
    EXIT_OK: ("done", "the command did what it was asked (a backfill already finished is done)"),
    EXIT_FAILED: ("failed", "plan could not plan (any error, its usage and config errors "
                            "included), check-config found problems, the service stopped on "
                            "a fatal error, a backfill could not write (the message says what "
                            "to do), the demo's verification failed, or Salesforce or Iterable "
                            "failed the command"),
    EXIT_USAGE: ("usage or configuration error (plan: changes pending)",
                 "a bad option or value, an unknown channel or reason, an invalid config.toml or "
                 "a missing secret; for `plan` only, applying the config would change something "
                 "(like terraform plan -detailed-exitcode), and `plan` reports its own usage and "
                 "configuration errors as 1"),
    EXIT_INTERRUPTED: ("interrupted", "by Ctrl-C or SIGTERM (a backfill keeps its checkpoints: "
                                      "run it again with --resume)"),
}
"""Code → (short name, what it means)."""


def exit_code_of(service_code: int) -> int:
    """The exit code of a service that stopped with `service_code` (0 clean, else failed)."""
    return EXIT_OK if service_code == 0 else EXIT_FAILED


def summary() -> str:
    """One line per code, for --help."""
    return ", ".join(f"{code} {name}" for code, (name, _) in EXIT_CODES.items())
