"""Name -> constructor registries (timm style): listing and unknown-name errors come from here."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from kdrun.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str):
        self.kind = kind  # "model", "method", ... (for messages)
        self.group = group  # the config group a user selects it with
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None, obj: T | None = None):
        """`@REG.register()`, `@REG.register("name")` or `REG.register("name", obj)`."""

        def add(o: T) -> T:
            key = name or getattr(o, "__name__")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Take a name out again (a test's own entry, when the test is done)."""
        del self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries, key=_natural_key)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return (
            f"Unknown {self.kind} {name!r}.{hint} Valid {self.kind} names ({self.group}=NAME): "
            f"{', '.join(self.names())}."
        )


def target_class(path: str, base: type, key: str, what: str) -> type:
    """The class a `_target_` names (`mypackage.module.Class`), which must be a subclass of `base`."""
    cls = locate(path, key)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"{key}={path} is not {what}.")
    return cls


def locate(path: str, key: str):
    """The object a dotted path names (`mypackage.module.name`), or a message saying why it cannot be had."""
    import importlib

    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{key}={path} cannot be imported ({type(e).__name__}: {e}). Check the module path, and "
                        f"that its folder is importable (e.g. PYTHONPATH=. when it is in the current "
                        f"directory).") from None


def _natural_key(name: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def call_with_supported(fn: Callable, **kwargs):
    """Call `fn` with the keyword arguments it accepts (dataset-derived shape arguments)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
