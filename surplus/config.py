"""YAML config -> validated, frozen dataclasses.

Every setting has its default here, once, as a dataclass field default. Errors
are one line naming the file line and the key path::

    config/demo.yaml:12: chargers[0].limits.fuse_limit_a: 40 A is above the 32 A the AMTRON allows

Environment variables with the Node server's names (``MODBUS_PORT``,
``RPC_PORT``, ...) override the file; a bad value names the variable. Strategy
names and meter types are checked against the loaded plugins by
:func:`validate_plugins`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .config_schema import (
    ConfigError as ConfigError,
)
from .config_schema import (
    Raw,
    Spec,
    Where,
    build,
    convert,
    from_python,
    parse_file,
)
from .meter import MeterEnv, MeterFactory
from .options import OptionError, did_you_mean
from .strategy import StrategyFactory, StrategyInfo
from .types import MIN_CURRENT_A

if TYPE_CHECKING:
    from .circuits import CircuitTree
    from .governor import Limits

from .config_checks import MQTT_RESERVED_IDS as MQTT_RESERVED_IDS
from .config_checks import bus_sections as bus_sections
from .config_checks import charger_bus as charger_bus
from .config_checks import check_config
from .config_model import BAUDRATES as BAUDRATES
from .config_model import (
    BUILTIN_SOURCE,
    CURRENT_CHANGE_INTERVAL_S,
    DEMO,
    RELEASE_TOGGLE_INTERVAL_S,
)
from .config_model import BusSection as BusSection
from .config_model import ChargerEntry as ChargerEntry
from .config_model import Config as Config
from .config_model import MqttConfig as MqttConfig
from .config_model import is_loopback as is_loopback

# --- environment ------------------------------------------------------------------------------------

#: Node server variable -> key path (``0`` = the first list item).
ENV_VARS: Mapping[str, tuple[str | int, ...]] = {
    "MODBUS_PORT": ("bus", "port"),
    "MODBUS_BAUDRATE": ("bus", "baudrate"),
    "MODBUS_DATABITS": ("bus", "bytesize"),
    "MODBUS_STOPBITS": ("bus", "stopbits"),
    "MODBUS_PARITY": ("bus", "parity"),
    "MODBUS_SLAVE_ID": ("chargers", 0, "device_id"),
    "MODBUS_TIMEOUT": ("bus", "timeout_ms"),
    "MODBUS_RECONNECT_INTERVAL": ("bus", "reconnect_interval_ms"),
    "MODBUS_MAX_RETRIES": ("bus", "retries"),
    "HEARTBEAT_ENABLED": ("heartbeat", "enabled"),
    "RPC_PORT": ("rpc", "port"),
    "RPC_HOST": ("rpc", "host"),
    "RPC_TOKEN": ("rpc", "token"),
    "LOG_LEVEL": ("log", "level"),
    "LOG_FILE": ("log", "file"),
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _env_value(variable: str, text: str, tp: Any, key: str, where: Where) -> Any:
    if isinstance(tp, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    raw = Raw(text, variable=variable)
    text = text.strip()
    if tp is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise where.error(raw, key, f"{text!r} is not true or false")
        return text.lower() in _TRUE
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise where.error(raw, key, f"{text!r} is not a whole number") from None
    if tp is str and key in ("bus.parity", "log.level"):
        return text.lower()
    return text


def _apply_env(config: Config, environ: Mapping[str, str], where: Where) -> Config:
    def replace(obj: Any, path: tuple[str | int, ...], variable: str, text: str, key: str) -> Any:
        step, rest = path[0], path[1:]
        if isinstance(step, int):
            items = list(obj)
            items[step] = replace(items[step], rest, variable, text, key)
            return tuple(items)
        if not rest:
            f = next(f for f in dataclasses.fields(obj) if f.name == step)
            tp = typing.get_type_hints(type(obj))[step]
            value = _env_value(variable, text, tp, key, where)
            checked = convert(tp, f.metadata.get("spec", Spec()), Raw(value, variable=variable), key, where)
            return dataclasses.replace(obj, **{step: checked})
        return dataclasses.replace(obj, **{step: replace(getattr(obj, step), rest, variable, text, key)})

    for variable, path in ENV_VARS.items():
        text = environ.get(variable)
        if text is None or text == "":  # empty = unset, as with docker-compose defaults
            continue
        key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        if path[0] == "chargers" and not config.chargers:
            raise where.error(Raw(text, variable=variable), key, "there is no charger to apply it to")
        config = replace(config, path, variable, text, key)
        where.from_env[key] = variable
    return config


# --- public API ----------------------------------------------------------------------------------


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read, validate and return the config; ``path=None`` gives the demo defaults.

    :raises ConfigError: with a one-line message naming the line and key (or the
        environment variable) of the first problem.
    """
    if path is None:
        where = Where(BUILTIN_SOURCE)
        raw = from_python(DEMO)
    else:
        raw, where = parse_file(path)
    config: Config = build(Config, raw, "", where)
    config = _apply_env(config, environ, where)
    check_config(config, where)
    return dataclasses.replace(config, source=where.source, lines=MappingProxyType(dict(where.lines)))


def _error_at(config: Config, key: str, message: str) -> ConfigError:
    """An error at ``key``'s line; a key that is missing from the file points at its parent's line."""
    line, parent = None, key
    while line is None and parent:
        line = config.line_of(parent)
        parent = parent.rpartition(".")[0]
    at = f"{config.source}:{line}" if line is not None else config.source
    return ConfigError(f"{at}: {key}: {message}", key=key, line=line, source=config.source)


def validate_plugins(
    config: Config,
    strategies: Mapping[str, StrategyFactory],
    meters: Mapping[str, MeterFactory],
    strategy_infos: Mapping[str, StrategyInfo] | None = None,
) -> None:
    """Check modes, strategy options and meter entries against the loaded plugins.

    Builds each configured strategy and meter once (factories do no I/O), so bad
    plugin options are reported with their line too. A mode whose strategy said
    ``needs_meter`` (``strategy_infos``; default: the built-ins') needs a meter.
    """
    from .clock import SystemClock

    if strategy_infos is None:
        from .plugins import builtin_strategy_infos

        strategy_infos = builtin_strategy_infos()
    meter_modes = {name for name, info in strategy_infos.items() if info.needs_meter}

    known_s = sorted(strategies)
    for i, ch in enumerate(config.chargers):
        if ch.mode not in strategies:
            raise _error_at(
                config,
                f"chargers[{i}].mode",
                f"unknown strategy {ch.mode!r}{did_you_mean(ch.mode, known_s)}; loaded: {', '.join(known_s)}",
            )
        if ch.mode in meter_modes and not any(m.grid for m in config.meters):
            raise _error_at(
                config,
                f"chargers[{i}].mode",
                f"{ch.mode} charges from the PV surplus and needs a grid meter: add one under meters:",
            )
        for name, options in ch.strategies.items():
            key = f"chargers[{i}].strategies.{name}"
            if name not in strategies:
                raise _error_at(
                    config,
                    key,
                    f"unknown strategy{did_you_mean(name, known_s)}; loaded: {', '.join(known_s)}",
                )
            try:
                strategies[name](options)
            except OptionError as exc:
                raise _error_at(config, f"{key}.{exc.option}", exc.message) from None
            except ValueError as exc:
                raise _error_at(config, key, str(exc)) from None
    known_m = sorted(meters)
    env = MeterEnv(clock=SystemClock())
    for i, m in enumerate(config.meters):
        if m.type not in meters:
            raise _error_at(
                config,
                f"meters[{i}].type",
                f"unknown meter type {m.type!r}{did_you_mean(m.type, known_m)}; loaded: {', '.join(known_m)}",
            )
        try:
            meters[m.type](m.id, m.options, env)
        except OptionError as exc:
            raise _error_at(config, f"meters[{i}].options.{exc.option}", exc.message) from None
        except ValueError as exc:
            raise _error_at(config, f"meters[{i}].options", str(exc)) from None


def to_circuits(config: Config) -> CircuitTree | None:
    """The circuit tree for the loop; None without ``circuits:`` (only each charger's own limits)."""
    if not config.circuits:
        return None
    from .circuits import Circuit, CircuitTree, Wiring, rotation_of

    roots = [c.id for c in config.circuits if c.parent is None]
    return CircuitTree(
        {
            c.id: Circuit(
                id=c.id,
                limit_a=c.limit_a,
                parent=c.parent,
                meter=c.meter,
                meter_lost_load_a=c.meter_lost_load_a,
            )
            for c in config.circuits
        },
        {
            ch.id: Wiring(circuit=ch.circuit or roots[0], rotation=rotation_of(ch.phase_rotation))
            for ch in config.chargers
        },
    )


def to_limits(charger: ChargerEntry, stale_after_s: float) -> Limits:
    """The governor's limits for one configured charger."""
    from .governor import Limits

    lim = charger.limits
    return Limits(
        fuse_limit_a=lim.fuse_limit_a,
        cable_max_a=lim.cable_max_a,
        min_current_a=MIN_CURRENT_A,
        soft_pause_a=lim.soft_pause_a,
        default_pause=lim.pause,
        current_change_interval_s=CURRENT_CHANGE_INTERVAL_S,
        release_toggle_interval_s=RELEASE_TOGGLE_INTERVAL_S,
        pause_resume_interval_s=lim.pause_resume_interval_min * 60.0,
        phase_switch_interval_s=lim.phase_switch_interval_min * 60.0,
        person_phase_switch_interval_s=lim.person_phase_switch_interval_min * 60.0,
        stale_after_s=stale_after_s,
    )
