"""``surplus check-config FILE`` and ``surplus plugins``.

Both only read: no hardware, no network, nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pluggy

from .config import Config, ConfigError, load_config, validate_plugins
from .meter import MeterFactory
from .plugins import (
    PluginError,
    collect_meters,
    collect_strategies,
    describe_plugins,
    make_plugin_manager,
    meter_infos,
    strategy_infos,
)
from .strategy import StrategyFactory


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """A config validated against the plugins it loads."""

    config: Config
    pm: pluggy.PluginManager
    strategies: dict[str, StrategyFactory]
    meters: dict[str, MeterFactory]


def load_checked(
    path: str | None, environ: dict[str, str] | None = None, *, load_entrypoints: bool = True
) -> Checked:
    """Load the config, then its plugins (honouring ``plugins.blocked``), then check one against the other.

    :raises ConfigError: the config or its plugin names/options are wrong.
    :raises PluginError: two plugins register the same name.
    :raises pluggy.PluginValidationError: a plugin implements an unknown hook.
    """
    config = load_config(path, os.environ if environ is None else environ)
    pm = make_plugin_manager(load_entrypoints=load_entrypoints, blocked=config.plugins.blocked)
    strategies = collect_strategies(pm)
    meters = collect_meters(pm)
    validate_plugins(config, strategies, meters, strategy_infos(pm))
    return Checked(config=config, pm=pm, strategies=strategies, meters=meters)


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        checked = load_checked(args.file)
    except (ConfigError, PluginError, pluggy.PluginValidationError) as exc:
        print(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, file=sys.stderr)
        return 2
    c = checked.config
    print(f"{args.file}: ok ({_count(len(c.chargers), 'charger')}, {_count(len(c.meters), 'meter')})")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    blocked: tuple[str, ...] = ()
    if args.config:
        try:
            blocked = load_config(args.config, os.environ).plugins.blocked
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    try:
        pm = make_plugin_manager(blocked=blocked)
        infos = describe_plugins(pm)
        strategies = strategy_infos(pm)
        meters = meter_infos(pm)
    except (PluginError, pluggy.PluginValidationError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        rows: list[dict[str, Any]] = []
        for i in infos:
            row = asdict(i)
            row["strategies"] = {
                n: {
                    "needsMeter": s.needs_meter,
                    "usesMeter": s.uses_meter or s.needs_meter,
                    "summary": s.summary,
                    "options": dict(s.options),
                }
                for n, s in strategies.items()
                if s.plugin == i.name
            }
            row["meters"] = {
                n: {"summary": m.summary, "options": dict(m.options)}
                for n, m in meters.items()
                if m.plugin == i.name
            }
            rows.append(row)
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max((len(i.name) for i in infos), default=0)
    for i in infos:
        print(f"{i.name:<{width}}  {i.source:<20}  {', '.join(i.provides) or '-'}")
    for name in blocked:
        print(f"{name:<{width}}  blocked")
    print("\nmodes (strategies; setMode and a charger's mode: select them):")
    for n, s in strategies.items():
        needs = (
            " [needs a grid meter]" if s.needs_meter else " [reads the grid meter]" if s.uses_meter else ""
        )
        print(f"  {n}{needs}: {s.summary or '-'}")
        if s.options:
            print(f"    options: {_options_text(s.options)}")
    print("\nmeter types (a meters entry's type):")
    for n, m in meters.items():
        print(f"  {n}: {m.summary or '-'}")
        if m.options:
            print(f"    options: {_options_text(m.options)}")
    return 0


def _options_text(options: Mapping[str, Any]) -> str:
    """``a=1, b, c=auto``: an option without a default shows its name alone."""
    return ", ".join(
        name if default is None else f"{name}={_shown(default)}" for name, default in options.items()
    )


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a config file (touches no hardware)")
    p.add_argument("file", metavar="FILE", help="YAML config to check")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("plugins", help="list loaded plugins, where they come from and what they provide")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-c", "--config", help="honour this config's plugins.blocked")
    p.set_defaults(func=_cmd_plugins)
