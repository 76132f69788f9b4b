"""The MQTT meter's settings and payloads: validated options, and a payload into a number.

Pure (no I/O); :mod:`.mqtt_meter` subscribes and keeps the latest values.
Payloads are a plain number (``"-1234.5"``) or JSON, with a dotted path per
topic to the number (``grid_path: "ENERGY.Power"``, list indices as numbers:
``"phases.0.w"``). ``scale`` and the ``invert_*`` flags become each source's
``factor`` (``battery_soc`` is not scaled).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from surplus.mqtt_client import ca_file_problem
from surplus.options import OptionError, check_known, flag, integer, number

ROLES = ("grid", "pv", "battery", "house", "battery_soc")
OPTIONS = (
    "host",
    "port",
    "username",
    "password",
    "tls",
    "ca_file",
    "client_id",
    *(f"{role}_topic" for role in ROLES),
    *(f"{role}_path" for role in ROLES),
    "scale",
    "invert_grid",
    "invert_battery",
    "max_age_s",
    "timeout_s",
    "reconnect_s",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where one role's value comes from and how to turn a payload into watts."""

    role: str
    topic: str
    path: tuple[str, ...] = ()
    factor: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """Validated options of one MQTT meter."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    #: TLS to the broker (port 8883 usually); ``ca_file`` is a PEM bundle (None: the system's CAs).
    tls: bool = False
    ca_file: str | None = None
    client_id: str = "surplus"
    sources: tuple[Source, ...] = ()
    max_age_s: float = 10.0
    timeout_s: float = 2.0
    reconnect_s: float = 5.0

    def __repr__(self) -> str:  # never show the password, not even in a debugger or a traceback
        return f"MqttSettings(host={self.host!r}, port={self.port}, client_id={self.client_id!r})"


def parse_payload(payload: object, path: tuple[str, ...]) -> float:
    """The number in ``payload`` (plain text, or JSON followed along ``path``).

    :raises ValueError: with a short message saying what is wrong.
    """
    if isinstance(payload, bytes | bytearray):
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError("payload is not UTF-8 text") from None
    elif isinstance(payload, int | float) and not isinstance(payload, bool):
        text = repr(payload)
    else:
        text = "" if payload is None else str(payload).strip()
    if not text:
        raise ValueError("empty payload")
    if not path:
        try:
            value: object = float(text)
        except ValueError:
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"not a number: {_short(text)}") from None
        return _finite(value, text)
    try:
        node: object = json.loads(text)
    except ValueError:
        raise ValueError(f"not JSON: {_short(text)}") from None
    walked: list[str] = []
    for step in path:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            where = ".".join(walked) or "the top level"
            raise ValueError(f"no {step!r} at {where} in {_short(text)}")
        walked.append(step)
    return _finite(node, text)


def _finite(value: object, text: str) -> float:
    # JSON true/false are ints in Python; a meter never means 1 W by "true".
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {_short(text)}")
    try:
        number_ = float(value)
    except ValueError:
        raise ValueError(f"not a number: {_short(text)}") from None
    if not math.isfinite(number_):
        raise ValueError(f"not a finite number: {_short(text)}")
    return number_


def _short(text: str, limit: int = 60) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= limit else one_line[: limit - 3] + "...")


def _text(options: Mapping[str, Any], name: str, default: str | None) -> str | None:
    value = options.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        shown = "a secret" if name == "password" else repr(value)
        raise OptionError(name, f"expected a non-empty text, got {shown}")
    return value


def _topic(options: Mapping[str, Any], name: str) -> str | None:
    topic = _text(options, name, None)
    if topic is not None and ("+" in topic or "#" in topic):
        raise OptionError(name, f"{topic!r} has a wildcard; a value needs one exact topic")
    return topic


def _path(options: Mapping[str, Any], name: str) -> tuple[str, ...]:
    path = _text(options, name, None)
    if path is None:
        return ()
    steps = tuple(path.split("."))
    if any(not step for step in steps):
        raise OptionError(name, f"{path!r} has an empty step; write keys and indices like 'a.0.b'")
    return steps


def settings_from_options(meter_id: str, options: Mapping[str, Any]) -> MqttSettings:
    """Validate ``options``; :class:`OptionError` names the bad option."""
    check_known(options, OPTIONS)
    if options.get("grid_topic") is None:
        raise OptionError("grid_topic", "required: the topic carrying grid power (+ = import)")
    scale = number(options, "scale", 1.0)
    if scale == 0:
        raise OptionError("scale", "0 would turn every value into 0")
    invert = {"grid": flag(options, "invert_grid", False), "battery": flag(options, "invert_battery", False)}
    sources = []
    for role in ROLES:
        topic = _topic(options, f"{role}_topic")
        path = _path(options, f"{role}_path")
        if topic is None:
            if path:
                raise OptionError(f"{role}_path", f"set {role}_topic too")
            continue
        factor = 1.0 if role == "battery_soc" else (-scale if invert.get(role) else scale)
        sources.append(Source(role=role, topic=topic, path=path, factor=factor))
    username = _text(options, "username", None)
    password = _text(options, "password", None)
    if password is not None and username is None:
        raise OptionError("password", "set username too")
    tls = flag(options, "tls", False)
    ca_file = _text(options, "ca_file", None)
    if ca_file is not None:
        if not tls:
            raise OptionError("ca_file", "set tls: true too (a CA file is only used for TLS)")
        if (problem := ca_file_problem(ca_file)) is not None:
            raise OptionError("ca_file", problem)
    client_id = _text(options, "client_id", None) or f"surplus-{meter_id}"
    host = _text(options, "host", None) or "127.0.0.1"
    return MqttSettings(
        host=host,
        port=integer(options, "port", 1883, lo=1, hi=65535),
        username=username,
        password=password,
        tls=tls,
        ca_file=ca_file,
        client_id=client_id,
        sources=tuple(sources),
        max_age_s=number(options, "max_age_s", 10.0, lo=0.1, hi=86400, unit="s"),
        timeout_s=number(options, "timeout_s", 2.0, lo=0.1, hi=60, unit="s"),
        reconnect_s=number(options, "reconnect_s", 5.0, lo=0.1, hi=3600, unit="s"),
    )
