"""`streamsync check-config`: the config checked against Salesforce and Iterable."""

from __future__ import annotations

import argparse
import asyncio

from streamsync.cli.exit_codes import EXIT_FAILED, EXIT_OK
from streamsync.cli.options import Subparsers, add_command, config_path, load
from streamsync.cli.output import err, json_text, out, table
from streamsync.runtime.check_config import CheckReport, check_config


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(
        subparsers, "check-config",
        help_text="validate the config against Salesforce and Iterable",
        description="Load the config and its secrets, log in to Salesforce, check every mapped "
                    "field, relationship, filter field and fan-out against the objects' "
                    "describes (and consent opt-out fields), try the Iterable API key, and "
                    "check consent's channel, message type and list ids in Iterable. Prints "
                    "every problem at once; exit 1 if any.",
        handler=run, log_level="error")  # it prints its warnings itself
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    config = load(args, require_secrets=True)
    report = asyncio.run(check_config(config))
    out(json_text(report.as_dict()) if args.json else render_check(report))
    if not report.ok:
        err(f"check-config: {len(report.problems)} problem(s) found in {config_path(args)}")
        return EXIT_FAILED
    return EXIT_OK


def render_check(report: CheckReport) -> str:
    """The human view of a check-config report."""
    lines = [f"ok       {line}" for line in report.passed]
    lines += [f"warning  {line}" for line in report.warnings]
    lines += [f"skipped  {line}" for line in report.skipped]
    if report.problems:
        lines.append(f"\n{len(report.problems)} problem(s):")
        lines.append(table(["where", "path", "problem"],
                           [[p.subject or p.component, p.path, p.message]
                            for p in report.problems], max_cell=None))
    else:
        lines.append("configuration ok")
    return "\n".join(lines) + "\n"
