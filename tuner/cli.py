"""The one wrapper every command-line entry point runs under.

Bad user input (:class:`ConfigError`) becomes one line on stderr and exit code 2, the code
argparse already uses for malformed arguments, so scripts can tell "you asked for something
wrong" (2) from "it broke" (1, with a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from search_spaces.errors import ConfigError

USAGE_ERROR = 2  # argparse's exit code for bad arguments; ours for bad values
INTERRUPTED = 130  # a shell's code for a command ended by Ctrl-C (128 + SIGINT)


class Interrupted(KeyboardInterrupt):
    """A study stopped by SIGINT with trials unfinished (Tune saved its state and returned):
    a KeyboardInterrupt, so the MLflow parent run is closed as KILLED; the message says how to
    finish it."""


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` (default ``sys.argv[1:]``) and return its exit code; a ConfigError
    prints ``error: <message>`` as a single line on stderr and returns 2, an interrupted study
    ``interrupted: <message>`` and 130."""
    try:
        return main(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return INTERRUPTED


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE ...`` on ``parser``: several pairs after one ``--set`` (as Hydra users
    type them), ``--set`` repeated, or both; all land in ``args.set`` for :func:`parse_sets`."""
    parser.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=help
    )


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set`` items: ``["rank=8", "sources=a,b"]`` -> ``{"rank": "8", "sources": "a,b"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item!r} is not key=value (--set takes every word up to the next "
                "option: put other arguments before it)"
            )
        out[key.strip()] = value.strip()
    return out
