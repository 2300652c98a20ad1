"""Param values as MLflow stores them (text) and back: the one conversion both loaders share."""

from __future__ import annotations

import re
from typing import Any

PARAM_TEXT_LIMIT = 500  # MLflow keeps the first 500 characters of a param (tuner.tracking)
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")


def param_text(value: Any) -> str:
    """A config value as MLflow stores it (the same rule as ``tuner.tracking``'s param logging)."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)[:PARAM_TEXT_LIMIT]


def parse_param(text: str) -> Any:
    """The value behind a param's text: None, bool, int, float, else the text itself
    (a comma-separated list such as ``sources`` stays text)."""
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text
