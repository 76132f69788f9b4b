"""The one validator behind config keys, plugin options and RPC parameters (surplus.checks)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from surplus.checks import choice_problem, is_number, range_problem
from surplus.config import ConfigError, load_config
from surplus.options import OptionError, choice, number


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (0.5, True), (-3, True), (True, False), (math.nan, False), (math.inf, False),
     (10**400, False), ("7", False), (None, False)],
)  # fmt: skip
def test_is_number(value: Any, ok: bool) -> None:
    assert is_number(value) is ok


@pytest.mark.parametrize(
    ("kw", "value", "problem"),
    [
        ({"lo": 6, "hi": 32, "unit": "A"}, 6, None),
        ({"lo": 6, "hi": 32, "unit": "A"}, 5.5, "5.5 A is below the minimum 6 A"),
        ({"lo": 6, "hi": 32, "unit": "A"}, 40, "40 A is above the maximum 32 A"),
        ({"gt": 0, "unit": "s"}, 0, "0 s must be greater than 0 s"),
        ({"hi": 5, "unit": "s", "above": "the 5 s limit"}, 6, "6 s is above the 5 s limit"),
    ],
)
def test_range_problem_words_each_edge(kw: dict[str, Any], value: float, problem: str | None) -> None:
    assert range_problem(value, **kw) == problem


def test_a_boolean_is_no_choice_of_numbers() -> None:
    assert choice_problem(1, (1, 3)) is None
    assert choice_problem(True, (1, 3)) == "True is not one of 1, 3"
    assert choice_problem(None, ("auto", None)) is None
    assert choice_problem("x", ("auto", None)) == "'x' is not one of auto, null"


def test_nan_and_infinity_are_refused_everywhere(tmp_path: Path) -> None:
    """Before the shared validator, NaN slipped through every range check (it compares false)."""
    with pytest.raises(OptionError, match="expected a number, got nan"):
        number({"step_a": math.nan}, "step_a", 0.25, lo=0.1, hi=10)
    with pytest.raises(OptionError, match="is not one of 1, 3"):
        choice({"phases": True}, "phases", None, (1, 3, None))
    path = tmp_path / "c.yaml"
    path.write_text("control:\n  tick_s: .nan\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r":2: control.tick_s: expected a number, got nan"):
        load_config(str(path), {})
