"""The one exception type for bad user input.

Every command-line entry point turns a :class:`ConfigError` into exit code 2 and its message on one
line, so messages must name the bad value and what is allowed, and suggest the closest names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CLOSE_CUTOFF = 0.6  # difflib's default: "lorra" -> "lora", "minilm" -> "minilm-l6", not "tiny-bert"
MAX_SUGGESTIONS = 3


class ConfigError(ValueError):
    """Bad user input: an unknown name, a value out of range, an infeasible budget."""


def close_names(value: object, allowed: Iterable[object]) -> list[str]:
    """The names in ``allowed`` closest to ``value``, best first (none when nothing is close)."""
    names = [str(a) for a in allowed]
    text = str(value)
    close = difflib.get_close_matches(text, names, n=MAX_SUGGESTIONS, cutoff=CLOSE_CUTOFF)
    # a name that merely extends or shortens the value ("minilm" -> "minilm-l6") counts too
    extended = [n for n in names if len(text) > 1 and (n.startswith(text) or text.startswith(n))]
    return list(dict.fromkeys([*close, *extended]))[:MAX_SUGGESTIONS]


def did_you_mean(value: object, allowed: Iterable[object]) -> str:
    """``"; did you mean lora?"`` for the closest names in ``allowed``, or ``""``: the tail of
    every message about an unknown name."""
    close = close_names(value, allowed)
    if not close:
        return ""
    return f"; did you mean {' or '.join(close)}?"


def one_of(field: str, value: object, allowed: Iterable[object]) -> ConfigError:
    """An error for ``value`` not among ``allowed``, e.g.
    ``method='lorra' is not one of: full, lora; did you mean lora?``."""
    allowed = list(allowed)
    choices = ", ".join(str(a) for a in allowed)
    return ConfigError(f"{field}={value!r} is not one of: {choices}{did_you_mean(value, allowed)}")
