"""Checks of user-given values, shared by every stage (each raises a named error)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from daskdict.errors import InvalidInputError


def check_positive_int(name: str, value: Any, *, optional: bool = False,
                       minimum: int = 1) -> int | None:
    """``value`` as an int ``>= minimum`` (None passes when ``optional``), else a named error."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if optional:
            what = f"None or {what}"
        raise InvalidInputError(f"Expected {name} to be {what}. Got {value!r}.")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a named error listing them."""
    if value not in choices:
        raise InvalidInputError(f"Expected {name} to be one of {list(choices)}. Got {value!r}.")
    return value


def check_fraction(name: str, value: Any, *, low_open: bool = True,
                   high_open: bool = False) -> float:
    """``value`` as a float in (0, 1] (ends open or closed as asked), else a named error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"Expected {name} to be a number. Got {value!r}.")
    value = float(value)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise InvalidInputError(f"Expected {name} in {interval}. Got {value!r}.")
    return value
