"""Injected faults, a testing aid: ``--set fault=exit@2:trial=1`` makes a trial fail on purpose.

Pure parsing (no torch), so a command checks a fault spec before it imports the training stack.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from search_spaces.errors import ConfigError


class Fault(NamedTuple):
    """A parsed ``fault`` spec (a testing aid): how a trial fails, at which evaluation, which trial."""

    mode: str  # "raise" (an exception) or "exit" (the process dies: os._exit)
    at: int  # the evaluation (1-based) at which the first attempt fails, before reporting it
    trial: int | None = None  # the study's trial index (Optuna's trial number); None = every trial


def parse_fault(spec: str | None) -> Fault | None:
    """``"raise@2"`` -> ``Fault("raise", 2)``, ``"exit@2:trial=1"`` -> ``Fault("exit", 2, 1)``;
    None for no fault; bad specs are refused."""
    if not spec:
        return None
    head, targeted, target = str(spec).partition(":")
    mode, _, at = head.partition("@")
    key, _, index = target.partition("=")
    valid = mode in ("raise", "exit") and at.isdigit() and int(at) >= 1
    if not valid or (targeted and (key != "trial" or not index.isdigit())):
        raise ConfigError(
            f"fault={spec!r} must be raise@N or exit@N, optionally followed by :trial=K "
            "(N = an evaluation number >= 1, K = a trial index >= 0)"
        )
    return Fault(mode, int(at), int(index) if targeted else None)


def fault_for_trial(spec: str | None, index: int) -> str | None:
    """The fault that trial number ``index`` of a study carries: ``"exit@2"`` for every trial,
    ``"exit@2:trial=1"`` only for trial 1 (as ``"exit@2"``), None for the others."""
    fault = parse_fault(spec)
    if fault is None or fault.trial not in (None, index):
        return None
    return f"{fault.mode}@{fault.at}"


def inject_fault(spec: str | None, evaluation: int) -> None:
    """Testing aid: ``fault="raise@N"`` raises, ``"exit@N"`` kills the process (``os._exit``)
    at evaluation N, before it is reported, on a trial's first attempt only (a restored
    attempt runs through, so a restart from the last checkpoint can be checked). A study's
    space gives a targeted fault (``:trial=K``) to trial K alone (:func:`fault_for_trial`)."""
    fault = parse_fault(spec)
    if fault is None or fault.at != evaluation:
        return
    if fault.mode == "exit":
        os._exit(17)
    raise RuntimeError(f"injected fault at evaluation {evaluation}")
