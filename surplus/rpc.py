"""The JSON-RPC method table: Node-compatible getters and setters plus controller methods.

Every method the server answers is one :class:`~surplus.jsonrpc.MethodSpec`
row in :func:`build_methods`. Replies use the Node server's envelope
``{"success": true, "data": ..., "timestamp": "...Z"}`` with the same ``data``
shapes; snapshot reads add ``ageSeconds`` and ``chargerId`` next to ``data``.

Policy decisions (see the README's API section):

- Reads come from ``controller.snapshot()``. A charger that was never read,
  or whose data is older than ``stale_after_s``, gives error -32000
  ("charger data unavailable" / "charger data stale (age N s)") instead of old
  numbers. ``health`` always answers and reports the staleness; its ``status``
  is the chargers' alone, ``meters`` and ``degraded`` tell about the meters.
- Writes become overrides (``controller.set_override``); the governor's
  verdict decides the reply: applied / scheduled / unchanged are
  ``success: true`` with ``data.status``; refused is error -32000
  "refused: <reason>" with the reasons in ``error.data``.
- Parameter errors are -32602 with a message saying what is valid (the Node
  server used -32000 for these).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .api import ControllerAPI, DecisionRecord, Override
from .history import SessionRecord
from .jsonrpc import SERVER_ERROR, Handler, MethodSpec, Param, RpcError, invalid_params
from .modbus import registers as R
from .rpc_shapes import (
    SHAPE_GROUPS,
    all_data,
    command_json,
    configuration,
    current,
    decision_json,
    device_info,
    diagnostics,
    energy,
    iso_utc,
    meter_json,
    power,
    rounded,
    session,
    statistics,
    status,
    voltage,
)
from .types import (
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    ChargerState,
    MeterReading,
    Outcome,
    PauseKind,
    ReadGroup,
    Source,
    Verdict,
    box_fallback_risk,
)

#: ``health`` statuses from good to bad; the reply's top-level status is the worst charger's.
_HEALTH_ORDER = ("healthy", "stale", "error", "disconnected")

#: Longest an override may be set to hold with ``until`` (a typo should not pin a charger for years).
MAX_OVERRIDE_S = 7 * 24 * 3600.0
#: ``getSessions`` without ``limit`` returns this many; at most MAX_SESSIONS.
DEFAULT_SESSIONS = 20
MAX_SESSIONS = 1000


# -- JSON Schema helpers for the OpenRPC document ---------------------------------------------

_NUM = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}


def _obj(**props: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


def _envelope(data: Mapping[str, Any] | None = None, *, message: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {
        "success": {"const": True},
        "timestamp": {"type": "string", "format": "date-time"},
    }
    if message:
        props["message"] = _STR
    if data is not None:
        props["data"] = data
    return {"type": "object", "required": list(props), "properties": props}


_UNITS = {"type": "object"}
_DEVICE_INFO = _obj(
    modbusVersion=_STR, firmwareVersion=_STR, serialNumber=_STR, maxCurrentEVSE=_NUM, maxCurrentHouse=_NUM
)
_STATUS = _obj(
    evseState=_INT,
    evseStateText=_STR,
    cpState=_INT,
    cpStateText=_STR,
    authorizationStatus=_INT,
    authorizationText=_STR,
    downgrade=_INT,
    downgradeText=_STR,
    phaseRotation=_INT,
    signaledCurrent=_NUM,
)
_PHASES3 = _obj(l1=_NUM, l2=_NUM, l3=_NUM, unit=_STR)
_POWER = _obj(l1=_NUM, l2=_NUM, l3=_NUM, total=_NUM, unit=_STR)
_ENERGY = _obj(session=_NUM, total=_NUM, unit=_STR)
_SESSION = _obj(
    maxCurrent=_NUM,
    chargedEnergy=_NUM,
    duration=_INT,
    durationFormatted=_STR,
    detectedPhases=_INT,
    unit=_UNITS,
)
_STATISTICS = _obj(totalEnergy=_NUM, totalSessions=_INT, unit=_UNITS)
_DIAGNOSTICS = _obj(
    activeErrorCode=_INT, hasError=_BOOL, masterLostFallback=_BOOL, switchedPhases=_INT, temperature=_NUM
)
_CONFIGURATION = _obj(
    maxCurrentHouse=_NUM,
    maxCurrentEvse=_NUM,
    phaseSwitchingMode=_INT,
    phaseOptionsHw=_INT,
    cableLock=_BOOL,
    masterLostFallbackCurrent=_INT,
    gridImbalance=_BOOL,
    gridPhasesConnected=_INT,
    authorization=_BOOL,
)
_WRITE = _obj(
    status={"enum": ["applied", "scheduled", "unchanged"]},
    message=_STR,
    reasons={"type": "array", "items": _STR},
    override={"type": ["object", "null"]},
)
# Only some replies have these: the current a current write gets; when a held write follows.
_WRITE["properties"] |= {"current": _NUM, "scheduledAt": {"type": "string", "format": "date-time"}}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_SESSION_ROW = _obj(
    id=_INT,
    chargerId=_STR,
    start={"type": "string", "format": "date-time"},
    end=_TIME_OR_NULL,
    open=_BOOL,
    durationSeconds=_NUM,
    energyWh=_NUM,
    sunEnergyWh=_NUM,
    sunShare=_NUM,
    unmeteredEnergyWh=_NUM,
    maxCurrent=_NUM,
    phases={"type": "array", "items": _INT},
    modes={"type": "array", "items": _STR},
    endReason={"type": ["string", "null"]},
    updated={"type": "string", "format": "date-time"},
)

# -- parameters -------------------------------------------------------------------------------

_CHARGER = Param(name="chargerId", kind="string", doc="Charger id (default: the first configured charger).")


def _current(name: str, doc: str, *, required: bool) -> Param:
    return Param(
        name=name, kind="number", doc=doc, required=required, minimum=MIN_CURRENT_A, maximum=MAX_CURRENT_A
    )


# -- write replies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Says:
    """A write reply's message per outcome; ``{a}`` is the current the charger gets, ``{at}`` when."""

    applied: str
    scheduled: str
    unchanged: str


# The applied texts are the Node server's messages.
_SET_CURRENT = _Says(
    "Charging current set to {a}",
    "Charging current change to {a} scheduled for {at}",
    "Charging current unchanged: stays at {a}",
)
_START = _Says(
    "Charging started with {a}", "Charging start with {a} scheduled for {at}", "Charging already on at {a}"
)
_RESUME = _Says(
    "Charging resumed with {a}", "Charging resume with {a} scheduled for {at}", "Charging already on at {a}"
)
_STOP = _Says("Charging stopped", "Charging stop scheduled for {at}", "Charging already stopped")
_PAUSE = _Says("Charging paused", "Charging pause scheduled for {at}", "Charging already paused")
_LOCK = _Says("EVSE locked", "EVSE lock scheduled for {at}", "EVSE already locked")
_UNLOCK = _Says("EVSE unlocked", "EVSE unlock scheduled for {at}", "EVSE already unlocked")
_OVERRIDE = _Says(
    "Override set", "Override set; the charger follows at {at}", "Override set; the charger already does this"
)


def amps_text(amps: float) -> str:
    """``16.0`` -> ``"16A"`` (the Node server's style), ``7.25`` -> ``"7.25A"``."""
    return f"{round(amps, 2):g}A"


def charge_current(requested: float | None, verdict: Verdict) -> tuple[float | None, str | None]:
    """The current a charge request really gets, and the clamp note if the governor lowered it.

    The command's current when one is sent; otherwise the clamped value, or the
    request itself (unchanged: the charger already holds it, within the
    governor's tolerance).
    """
    amps, note = requested, None
    if verdict.clamp is not None:
        asked, allowed, why = verdict.clamp
        note = f"{asked:g} A clamped to {allowed:g} A: {why}"
        amps = allowed
    cmd = verdict.command
    if requested is not None and cmd is not None and cmd.current_a is not None:
        amps = cmd.current_a
    if amps is not None and not math.isfinite(amps):
        amps = None
    return amps, note


# -- the methods ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fresh:
    charger_id: str
    state: ChargerState
    age_s: float


class _Methods:
    """Handlers bound to one controller."""

    def __init__(self, controller: ControllerAPI, *, stale_after_s: float) -> None:
        self.c = controller
        self.stale_after_s = stale_after_s

    # helpers

    def now_iso(self) -> str:
        return iso_utc(self.c.clock.wall())

    def wall_at(self, at_s: float) -> str:
        """A controller clock time (``Clock.now()``) as an ISO wall time."""
        return iso_utc(self.c.clock.wall() + (at_s - self.c.clock.now()))

    def charger(self, args: Mapping[str, Any]) -> str:
        ids = self.c.charger_ids
        cid = args.get("chargerId")
        if cid is None:
            if not ids:
                raise RpcError(SERVER_ERROR, "no charger is configured")
            return ids[0]
        if cid not in ids:
            raise invalid_params(f"chargerId must be one of {', '.join(ids)}")
        return str(cid)

    def fresh(self, args: Mapping[str, Any]) -> _Fresh:
        cid = self.charger(args)
        snap = self.c.snapshot()
        reading = snap.chargers.get(cid)
        if reading is None or reading.state is None:
            raise RpcError(
                SERVER_ERROR,
                f"charger data unavailable (charger {cid} has not been read yet)",
                {"chargerId": cid, "ageSeconds": None, "maxAgeSeconds": self.stale_after_s},
            )
        age = reading.age_s + max(0.0, self.c.clock.now() - snap.at_s)
        if not age <= self.stale_after_s:
            shown = round(age, 1) if math.isfinite(age) else None
            raise RpcError(
                SERVER_ERROR,
                f"charger data stale (age {age:.1f} s, limit {self.stale_after_s:g} s)",
                {"chargerId": cid, "ageSeconds": shown, "maxAgeSeconds": self.stale_after_s},
            )
        return _Fresh(cid, reading.state, age)

    def reply(
        self, data: Any, fresh: _Fresh | None = None, groups: tuple[ReadGroup, ...] = ()
    ) -> dict[str, Any]:
        """The envelope; a charger's data says how old it is: ``ageSeconds`` is the age of the
        oldest value in ``data``, ``readAgesSeconds`` the age of each read group it combines."""
        out = {"success": True, "data": data, "timestamp": self.now_iso()}
        if fresh is not None:
            st = fresh.state
            ages = {g.value: fresh.age_s + st.read_at_s - st.read_at(g) for g in groups}
            out["ageSeconds"] = rounded(max([fresh.age_s, *ages.values()]))
            out["readAgesSeconds"] = {g: rounded(a) for g, a in ages.items()}
            out["chargerId"] = fresh.charger_id
        return out

    def read(self, shape: Any) -> Handler:
        groups = SHAPE_GROUPS[shape]

        def handler(args: dict[str, Any]) -> dict[str, Any]:
            f = self.fresh(args)
            return self.reply(shape(f.state), f, groups)

        return handler

    # Node: health and scalar reads

    def ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"success": True, "message": "pong", "timestamp": self.now_iso()}

    def health(self, _args: dict[str, Any]) -> dict[str, Any]:
        now = self.c.clock.now()
        worst, chargers = charger_health(self.c, self.stale_after_s)
        first = chargers.get(self.c.charger_ids[0]) if self.c.charger_ids else None
        meters, degraded = meter_health(self.c)
        data = {
            "status": worst,
            "modbusConnected": bool(first and first["modbusConnected"]),
            "uptime": rounded(now - self.c.started_at_s),
            "timestamp": self.now_iso(),
            "maxAgeSeconds": rounded(self.stale_after_s),
            "chargers": chargers,
            "meters": meters,
            "degraded": bool(degraded),
            "degradedReasons": degraded,
        }
        return self.reply(data)

    def charging_power(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.fresh(args)
        return self.reply(rounded(f.state.power_total_w / 1000), f, (ReadGroup.MEASUREMENTS,))

    def temperature(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.fresh(args)
        return self.reply(rounded(f.state.temperature_c, 1), f, (ReadGroup.CONTROL,))

    def all_data(self, args: dict[str, Any]) -> dict[str, Any]:
        f = self.fresh(args)
        return self.reply(all_data(f.state, self.now_iso()), f, tuple(ReadGroup))

    # Node: writes, as overrides through the governor

    async def apply(
        self, cid: str, override: Override, says: _Says, *, current: bool = False
    ) -> dict[str, Any]:
        """Set the override and reply with what the governor really does with it.

        With ``current`` the reply names the current the charger gets (clamped
        to the ceiling, or the present one when nothing changes), never just the
        one asked for.
        """
        verdict = await self.c.set_override(cid, override)
        reasons = list(verdict.reasons)
        if verdict.outcome is Outcome.REFUSED:
            raise RpcError(
                SERVER_ERROR,
                f"refused: {reasons[0] if reasons else 'not allowed by the safety governor'}",
                {"status": "refused", "reasons": reasons, "chargerId": cid},
            )
        amps, clamp = charge_current(override.current_a, verdict)
        at = "later" if verdict.retry_at_s is None else self.wall_at(verdict.retry_at_s)
        template = {
            Outcome.APPLIED: says.applied,
            Outcome.SCHEDULED: says.scheduled,
            Outcome.UNCHANGED: says.unchanged,
        }[verdict.outcome]
        message = template.format(a="?" if amps is None else amps_text(amps), at=at)
        if verdict.outcome is Outcome.APPLIED and verdict.retry_at_s is not None:
            message += f"; the rest follows at {at}"
        if clamp is not None:
            message += f" ({clamp})"
        wants_charge = override.charge is True or (override.charge is None and override.current_a is not None)
        reading = self.c.snapshot().chargers.get(cid)
        lock = (
            override.lock
            if override.lock is not None
            else (reading.state.locked if reading and reading.state else False)
        )
        if wants_charge and lock:
            note = "the EVSE is locked: the car cannot charge until setLock lock=false"
            reasons.append(note)
            message += f"; {note}"
        data: dict[str, Any] = {
            "status": verdict.outcome.value,
            "message": message,
            "reasons": reasons,
            "override": self.override_json(self.c.get_override(cid) or override),
            "command": command_json(verdict.command),
        }
        if current:
            data["current"] = None if amps is None else rounded(amps, 2)
        if verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s is not None:
            data["scheduledAt"] = self.wall_at(verdict.retry_at_s)
        return self.reply(data)

    async def charge_at(self, args: dict[str, Any], amps: float, method: str, says: _Says) -> dict[str, Any]:
        ov = Override(charge=True, current_a=float(amps), reason=f"rpc {method}")
        return await self.apply(self.charger(args), ov, says, current=True)

    async def set_charging_current(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args["ampere"], "setChargingCurrent", _SET_CURRENT)

    async def start_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args.get("current", MIN_CURRENT_A), "startCharging", _START)

    async def resume_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args.get("current", MIN_CURRENT_A), "resumeCharging", _RESUME)

    async def stop_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        ov = Override(charge=False, pause_kind=PauseKind.RELEASE, reason="rpc stopCharging")
        return await self.apply(self.charger(args), ov, _STOP)

    async def pause_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        ov = Override(charge=False, pause_kind=PauseKind.SOFT, reason="rpc pauseCharging")
        return await self.apply(self.charger(args), ov, _PAUSE)

    async def set_requested_phases(self, args: dict[str, Any]) -> dict[str, Any]:
        single = args["phases"] == 1
        ov = Override(phases=1 if single else 3, reason="rpc setRequestedPhases")
        which = "single" if single else "all"
        says = _Says(
            f"Requested phases set to {which}",
            f"Requested phases change to {which} scheduled for {{at}}",
            f"Requested phases already {which}",
        )
        return await self.apply(self.charger(args), ov, says)

    async def set_lock(self, args: dict[str, Any]) -> dict[str, Any]:
        lock = args["lock"]
        ov = Override(lock=lock, reason="rpc setLock")
        return await self.apply(self.charger(args), ov, _LOCK if lock else _UNLOCK)

    # controller methods

    def get_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        return self.reply(
            {"chargerId": cid, "mode": self.c.get_mode(cid), "modes": list(self.c.available_modes)}
        )

    def set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        try:
            self.c.set_mode(cid, args["mode"])
        except ValueError as exc:
            # The controller's ValueError is a one-line message meant for people.
            raise invalid_params(str(exc).splitlines()[0] if str(exc) else "mode not accepted") from None
        return self.reply({"chargerId": cid, "mode": self.c.get_mode(cid)})

    def until_s(self, value: Any) -> float:
        clock = self.c.clock
        if isinstance(value, str):
            try:
                at = datetime.fromisoformat(value)
            except ValueError:
                raise invalid_params("until must be an ISO 8601 time (e.g. 2024-01-10T12:00:00Z)") from None
            if at.tzinfo is None:
                raise invalid_params("until must include a timezone (e.g. 2024-01-10T12:00:00Z)")
            delta = at.timestamp() - clock.wall()
        else:
            delta = float(value)
        if not 0 < delta <= MAX_OVERRIDE_S:
            raise invalid_params(
                f"until must be in the future and at most {MAX_OVERRIDE_S / 86400:g} days ahead"
            )
        return clock.now() + delta

    async def set_override(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        if not args.keys() & {"current", "phases", "charge", "lock"}:
            raise invalid_params("setOverride needs at least one of current, phases, charge, lock")
        kind = args.get("pauseKind")
        ov = Override(
            charge=args.get("charge"),
            current_a=float(args["current"]) if "current" in args else None,
            phases=args.get("phases"),
            lock=args.get("lock"),
            pause_kind=PauseKind(kind) if kind is not None else None,
            until_s=self.until_s(args["until"]) if "until" in args else None,
            reason="rpc setOverride",
        )
        return await self.apply(cid, ov, _OVERRIDE)

    def clear_override(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        return self.reply({"chargerId": cid, "cleared": self.c.clear_override(cid)})

    def get_decision(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        record = self.c.last_decision(cid)
        if record is None:  # nothing decided yet: say why rather than answer an empty reply
            reading = self.c.snapshot().chargers.get(cid)
            why = (
                reading.error
                if reading is not None and reading.error
                else "the charger has not been read yet"
            )
            return self.reply({"chargerId": cid, "decision": None, "reasons": [f"no decision yet: {why}"]})
        return self.reply(self.decision_json(record))

    def get_meters(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.reply({mid: meter_json(m) for mid, m in self.c.meters().items()})

    async def get_sessions(self, args: dict[str, Any]) -> dict[str, Any]:
        history = self.c.history
        if history is None:
            raise RpcError(SERVER_ERROR, "history is off: set history.path in the config")
        cid = self.charger(args) if "chargerId" in args else None
        records = await history.sessions(charger_id=cid, limit=args.get("limit", DEFAULT_SESSIONS))
        now = self.c.clock.wall()
        return self.reply([session_json(r, now) for r in records])

    def list_plugins(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.reply(
            [{"name": p.name, "source": p.source, "provides": list(p.provides)} for p in self.c.plugins()]
        )

    # JSON shapes of controller objects

    def override_json(self, ov: Override | None) -> dict[str, Any] | None:
        if ov is None:
            return None
        return {
            "charge": ov.charge,
            "current": rounded(ov.current_a),
            "phases": ov.phases,
            "lock": ov.lock,
            "pauseKind": None if ov.pause_kind is None else ov.pause_kind.value,
            "until": None if ov.until_s is None else self.wall_at(ov.until_s),
            "reason": ov.reason,
        }

    def verdict_json(self, v: Verdict) -> dict[str, Any]:
        return {
            "outcome": v.outcome.value,
            "command": command_json(v.command),
            "reasons": list(v.reasons),
            "retryAt": None if v.retry_at_s is None else self.wall_at(v.retry_at_s),
        }

    def decision_json(self, rec: DecisionRecord) -> dict[str, Any]:
        return {
            "at": self.wall_at(rec.at_s),
            "strategy": rec.strategy,
            "mode": rec.mode,
            "decision": decision_json(rec.decision),
            "verdict": self.verdict_json(rec.verdict),
            "inputs": {
                "gridPowerW": rounded(rec.grid_power_w, 1),
                "chargerAgeSeconds": rounded(rec.charger_age_s),
                "override": self.override_json(rec.override),
            },
            "reasons": [r for r in (rec.decision.reason, *rec.verdict.reasons) if r],
        }


def session_json(r: SessionRecord, now_wall: float) -> dict[str, Any]:
    """One ``getSessions`` entry: ISO times, energy in Wh (an open session runs until now)."""
    end = r.ended_at
    return {
        "id": r.id,
        "chargerId": r.charger_id,
        "start": iso_utc(r.started_at),
        "end": None if end is None else iso_utc(end),
        "open": end is None,
        "durationSeconds": rounded(max(0.0, (now_wall if end is None else end) - r.started_at), 0),
        "energyWh": rounded(r.energy_wh, 1),
        "sunEnergyWh": rounded(r.sun_wh, 1),
        "sunShare": rounded(r.sun_wh / r.energy_wh, 3) if r.energy_wh > 0 else None,
        "unmeteredEnergyWh": rounded(r.unmetered_wh, 1),
        "maxCurrent": rounded(r.max_current_a, 2),
        "phases": list(r.phases),
        "modes": list(r.modes),
        "endReason": r.end_reason,
        "updated": iso_utc(r.updated_at),
    }


def charger_health(controller: ControllerAPI, stale_after_s: float) -> tuple[str, dict[str, dict[str, Any]]]:
    """The worst charger status and each charger's health (what ``health`` and ``/healthz`` report).

    A status is ``healthy`` (fresh data, connected, no error), ``stale``
    (data older than ``stale_after_s`` or the line just dropped),
    ``error`` (the box reports an error, e.g. 200) or ``disconnected``.
    """
    snap = controller.snapshot()
    now = controller.clock.now()
    chargers: dict[str, dict[str, Any]] = {}
    worst = "healthy"
    for cid in controller.charger_ids:
        reading = snap.chargers.get(cid)
        age = None if reading is None else reading.age_s + max(0.0, now - snap.at_s)
        connected = reading is not None and reading.connected
        fresh = reading is not None and reading.state is not None and age is not None and age <= stale_after_s
        state = "healthy" if fresh and connected else "stale" if fresh or connected else "disconnected"
        charger_error = None
        if fresh and reading is not None and reading.state is not None and reading.state.has_error:
            code = reading.state.error_code
            charger_error = {"code": code, "text": R.ACTIVE_ERROR_CODE.text(code)}
            if state == "healthy":
                state = "error"
        if _HEALTH_ORDER.index(state) > _HEALTH_ORDER.index(worst):
            worst = state
        chargers[cid] = {
            "status": state,
            "modbusConnected": connected,
            "ageSeconds": rounded(age),
            "lastError": None if reading is None else reading.error,
            "chargerError": charger_error,
        }
    return worst, chargers


def meter_status(m: MeterReading) -> str:
    """``"ok"``, ``"stale"`` (no new reading within the loop's limit) or ``"error: <why>"``."""
    if m.error is None:
        return "ok" if math.isfinite(m.grid_power_w) else "error: no valid reading"
    # The loop marks a reading that has merely aged "stale (N s old)"; anything else is a failure.
    return "stale" if m.error.startswith("stale") else f"error: {m.error}"


#: Modes that run without any meter reading.
_MODES_WITHOUT_METER = ("off", "fixed")


def meter_health(controller: ControllerAPI) -> tuple[dict[str, str], list[str]]:
    """Each meter's :func:`meter_status`, and why the controller runs degraded (empty: it does not).

    Degraded: a charger's mode needs the meters while one of them is not ok, or
    a charger runs on its fallback (e.g. "pv" with no meter at all), or a box
    would keep charging by itself if surplus stopped (its heartbeat-loss fallback is 0).
    """
    snap = controller.snapshot()
    meters = {mid: meter_status(m) for mid, m in snap.meters.items()}
    down = [f"{mid} {status}" for mid, status in meters.items() if status != "ok"]
    reasons = []
    for cid in controller.charger_ids:
        reading = snap.chargers.get(cid)
        state = reading.state if reading is not None else None
        if state is not None and (risk := box_fallback_risk(state.info, state.config)) is not None:
            reasons.append(f"{cid}: {risk}")
        mode = controller.get_mode(cid)
        record = controller.last_decision(cid)
        if down and mode not in _MODES_WITHOUT_METER:
            reasons.append(f"{cid}: mode {mode} needs the meters: {'; '.join(down)}")
        elif record is not None and record.decision.source is Source.FALLBACK:
            reasons.append(f"{cid}: {record.decision.reason or 'on its fallback'}")
    return meters, reasons


def build_methods(controller: ControllerAPI, *, stale_after_s: float = 30.0) -> list[MethodSpec]:
    """The method table for ``controller``: what the server dispatches and ``rpc.discover`` describes."""
    m = _Methods(controller, stale_after_s=stale_after_s)
    ch = (_CHARGER,)
    modes = tuple(controller.available_modes)

    def read(name: str, doc: str, shape: Any, data: Mapping[str, Any]) -> MethodSpec:
        return MethodSpec(name=name, doc=doc, handler=m.read(shape), params=ch, result=_envelope(data))

    def write(name: str, doc: str, handler: Any, params: tuple[Param, ...] = ()) -> MethodSpec:
        return MethodSpec(
            name=name,
            doc=doc,
            handler=handler,
            params=(*params, _CHARGER),
            write=True,
            result=_envelope(_WRITE),
        )

    any_obj: dict[str, Any] = {"type": ["object", "null"]}
    methods = [
        MethodSpec(name="ping", doc="Ping; answers pong.", handler=m.ping, result=_envelope(message=True)),
        MethodSpec(
            name="health",
            doc=(
                "Server health: status healthy/stale/error/disconnected (the chargers), Modbus connection, "
                "uptime; meters ok/stale/error, and degraded when a mode lacks the meter it needs."
            ),
            handler=m.health,
            result=_envelope(
                _obj(
                    status=_STR,
                    modbusConnected=_BOOL,
                    uptime=_NUM,
                    timestamp=_STR,
                    meters={"type": "object", "additionalProperties": _STR},
                    degraded=_BOOL,
                    degradedReasons={"type": "array", "items": _STR},
                )
            ),
        ),
        read(
            "getDeviceInfo",
            "Firmware, serial number, Modbus layout version, current limits.",
            device_info,
            _DEVICE_INFO,
        ),
        read(
            "getStatus", "EVSE state, CP state, authorization, downgrade, signalled current.", status, _STATUS
        ),
        read("getVoltage", "Voltage per phase (V).", voltage, _PHASES3),
        read("getCurrent", "Current per phase (A).", current, _PHASES3),
        read("getPower", "Power per phase and total (W).", power, _POWER),
        MethodSpec(
            name="getChargingPower",
            doc="Total charging power in kW (data is a number).",
            handler=m.charging_power,
            params=ch,
            result=_envelope(_NUM),
        ),
        MethodSpec(
            name="getTemperature",
            doc="EVSE internal temperature in °C (data is a number).",
            handler=m.temperature,
            params=ch,
            result=_envelope(_NUM),
        ),
        read("getEnergy", "Session and total energy (kWh).", energy, _ENERGY),
        read("getSessionData", "Current session: max current, energy, duration, phases.", session, _SESSION),
        read("getStatistics", "Lifetime energy and session count.", statistics, _STATISTICS),
        write(
            "setChargingCurrent",
            "Charge at this current (override through the safety governor).",
            m.set_charging_current,
            (_current("ampere", "Charging current in A.", required=True),),
        ),
        write(
            "startCharging",
            "Start charging at this current (default 6 A).",
            m.start_charging,
            (_current("current", "Charging current in A (default 6).", required=False),),
        ),
        write("stopCharging", "Stop charging: charging release off.", m.stop_charging),
        write("pauseCharging", "Pause charging without releasing (soft pause).", m.pause_charging),
        write(
            "resumeCharging",
            "Resume charging at this current (default 6 A).",
            m.resume_charging,
            (_current("current", "Charging current in A (default 6).", required=False),),
        ),
        write(
            "setRequestedPhases",
            "Request all phases (0) or a single phase (1); needs phase-switching hardware.",
            m.set_requested_phases,
            (
                Param(
                    name="phases",
                    kind="integer",
                    doc="0 = all phases, 1 = single phase.",
                    required=True,
                    choices=(0, 1),
                ),
            ),
        ),
        write(
            "setLock",
            "Lock (true) or unlock (false) the EVSE.",
            m.set_lock,
            (Param(name="lock", kind="boolean", doc="true locks, false unlocks.", required=True),),
        ),
        read(
            "getDiagnostics",
            "Active error code, fallback state, switched phases, temperature.",
            diagnostics,
            _DIAGNOSTICS,
        ),
        read("getConfiguration", "Installer configuration of the charger.", configuration, _CONFIGURATION),
        MethodSpec(
            name="getAllData",
            doc="Everything the getters return, in one reply.",
            handler=m.all_data,
            params=ch,
            result=_envelope({"type": "object"}),
        ),
        MethodSpec(
            name="getMode",
            doc="The charger's mode and the modes there are.",
            handler=m.get_mode,
            params=ch,
            result=_envelope(_obj(chargerId=_STR, mode=_STR, modes={"type": "array"})),
        ),
        MethodSpec(
            name="setMode",
            doc=f"Set the charger's mode ({', '.join(modes)}: one per loaded strategy plugin).",
            handler=m.set_mode,
            params=(
                Param(name="mode", kind="string", doc="The mode.", required=True, choices=modes),
                _CHARGER,
            ),
            write=True,
            result=_envelope(_obj(chargerId=_STR, mode=_STR)),
        ),
        MethodSpec(
            name="setOverride",
            doc="Override the strategy (merged into the present override) until cleared or until `until`.",
            handler=m.set_override,
            params=(
                _current("current", "Charging current in A.", required=False),
                Param(name="phases", kind="integer", doc="1 or 3 phases.", choices=(1, 3)),
                Param(name="charge", kind="boolean", doc="true charges, false pauses."),
                Param(name="lock", kind="boolean", doc="true locks, false unlocks the EVSE."),
                Param(
                    name="pauseKind",
                    kind="string",
                    doc="How to pause: soft (0 A signalled) or release (relays open).",
                    choices=tuple(k.value for k in PauseKind),
                ),
                Param(name="until", kind="time", doc="Expiry: ISO 8601 time or seconds from now."),
                _CHARGER,
            ),
            write=True,
            result=_envelope(_WRITE),
        ),
        MethodSpec(
            name="clearOverride",
            doc="Drop the override; the strategy resumes on the next tick.",
            handler=m.clear_override,
            params=ch,
            write=True,
            result=_envelope(_obj(chargerId=_STR, cleared=_BOOL)),
        ),
        MethodSpec(
            name="getDecision",
            doc=(
                "The last decision: what was asked, the governor's verdict, its inputs and reasons "
                "(before the first one: decision null and the reason why)."
            ),
            handler=m.get_decision,
            params=ch,
            result=_envelope(any_obj),
        ),
        MethodSpec(
            name="getMeters",
            doc="The latest grid-meter readings by meter id (null: no value; error says why).",
            handler=m.get_meters,
            result=_envelope({"type": "object"}),
        ),
        MethodSpec(
            name="listPlugins",
            doc="Loaded plugins and what they provide.",
            handler=m.list_plugins,
            result=_envelope({"type": "array"}),
        ),
    ]
    # Always listed; without history.path it answers -32000 "history is off".
    methods.append(
        MethodSpec(
            name="getSessions",
            doc=(
                "Past and open charging sessions, newest first: times, energy, sun energy, modes "
                "(needs history.path)."
            ),
            handler=m.get_sessions,
            params=(
                Param(
                    name="chargerId",
                    kind="string",
                    doc="Only this charger's sessions (default: every charger's).",
                ),
                Param(
                    name="limit",
                    kind="integer",
                    doc=f"At most this many sessions (default {DEFAULT_SESSIONS}).",
                    minimum=1,
                    maximum=MAX_SESSIONS,
                ),
            ),
            result=_envelope({"type": "array", "items": _SESSION_ROW}),
        )
    )
    return methods
