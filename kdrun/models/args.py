"""Range checks of model constructor arguments, shared by the zoo's constructors.

A constructor checks its own arguments with these before it builds anything; `build_model` turns the
error into a message that names the config key (`student.dropout=1.5: student=mlp takes ...`), since
only it knows the model's role. Types are the schema's (kdrun.schema.models, from the constructors' signatures).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from kdrun.errors import UserError


class ModelArgError(UserError):
    """A constructor argument outside the values the model takes."""

    def __init__(self, arg: str, value: Any, expected: str):
        super().__init__(f"{arg}={show(value)}: expected {expected}.")
        self.arg, self.value, self.expected = arg, value, expected


def show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def check(ok: bool, arg: str, value: Any, expected: str) -> None:
    if not ok:
        raise ModelArgError(arg, value, expected)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def probability(arg: str, value: float) -> None:
    """A dropout rate: 1 would zero every unit (a network that cannot learn)."""
    check(0 <= value < 1, arg, value, "a dropout probability in [0, 1)")


def count(arg: str, value: int, minimum: int = 1) -> None:
    check(_is_int(value) and value >= minimum, arg, value, f"an integer of {minimum} or more")


def counts(arg: str, values: Iterable[int], minimum: int = 1, length: Optional[int] = None,
           what: str = "widths") -> None:
    values = list(values)
    size = f"{length} " if length is not None else ""
    check((length is None or len(values) == length) and all(_is_int(v) and v >= minimum for v in values),
          arg, values, f"a list of {size}{what}, each an integer of {minimum} or more")


def positive(arg: str, value: float, nullable: bool = False) -> None:
    check((nullable and value is None) or (value is not None and value > 0), arg, value,
          "a positive number" + (" or null" if nullable else ""))


def one_of(arg: str, value: Any, options: Iterable) -> None:
    options = list(options)
    check(value in options, arg, value, f"one of {', '.join(map(str, options))}")


class InputTooSmall(UserError):
    """The dataset's images are smaller than the model can take; `minimum` is the smallest side it takes."""

    def __init__(self, minimum: int, reason: str = ""):
        super().__init__(f"it needs images of at least {minimum}x{minimum} pixels{reason}")
        self.minimum, self.reason = minimum, reason


def side(image_size) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def too_small_message(who: str, image_size, minimum: int, reason: str = "") -> str:
    h, w = side(image_size)
    return (f"{who} cannot take the dataset's {h}x{w} images: it needs images of at least {minimum}x{minimum} "
            f"pixels{reason}. Choose a model that takes them (mlp takes any size) or a dataset of larger images "
            f"(with dataset=synthetic: dataset.image_size={minimum}).")
