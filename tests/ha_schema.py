"""Home Assistant's MQTT discovery rules, written down from its documentation.

Sources (from memory of the docs; no web access while writing): the "MQTT"
integration page (discovery, availability, device), and the MQTT Sensor,
Binary sensor, Select, Number, Switch and Button pages, plus the sensor
entity's developer docs for device classes, state classes and units
(what the energy dashboard accepts). :func:`problems` returns what a config
payload breaks; an empty list means Home Assistant would take it.
"""

from __future__ import annotations

from typing import Any

# -- every MQTT entity -------------------------------------------------------------------------

ENTITY_CATEGORIES = ("config", "diagnostic")
AVAILABILITY_MODES = ("all", "any", "latest")
STATE_CLASSES = ("measurement", "total", "total_increasing")

#: Required keys per platform (besides unique_id and device, which we require of every entity).
REQUIRED = {
    "sensor": ("state_topic",),
    "binary_sensor": ("state_topic",),
    "select": ("command_topic", "options"),
    "number": ("command_topic",),
    "switch": ("command_topic",),
    "button": ("command_topic",),
}

#: Units HA accepts per sensor/number device class (a subset of the classes: the ones that matter here
#: plus neighbours, so a wrong class/unit pair is caught).
UNITS = {
    "energy": ("Wh", "kWh", "MWh", "GWh", "MJ", "GJ"),
    "power": ("W", "kW", "MW"),
    "current": ("A", "mA"),
    "voltage": ("V", "mV", "kV"),
    "temperature": ("°C", "°F", "K"),
    "battery": ("%",),
    "duration": ("s", "min", "h", "d"),
}
#: State classes a device class allows (absent: any).
STATE_CLASSES_OF = {
    "energy": ("total", "total_increasing"),
    "power": ("measurement",),
    "current": ("measurement",),
    "voltage": ("measurement",),
    "temperature": ("measurement",),
}
SENSOR_DEVICE_CLASSES = (*UNITS, "enum", "timestamp", "date", "monetary", "frequency", "power_factor")
BINARY_SENSOR_DEVICE_CLASSES = (
    "battery",
    "battery_charging",
    "connectivity",
    "lock",
    "plug",
    "power",
    "problem",
    "running",
)
NUMBER_DEVICE_CLASSES = tuple(UNITS)
SWITCH_DEVICE_CLASSES = ("outlet", "switch")
BUTTON_DEVICE_CLASSES = ("identify", "restart", "update")
NUMBER_MODES = ("auto", "box", "slider")

_TOPIC_KEYS = ("state_topic", "command_topic", "availability_topic", "json_attributes_topic")


def _topic_ok(topic: Any) -> bool:
    return isinstance(topic, str) and bool(topic) and "+" not in topic and "#" not in topic


def _common(p: dict[str, Any]) -> list[str]:
    out = []
    if not isinstance(p.get("unique_id"), str) or not p["unique_id"]:
        out.append("unique_id missing")
    device = p.get("device")
    if not isinstance(device, dict):
        out.append("device missing")
    else:
        ids = device.get("identifiers")
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) and i for i in ids)):
            out.append("device.identifiers must be a non-empty list of strings")
        for key in ("name", "manufacturer", "model", "sw_version", "serial_number", "hw_version"):
            if key in device and not isinstance(device[key], str):
                out.append(f"device.{key} must be text")
    for key in _TOPIC_KEYS:
        if key in p and not _topic_ok(p[key]):
            out.append(f"{key} {p[key]!r} is not a plain topic")
    if "availability" in p and "availability_topic" in p:
        out.append("availability and availability_topic are exclusive")
    if "availability_topic" in p:
        for key in ("payload_available", "payload_not_available"):
            if not isinstance(p.get(key), str):
                out.append(f"{key} missing next to availability_topic")
    if "availability" in p:
        entries = p["availability"]
        if not isinstance(entries, list) or not entries:
            out.append("availability must be a non-empty list")
        else:
            for e in entries:
                if not isinstance(e, dict) or not _topic_ok(e.get("topic")):
                    out.append("each availability entry needs a topic")
                elif not isinstance(e.get("payload_available"), str) or not isinstance(
                    e.get("payload_not_available"), str
                ):
                    out.append("each availability entry needs payload_available/payload_not_available")
    elif "availability_topic" not in p:
        out.append("no availability (the entity would never show the bridge going offline)")
    if p.get("availability_mode", "latest") not in AVAILABILITY_MODES:
        out.append(f"availability_mode {p['availability_mode']!r}")
    if "entity_category" in p and p["entity_category"] not in ENTITY_CATEGORIES:
        out.append(f"entity_category {p['entity_category']!r}")
    if "origin" in p and not isinstance(p["origin"].get("name"), str):
        out.append("origin needs a name")
    return out


def _units(p: dict[str, Any], allowed_classes: tuple[str, ...]) -> list[str]:
    out = []
    dc = p.get("device_class")
    unit = p.get("unit_of_measurement")
    if dc is not None and dc not in allowed_classes:
        out.append(f"device_class {dc!r} is not one of this platform's")
    if dc in UNITS and unit not in UNITS[dc]:
        out.append(f"device_class {dc} needs a unit of {', '.join(UNITS[dc])}, not {unit!r}")
    return out


def _sensor(p: dict[str, Any]) -> list[str]:
    out = _units(p, SENSOR_DEVICE_CLASSES)
    dc, sc = p.get("device_class"), p.get("state_class")
    if sc is not None and sc not in STATE_CLASSES:
        out.append(f"state_class {sc!r}")
    if dc == "enum":
        opts = p.get("options")
        if not (isinstance(opts, list) and opts and all(isinstance(o, str) for o in opts)):
            out.append("an enum sensor needs options (a list of texts)")
        if sc is not None or "unit_of_measurement" in p:
            out.append("an enum sensor has no state_class and no unit")
    elif "options" in p:
        out.append("options only with device_class enum")
    if dc in STATE_CLASSES_OF and sc not in STATE_CLASSES_OF[dc]:
        out.append(f"device_class {dc} needs state_class {' or '.join(STATE_CLASSES_OF[dc])}, not {sc!r}")
    prec = p.get("suggested_display_precision")
    if prec is not None and not (isinstance(prec, int) and prec >= 0):
        out.append("suggested_display_precision must be an integer >= 0")
    return out


def _binary_sensor(p: dict[str, Any]) -> list[str]:
    out = []
    if p.get("device_class") is not None and p["device_class"] not in BINARY_SENSOR_DEVICE_CLASSES:
        out.append(f"binary_sensor device_class {p['device_class']!r}")
    for key in ("payload_on", "payload_off"):
        if key in p and not isinstance(p[key], str):
            out.append(f"{key} must be text")
    if p.get("payload_on", "ON") == p.get("payload_off", "OFF"):
        out.append("payload_on equals payload_off")
    return out


def _select(p: dict[str, Any]) -> list[str]:
    opts = p.get("options")
    if not (isinstance(opts, list) and opts and all(isinstance(o, str) for o in opts)):
        return ["select options must be a non-empty list of texts"]
    return ["select options repeat"] if len(set(opts)) != len(opts) else []


def _number(p: dict[str, Any]) -> list[str]:
    out = _units(p, NUMBER_DEVICE_CLASSES)
    lo, hi, step = p.get("min", 1), p.get("max", 100), p.get("step", 1)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi, step)):
        return [*out, "min, max and step must be numbers"]
    if not lo < hi:
        out.append(f"min {lo} must be below max {hi}")
    if not step >= 0.001:
        out.append(f"step {step} must be at least 0.001")
    if p.get("mode", "auto") not in NUMBER_MODES:
        out.append(f"mode {p['mode']!r}")
    return out


def _switch(p: dict[str, Any]) -> list[str]:
    out = []
    if p.get("device_class") is not None and p["device_class"] not in SWITCH_DEVICE_CLASSES:
        out.append(f"switch device_class {p['device_class']!r}")
    if "state_topic" in p and p.get("state_on", p.get("payload_on", "ON")) == p.get(
        "state_off", p.get("payload_off", "OFF")
    ):
        out.append("state_on equals state_off")
    return out


def _button(p: dict[str, Any]) -> list[str]:
    if p.get("device_class") is not None and p["device_class"] not in BUTTON_DEVICE_CLASSES:
        return [f"button device_class {p['device_class']!r}"]
    return []


_PLATFORM = {
    "sensor": _sensor,
    "binary_sensor": _binary_sensor,
    "select": _select,
    "number": _number,
    "switch": _switch,
    "button": _button,
}


def problems(topic: str, payload: dict[str, Any], discovery_prefix: str = "homeassistant") -> list[str]:
    """What is wrong with one discovery message (topic ``<prefix>/<component>/<node>/<object>/config``)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != discovery_prefix or parts[4] != "config":
        return [f"topic {topic!r} is not {discovery_prefix}/<component>/<node_id>/<object_id>/config"]
    component = parts[1]
    if component not in _PLATFORM:
        return [f"unknown component {component!r}"]
    out = [f"{component}: {key} is required" for key in REQUIRED[component] if key not in payload]
    return out + _common(payload) + _PLATFORM[component](payload)


def energy_dashboard_ready(payload: dict[str, Any]) -> bool:
    """What the energy dashboard lists: device_class energy, total/total_increasing, an energy unit."""
    return (
        payload.get("device_class") == "energy"
        and payload.get("state_class") in ("total", "total_increasing")
        and payload.get("unit_of_measurement") in ("Wh", "kWh", "MWh")
    )
