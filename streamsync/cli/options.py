"""The global flags every command takes (before or after its name) and their shared steps."""

from __future__ import annotations

import argparse
import os
from typing import Any, Final

from streamsync.config import Config, load_config
from streamsync.logs import setup_logging

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
CONFIG_ENV: Final = "STREAMSYNC_CONFIG"
DEFAULT_CONFIG: Final = "config.toml"
ADMIN_LOG_LEVEL: Final = "warning"
"""Commands other than `run` log warnings and errors only, so their output stays readable."""


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-c/--config, --log-level and --log-json. A command's parser repeats them with SUPPRESS
    defaults, so `streamsync -c x status` and `streamsync status -c x` mean the same and a flag
    given before the command is not reset by the command's parser."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "-c", "--config", metavar="PATH", default=default,
        help=f"config file (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")
    parser.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, default=default,
        help="level of the structured logs on stderr (default: [logging].level for `run`, "
             "error for `check-config`, else warning)")
    parser.add_argument(
        "--log-json", action="store_true", default=False if top else default,
        help="log JSON lines even on a terminal (the default off a terminal)")


def config_given(args: argparse.Namespace) -> str | None:
    """The -c/--config value given on the command line, if any."""
    value: str | None = getattr(args, "config", None)
    return value


def config_path(args: argparse.Namespace) -> str:
    """-c/--config, else $STREAMSYNC_CONFIG, else ./config.toml."""
    return config_given(args) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def load(args: argparse.Namespace, *, require_secrets: bool) -> Config:
    """The config named by `config_path`, with its secrets from the environment."""
    return load_config(config_path(args), os.environ, require_secrets=require_secrets)


def setup_command_logging(args: argparse.Namespace, default: str,
                          config: Config | None = None) -> None:
    """--log-level, else [logging].level of `config`, else `default`; JSON with --log-json,
    else [logging].format of `config`, else JSON off a terminal."""
    level: str | None = getattr(args, "log_level", None)
    json_flag = bool(getattr(args, "log_json", False))
    if level is None:
        level = config.logging.level.lower() if config is not None else default
    use_json: bool | None = True if json_flag else None
    if config is not None and not json_flag and config.logging.format != "auto":
        use_json = config.logging.format == "json"
    setup_logging(level, json=use_json)


def positive_int(text: str) -> int:
    """A whole number of at least 1, as an argparse `type`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


Subparsers = argparse._SubParsersAction  # noqa: SLF001 - argparse's own name for the type
Handler = Any  # Callable[[argparse.Namespace], int]; argparse stores it untyped


def add_command(subparsers: Subparsers[argparse.ArgumentParser], name: str, *, help_text: str,
                description: str, handler: Handler, log_level: str = ADMIN_LOG_LEVEL,
                **kwargs: Any) -> argparse.ArgumentParser:
    """A command's sub-parser with the global flags; `handler(args) -> exit code` runs it and
    `log_level` is its default log level."""
    parser = subparsers.add_parser(name, help=help_text, description=description, **kwargs)
    add_global_options(parser, top=False)
    parser.set_defaults(handler=handler, default_log_level=log_level)
    return parser
