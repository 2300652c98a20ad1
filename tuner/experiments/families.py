"""Families: one study question asked of several tasks, one registered experiment per task.

A Tune study has one task, and a study's results folder is ``<experiment>-<preset>``, so each
task is its own experiment (its own folder and MLflow experiment) and ``analysis.report FAMILY``
combines the members it finds. Look a family up with :func:`tuner.experiments.get_family`
(importing the package registers every family).
"""

from __future__ import annotations

from search_spaces.registry import Registry

FAMILIES: Registry[tuple[str, ...]] = Registry("experiment family")


def register_family(name: str, members: tuple[str, ...]) -> tuple[str, ...]:
    """Register ``members`` (experiment names) under ``name``; duplicates are refused."""
    if not members:
        raise ValueError(f"family {name!r} needs members")
    return FAMILIES.register(name, tuple(members))


def task_suffix(task: str) -> str:
    """``glue/cola`` -> ``cola``: the part of a task name an experiment name carries."""
    return task.rsplit("/", 1)[-1].replace("-", "_")


__all__ = ["FAMILIES", "register_family", "task_suffix"]
