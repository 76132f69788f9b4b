"""The one small validator behind the config file, the plugins' options and the RPC parameters.

Each caller wraps its problem in its own error (``file:line: key: message``,
an :class:`~surplus.options.OptionError`, a JSON-RPC -32602), so what a value
must be is decided, and worded, once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def is_number(value: object) -> bool:
    """A finite int or float; booleans are no numbers (JSON and YAML agree), nor NaN or infinity."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (10**400) is no usable number
        return False


def fmt(value: Any, unit: str = "") -> str:
    """``7``, ``0.25``, ``16 A``: a number as people write it, with its unit."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


def range_problem(
    value: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    gt: float | None = None,
    unit: str = "",
    below: str | None = None,
    above: str | None = None,
) -> str | None:
    """Why ``value`` is out of range (None: it is not). ``below``/``above`` replace "the minimum X"."""
    if gt is not None and value <= gt:
        return f"{fmt(value, unit)} must be greater than {fmt(gt, unit)}"
    if lo is not None and value < lo:
        return f"{fmt(value, unit)} is below {below or 'the minimum ' + fmt(lo, unit)}"
    if hi is not None and value > hi:
        return f"{fmt(value, unit)} is above {above or 'the maximum ' + fmt(hi, unit)}"
    return None


def choice_problem(value: Any, choices: Sequence[Any]) -> str | None:
    """Why ``value`` is not one of ``choices`` (None: it is); ``True`` never stands for 1."""
    allowed = [c for c in choices if isinstance(c, bool) == isinstance(value, bool)]
    if value in allowed:
        return None
    shown = ", ".join("null" if c is None else str(c) for c in choices)
    return f"{value!r} is not one of {shown}"
