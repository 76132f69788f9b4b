"""Small helpers for plugins to validate their options at start-up.

Errors are :class:`OptionError` (a ``ValueError``) carrying the option name, so
the config loader can point at the option's line in the YAML file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .checks import choice_problem, is_number, range_problem


class OptionError(ValueError):
    """A plugin option is unknown, of the wrong type, or out of range."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a candidate is close, else ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known(options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Reject option names the plugin does not know."""
    for name in options:
        if name not in known and not known:
            raise OptionError(str(name), "unknown option; this plugin takes no options")
        if name not in known:
            raise OptionError(
                str(name), f"unknown option{did_you_mean(str(name), known)}; known: {', '.join(known)}"
            )


def number(
    options: Mapping[str, Any],
    name: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    unit: str = "",
) -> float:
    """A finite number option within ``[lo, hi]`` (booleans, NaN and infinity are not numbers)."""
    value = options.get(name, default)
    if not is_number(value):
        raise OptionError(name, f"expected a number, got {value!r}")
    problem = range_problem(value, lo=lo, hi=hi, unit=unit)
    if problem is not None:
        raise OptionError(name, problem)
    return float(value)


def integer(
    options: Mapping[str, Any], name: str, default: int, *, lo: int | None = None, hi: int | None = None
) -> int:
    """An integer option within ``[lo, hi]``."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"expected a whole number, got {value!r}")
    return int(number(options, name, default, lo=lo, hi=hi))


def flag(options: Mapping[str, Any], name: str, default: bool) -> bool:
    """A true/false option (YAML ``true``/``false``; not 0/1 or strings)."""
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise OptionError(name, f"expected true or false, got {value!r}")
    return value


def choice(options: Mapping[str, Any], name: str, default: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (compared with ``==``; ``None`` may be a choice)."""
    value = options.get(name, default)
    problem = choice_problem(value, choices)
    if problem is not None:
        raise OptionError(name, problem)
    return value
