"""Every extension point of surplus, in one place.

Plugins implement these with ``@surplus.hookspecs.hookimpl`` (or any function whose name
starts with ``surplus_``: the plugin manager treats the prefix as a hook, so a
misspelled name fails at start-up instead of being ignored). Hook calls take
keyword arguments only. Keep this list short: a plugin registers what it
provides, and the controller calls what it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import pluggy

from .meter import MeterFactory
from .strategy import StrategyFactory

PROJECT = "surplus"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterStrategy(Protocol):
    """``register(name, factory, *, needs_meter=False, uses_meter=False, summary="", options={})``."""

    def __call__(
        self,
        name: str,
        factory: StrategyFactory,
        *,
        needs_meter: bool = ...,
        uses_meter: bool = ...,
        summary: str = ...,
        options: Mapping[str, Any] = ...,
    ) -> None: ...


class RegisterMeter(Protocol):
    """``register(type_name, factory, *, summary="", options={})``."""

    def __call__(
        self, name: str, factory: MeterFactory, *, summary: str = ..., options: Mapping[str, Any] = ...
    ) -> None: ...


@hookspec
def surplus_register_strategies(register: RegisterStrategy) -> None:
    """Register charging strategies.

    Call ``register(name, factory, ...)`` once per strategy. ``name`` is what a
    charger's ``mode`` selects in the config and ``setMode`` at run time (e.g.
    ``"fixed"``); ``factory`` takes the strategy's options mapping and returns a
    :class:`surplus.strategy.Strategy`. The strategy describes itself with
    keywords: ``needs_meter=True`` when it charges from the grid meter's surplus
    (the config then requires a meter), ``uses_meter=True`` when it reads the meter
    but runs without one (a meter that is down then degrades it in ``health``;
    implied by ``needs_meter``), ``summary="one line"`` and
    ``options={"name": default, ...}`` (shown by ``surplus plugins``). Two plugins registering the same name is
    an error at start-up; block one of them (``plugins.blocked``) to replace it.

    :param register: callback taking ``(name: str, factory: StrategyFactory)``.
    """


@hookspec
def surplus_register_meters(register: RegisterMeter) -> None:
    """Register grid-meter types.

    Call ``register(type_name, factory, ...)`` once per meter type. ``type_name`` is
    what a ``meters`` entry's ``type`` selects (e.g. ``"simulated"``);
    ``factory(meter_id, options, env)`` returns a :class:`surplus.meter.Meter`
    without doing I/O. Optional keywords: ``summary="one line"`` and
    ``options={"name": default, ...}``. Duplicate type names are an error at start-up.

    :param register: callback taking ``(type_name: str, factory: MeterFactory)``.
    """
