"""A small explicit registry: one per axis of variation (methods, tasks, backbones, experiments)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Generic, TypeVar

from search_spaces.errors import ConfigError, one_of

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_./-]*$")


class Registry(Generic[T]):
    """Name -> entry, filled by :meth:`register`; duplicates and malformed names are refused."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if not _NAME.match(name):
            raise ValueError(f"{self.axis} name {name!r} must match {_NAME.pattern}")
        if name in self._entries:
            raise ValueError(f"{self.axis} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise one_of(self.axis, name, sorted(self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Registry", "ConfigError"]
