"""The one exception type for bad user input.

Every command-line entry point turns a :class:`ConfigError` into exit code 2 and its message on one
line, so messages must name the bad value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input: an unknown name, a value out of range, an infeasible budget."""


def one_of(field: str, value: object, allowed: Iterable[object]) -> ConfigError:
    """An error for ``value`` not among ``allowed``, e.g. ``method='lorra' is not one of: full, lora``."""
    choices = ", ".join(str(a) for a in allowed)
    return ConfigError(f"{field}={value!r} is not one of: {choices}")
