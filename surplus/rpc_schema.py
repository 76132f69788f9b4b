"""JSON Schema pieces of the OpenRPC document (``rpc.discover``): every reply's ``data`` shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# ---------------------------------------------

NUM = {"type": ["number", "null"]}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}


def obj(**props: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


def envelope(data: Mapping[str, Any] | None = None, *, message: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {
        "success": {"const": True},
        "timestamp": {"type": "string", "format": "date-time"},
    }
    if message:
        props["message"] = STR
    if data is not None:
        props["data"] = data
    return {"type": "object", "required": list(props), "properties": props}


UNITS = {"type": "object"}
DEVICE_INFO = obj(
    modbusVersion=STR, firmwareVersion=STR, serialNumber=STR, maxCurrentEVSE=NUM, maxCurrentHouse=NUM
)
STATUS = obj(
    evseState=INT,
    evseStateText=STR,
    cpState=INT,
    cpStateText=STR,
    authorizationStatus=INT,
    authorizationText=STR,
    downgrade=INT,
    downgradeText=STR,
    phaseRotation=INT,
    signaledCurrent=NUM,
)
PHASES3 = obj(l1=NUM, l2=NUM, l3=NUM, unit=STR)
POWER = obj(l1=NUM, l2=NUM, l3=NUM, total=NUM, unit=STR)
ENERGY = obj(session=NUM, total=NUM, unit=STR)
SESSION = obj(
    maxCurrent=NUM,
    chargedEnergy=NUM,
    duration=INT,
    durationFormatted=STR,
    detectedPhases=INT,
    unit=UNITS,
)
STATISTICS = obj(totalEnergy=NUM, totalSessions=INT, unit=UNITS)
DIAGNOSTICS = obj(
    activeErrorCode=INT, hasError=BOOL, masterLostFallback=BOOL, switchedPhases=INT, temperature=NUM
)
CONFIGURATION = obj(
    maxCurrentHouse=NUM,
    maxCurrentEvse=NUM,
    phaseSwitchingMode=INT,
    phaseOptionsHw=INT,
    cableLock=BOOL,
    masterLostFallbackCurrent=INT,
    gridImbalance=BOOL,
    gridPhasesConnected=INT,
    authorization=BOOL,
)
WRITE = obj(
    status={"enum": ["applied", "scheduled", "unchanged"]},
    message=STR,
    reasons={"type": "array", "items": STR},
    override={"type": ["object", "null"]},
)
# Only some replies have these: the current a current write gets; when a held write follows.
WRITE["properties"] |= {"current": NUM, "scheduledAt": {"type": "string", "format": "date-time"}}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
SESSION_ROW = obj(
    id=INT,
    chargerId=STR,
    start={"type": "string", "format": "date-time"},
    end=TIME_OR_NULL,
    open=BOOL,
    durationSeconds=NUM,
    energyWh=NUM,
    sunEnergyWh=NUM,
    sunShare=NUM,
    unmeteredEnergyWh=NUM,
    maxCurrent=NUM,
    phases={"type": "array", "items": INT},
    modes={"type": "array", "items": STR},
    endReason={"type": ["string", "null"]},
    carFull={"type": ["boolean", "null"]},
    updated={"type": "string", "format": "date-time"},
)
