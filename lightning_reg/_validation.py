"""Argument checks shared by every public constructor and function.

Each check raises ``TypeError`` for a value of the wrong type (bools are never numbers here) and
``ValueError`` for one out of range, with a message that names the argument, the allowed range
and the value received.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_non_negative",
    "check_number",
    "check_positive",
    "one_or_each",
]

_T = TypeVar("_T")


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (``1`` and ``None`` are not).

    Examples:
        >>> check_bool("strict", 1)
        Traceback (most recent call last):
        TypeError: `strict` must be a bool, got 1.
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> Any:
    """``value`` if it is one of ``choices``.

    Examples:
        >>> check_choice("mode", "mean", ("min", "max"))
        Traceback (most recent call last):
        ValueError: `mode` must be one of ('min', 'max'), got 'mean'.
    """
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``.

    Examples:
        >>> check_int("batch_size", 32, 1)
        32
        >>> check_int("batch_size", 0, 1)
        Traceback (most recent call last):
        ValueError: `batch_size` must be an integer >= 1, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_number(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a finite float accepted by ``ok``; ``allowed`` words the range.

    Examples:
        >>> check_number("dropout", 0.5, "in [0, 1)", lambda p: 0 <= p < 1)
        0.5
        >>> check_number("dropout", True, "in [0, 1)", lambda p: 0 <= p < 1)
        Traceback (most recent call last):
        TypeError: `dropout` must be a finite number in [0, 1), got True.
    """
    message = f"`{name}` must be a finite number {allowed}, got {value!r}."
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(message)
    number = float(value)
    if not math.isfinite(number) or not ok(number):
        raise ValueError(message)
    return number


def check_positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0.

    Examples:
        >>> check_positive("lr", float("nan"))
        Traceback (most recent call last):
        ValueError: `lr` must be a finite number > 0, got nan.
    """
    return check_number(name, value, "> 0", lambda x: x > 0)


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a finite float >= 0.

    Examples:
        >>> check_non_negative("l2", 0)
        0.0
    """
    return check_number(name, value, ">= 0", lambda x: x >= 0)


def one_or_each(name: str, value: Any, check: Callable[[str, Any], _T]) -> list[_T]:
    """``value``, one item or a non-empty sequence of one per param group, as a list of what
    ``check(name, item)`` returns (``name`` indexed, as ```max_lr[1]```, for a sequence's item).

    Examples:
        >>> one_or_each("max_lr", [0.1, 1], check_positive)
        [0.1, 1.0]
    """
    many = isinstance(value, Sequence) and not isinstance(value, str) and not callable(value)
    items = list(value) if many else [value]
    if not items:
        raise ValueError(f"`{name}` must not be an empty sequence.")
    return [check(f"{name}[{i}]" if many else name, item) for i, item in enumerate(items)]
