"""A config value from a fixed set, written by its name on the command line and in files."""
from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """An enum whose members are their own names (`Optimizer.sgd == "sgd"`), printed as the name."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]


def plain(value):
    """A Choice as its plain string, anything else unchanged (for JSON keys and messages)."""
    return value.value if isinstance(value, Choice) else value
