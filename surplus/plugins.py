"""Plugin manager: built-ins from :data:`DEFAULT_PLUGINS`, others from the
``surplus`` entry-point group. A built-in and a third-party plugin look the same.

Each controller (and each test) gets a fresh manager from
:func:`make_plugin_manager`; nothing is global.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import pluggy

from . import hookspecs
from .api import PluginInfo
from .meter import MeterFactory, MeterInfo
from .strategy import StrategyFactory, StrategyInfo

#: Built-in plugins, registered under their module names.
DEFAULT_PLUGINS = (
    "surplus_plugins.off",
    "surplus_plugins.fixed",
    "surplus_plugins.pv",
    "surplus_plugins.schedule",
    "surplus_plugins.simulated_meter",
    "surplus_plugins.fronius",
    "surplus_plugins.shelly",
    "surplus_plugins.http_meter",
    "surplus_plugins.mqtt_meter",
    "surplus_plugins.sunspec_meter",
)
#: The built-ins that provide meters only: a day replay (the day is its meter) blocks them.
METER_PLUGINS = (
    "surplus_plugins.simulated_meter",
    "surplus_plugins.fronius",
    "surplus_plugins.shelly",
    "surplus_plugins.http_meter",
    "surplus_plugins.mqtt_meter",
    "surplus_plugins.sunspec_meter",
)
ENTRY_POINT_GROUP = "surplus"

F = TypeVar("F")


class PluginError(ValueError):
    """Plugins disagree (e.g. two register the same strategy name)."""


class _Manager(pluggy.PluginManager):
    """Treats every ``surplus_*`` function as a hook implementation.

    pluggy alone skips unmarked functions, so a plugin that forgot
    ``@hookimpl`` or misspelled a hook name would be silently ignored; with the
    prefix rule, :meth:`check_pending` reports the misspelling at start-up.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(hookspecs.PROJECT + "_"):
            method = inspect.getattr_static(plugin, name, None)
            if inspect.isfunction(method):
                return pluggy.HookimplOpts(
                    wrapper=False,
                    hookwrapper=False,
                    optionalhook=False,
                    tryfirst=False,
                    trylast=False,
                    specname=None,
                )
        return opts


def make_plugin_manager(
    *, load_entrypoints: bool = True, blocked: Iterable[str] = ()
) -> pluggy.PluginManager:
    """A new manager with the built-ins and (optionally) entry-point plugins.

    :param load_entrypoints: also load third-party plugins from the ``surplus``
        entry-point group.
    :param blocked: plugin names (as ``surplus plugins`` lists them) not to load.
    :raises pluggy.PluginValidationError: a plugin implements a hook that does
        not exist (usually a misspelling) or with the wrong arguments.
    """
    pm = _Manager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


#: What ``register`` accepts besides the name and the factory, per kind.
_ABOUT: dict[str, tuple[str, ...]] = {
    "strategy": ("needs_meter", "uses_meter", "summary", "options"),
    "meter": ("summary", "options"),
}


def _collect(
    pm: pluggy.PluginManager, hook_name: str, kind: str
) -> dict[str, tuple[str, Any, dict[str, Any]]]:
    """Call ``hook_name`` plugin by plugin, so each registration knows its plugin.

    Each entry: ``name -> (plugin, factory, about)``; ``about`` holds what the plugin
    said about it (``needs_meter``, ``uses_meter``, ``summary``, ``options``), checked here.
    """
    found: dict[str, tuple[str, Any, dict[str, Any]]] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # load order
        plugin_name = impl.plugin_name
        others = [p for p in pm.get_plugins() if p is not impl.plugin]
        caller = pm.subset_hook_caller(hook_name, remove_plugins=others)

        def register(name: str, factory: Any, _plugin: str = plugin_name, **about: Any) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {_plugin} registered a {kind} with an invalid name {name!r}")
            if not callable(factory):
                raise PluginError(f"plugin {_plugin} registered {kind} {name!r} with a non-callable factory")
            _check_about(_plugin, kind, name, about)
            if name in found:
                raise PluginError(
                    f"{kind} {name!r} is registered by both {found[name][0]} and {_plugin}; "
                    f"block one of them in the config (plugins.blocked)"
                )
            found[name] = (_plugin, factory, about)

        caller(register=register)
    return found


def _check_about(plugin: str, kind: str, name: str, about: Mapping[str, Any]) -> None:
    known = _ABOUT[kind]
    for key, value in about.items():
        if key not in known:
            raise PluginError(
                f"plugin {plugin} registered {kind} {name!r} with unknown {key}=; a {kind} may say "
                + ", ".join(f"{k}=" for k in known)
            )
        if key in ("needs_meter", "uses_meter") and not isinstance(value, bool):
            raise PluginError(f"plugin {plugin}: {kind} {name!r}: {key} must be True or False")
        if key == "summary" and not isinstance(value, str):
            raise PluginError(f"plugin {plugin}: {kind} {name!r}: summary must be text")
        if key == "options" and not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
            raise PluginError(f"plugin {plugin}: {kind} {name!r}: options must map option names to defaults")


def _factories(found: dict[str, tuple[str, F, dict[str, Any]]]) -> dict[str, F]:
    return {name: factory for name, (_plugin, factory, _about) in found.items()}


def collect_strategies(pm: pluggy.PluginManager) -> dict[str, StrategyFactory]:
    """Strategy factories by name; :class:`PluginError` names both plugins of a duplicate."""
    return _factories(_collect(pm, "surplus_register_strategies", "strategy"))


def collect_meters(pm: pluggy.PluginManager) -> dict[str, MeterFactory]:
    """Meter factories by type name; :class:`PluginError` names both plugins of a duplicate."""
    return _factories(_collect(pm, "surplus_register_meters", "meter"))


def strategy_infos(pm: pluggy.PluginManager) -> dict[str, StrategyInfo]:
    """What each loaded strategy said about itself, by name (in load order)."""
    return {
        name: StrategyInfo(
            name=name,
            plugin=plugin,
            needs_meter=about.get("needs_meter", False),
            uses_meter=about.get("uses_meter", False) or about.get("needs_meter", False),
            summary=about.get("summary", ""),
            options=MappingProxyType(dict(about.get("options", {}))),
        )
        for name, (plugin, _f, about) in _collect(pm, "surplus_register_strategies", "strategy").items()
    }


def meter_infos(pm: pluggy.PluginManager) -> dict[str, MeterInfo]:
    """What each loaded meter type said about itself, by type name (in load order)."""
    return {
        name: MeterInfo(
            name=name,
            plugin=plugin,
            summary=about.get("summary", ""),
            options=MappingProxyType(dict(about.get("options", {}))),
        )
        for name, (plugin, _f, about) in _collect(pm, "surplus_register_meters", "meter").items()
    }


@functools.cache
def builtin_strategy_infos() -> Mapping[str, StrategyInfo]:
    """The built-in strategies' descriptions (for a controller built without a plugin manager)."""
    return MappingProxyType(strategy_infos(make_plugin_manager(load_entrypoints=False)))


def _source(pm: pluggy.PluginManager, name: str, plugin: object) -> str:
    if name in DEFAULT_PLUGINS:
        return "built-in"
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"{dist.project_name} {dist.version}"
    return "registered"


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Loaded plugins in load order: name, where they come from, what they provide."""
    provides: dict[str, list[str]] = {}
    kinds: tuple[tuple[str, str], ...] = (
        ("surplus_register_strategies", "strategy"),
        ("surplus_register_meters", "meter"),
    )
    for hook_name, kind in kinds:
        for thing, (plugin_name, _factory, _about) in _collect(pm, hook_name, kind).items():
            provides.setdefault(plugin_name, []).append(f"{kind}:{thing}")
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        infos.append(
            PluginInfo(name=name, source=_source(pm, name, plugin), provides=tuple(provides.get(name, ())))
        )
    return infos
