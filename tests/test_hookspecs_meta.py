"""Every hookspec has a built-in implementation and a test that calls it.

Adding a hook to ``surplus/hookspecs.py`` without both makes this fail.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable
from pathlib import Path

import pluggy

from surplus import hookspecs
from surplus.plugins import DEFAULT_PLUGINS, make_plugin_manager

TESTS = Path(__file__).resolve().parent


def hookspec_names(module: types.ModuleType) -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(name for name, obj in vars(module).items() if callable(obj) and hasattr(obj, marker))


def without_builtin(names: Iterable[str], pm: pluggy.PluginManager) -> list[str]:
    missing = []
    for name in names:
        caller = getattr(pm.hook, name, None)
        impls = caller.get_hookimpls() if caller is not None else []
        if not any(impl.plugin_name in DEFAULT_PLUGINS for impl in impls):
            missing.append(name)
    return missing


def without_test(names: Iterable[str], sources: Iterable[str]) -> list[str]:
    text = "\n".join(sources)
    return [name for name in names if not re.search(rf"\.hook\.{re.escape(name)}\(", text)]


def sources_of_tests() -> list[str]:
    me = Path(__file__).resolve()
    return [p.read_text(encoding="utf-8") for p in sorted(TESTS.glob("test_*.py")) if p.resolve() != me]


def test_there_are_hookspecs() -> None:
    assert {"surplus_register_meters", "surplus_register_strategies"} <= set(hookspec_names(hookspecs))


def test_every_hookspec_has_a_builtin_implementation() -> None:
    pm = make_plugin_manager(load_entrypoints=False)
    assert without_builtin(hookspec_names(hookspecs), pm) == []


def test_every_hookspec_is_called_by_a_test() -> None:
    assert without_test(hookspec_names(hookspecs), sources_of_tests()) == []


def test_every_hookspec_is_documented() -> None:
    for name in hookspec_names(hookspecs):
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ":param " in doc, name


def test_the_meta_test_catches_a_new_hook() -> None:
    """A hookspec module with one more hook: no built-in, no test -> both checks report it."""
    extra = types.ModuleType("extra_hookspecs")

    @hookspecs.hookspec
    def surplus_brand_new(value: int) -> None:
        """:param value: anything."""

    extra.surplus_brand_new = surplus_brand_new  # type: ignore[attr-defined]
    names = hookspec_names(hookspecs) + hookspec_names(extra)
    pm = make_plugin_manager(load_entrypoints=False)
    pm.add_hookspecs(extra)
    assert without_builtin(names, pm) == ["surplus_brand_new"]
    assert without_test(names, sources_of_tests()) == ["surplus_brand_new"]
    assert without_test(names, ["pm.hook.surplus_brand_new(value=1)"]) == [
        n for n in names if n != "surplus_brand_new"
    ]
