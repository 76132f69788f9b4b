"""The JSON-RPC methods themselves: reading the published state, writing through overrides.

:class:`Methods` holds one handler per method of the table in :mod:`surplus.rpc`
(which says which parameters each takes and what it answers); the policy is the
one :mod:`surplus.rpc` describes. The parameter builders shared by the table live
here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .api import ControllerAPI, Override, SessionHistory
from .jsonrpc import SERVER_ERROR, Handler, Param, RpcError, invalid_params
from .rpc_health import charger_health, meter_health
from .rpc_replies import (
    LOCK,
    OVERRIDE,
    PAUSE,
    RESUME,
    SET_CURRENT,
    START,
    STOP,
    UNLOCK,
    Says,
    amps_text,
    charge_current,
)
from .rpc_shapes import (
    SHAPE_GROUPS,
    all_data,
    command_json,
    iso_utc,
    meter_json,
    override_json,
    record_json,
    rounded,
    session_json,
)
from .types import (
    MAX_CURRENT_A,
    MIN_CURRENT_A,
    ChargerState,
    Outcome,
    PauseKind,
    ReadGroup,
)

#: Who calls a method: "rpc" (the HTTP server) or "mqtt" (the bridge sets it around its
#: commands). An override's reason names it, so ``getOverride`` and ``getDecision`` say
#: which door a person came in by.
CALLER: ContextVar[str] = ContextVar("surplus_rpc_caller", default="rpc")


def by_caller(method: str) -> str:
    """An override's reason: the caller and the method, e.g. "mqtt setOverride"."""
    return f"{CALLER.get()} {method}"


#: Longest an override may be set to hold with ``until`` (a typo should not pin a charger for years).
MAXOVERRIDE_S = 7 * 24 * 3600.0
#: ``getSessions`` without ``limit`` returns this many; at most MAX_SESSIONS.
DEFAULT_SESSIONS = 20
MAX_SESSIONS = 1000


# -- parameters -------------------------------------------------------------------------------

CHARGER_PARAM = Param(
    name="chargerId", kind="string", doc="Charger id (default: the first configured charger)."
)


def current_param(name: str, doc: str, *, required: bool) -> Param:
    return Param(
        name=name, kind="number", doc=doc, required=required, minimum=MIN_CURRENT_A, maximum=MAX_CURRENT_A
    )


# -- the methods ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fresh:
    charger_id: str
    state: ChargerState
    age_s: float


class Methods:
    """Handlers bound to one controller."""

    def __init__(
        self, controller: ControllerAPI, *, stale_after_s: float, history: SessionHistory | None
    ) -> None:
        self.c = controller
        self.stale_after_s = stale_after_s
        self.history = history

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
        snap = self.c.published().snapshot
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
            "lines": {
                lid: {
                    "connected": line.connected,
                    "load": rounded(line.load, 4),
                    "pollIntervalSeconds": rounded(line.poll_interval_s),
                    "boxes": line.boxes,
                }
                for lid, line in self.c.lines().items()
            },
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
        self, cid: str, override: Override, says: Says, *, current: bool = False
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
        published = self.c.published()
        reading = published.snapshot.chargers.get(cid)
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
            "override": override_json(published.charger(cid).override or override, self.wall_at),
            "command": command_json(verdict.command),
        }
        if current:
            data["current"] = None if amps is None else rounded(amps, 2)
        if verdict.outcome is Outcome.SCHEDULED and verdict.retry_at_s is not None:
            data["scheduledAt"] = self.wall_at(verdict.retry_at_s)
        return self.reply(data)

    async def charge_at(self, args: dict[str, Any], amps: float, method: str, says: Says) -> dict[str, Any]:
        ov = Override(charge=True, current_a=float(amps), reason=by_caller(method))
        return await self.apply(self.charger(args), ov, says, current=True)

    async def set_charging_current(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args["ampere"], "setChargingCurrent", SET_CURRENT)

    async def start_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args.get("current", MIN_CURRENT_A), "startCharging", START)

    async def resume_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.charge_at(args, args.get("current", MIN_CURRENT_A), "resumeCharging", RESUME)

    async def stop_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        ov = Override(charge=False, pause_kind=PauseKind.RELEASE, reason=by_caller("stopCharging"))
        return await self.apply(self.charger(args), ov, STOP)

    async def pause_charging(self, args: dict[str, Any]) -> dict[str, Any]:
        ov = Override(charge=False, pause_kind=PauseKind.SOFT, reason=by_caller("pauseCharging"))
        return await self.apply(self.charger(args), ov, PAUSE)

    async def set_requested_phases(self, args: dict[str, Any]) -> dict[str, Any]:
        single = args["phases"] == 1
        ov = Override(phases=1 if single else 3, reason=by_caller("setRequestedPhases"))
        which = "single" if single else "all"
        says = Says(
            f"Requested phases set to {which}",
            f"Requested phases change to {which} scheduled for {{at}}",
            f"Requested phases already {which}",
        )
        return await self.apply(self.charger(args), ov, says)

    async def set_lock(self, args: dict[str, Any]) -> dict[str, Any]:
        lock = args["lock"]
        ov = Override(lock=lock, reason=by_caller("setLock"))
        return await self.apply(self.charger(args), ov, LOCK if lock else UNLOCK)

    # controller methods

    def get_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        return self.reply(
            {
                "chargerId": cid,
                "mode": self.c.published().charger(cid).mode,
                "modes": list(self.c.available_modes),
            }
        )

    def set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        try:
            self.c.set_mode(cid, args["mode"])
        except ValueError as exc:
            # The controller's ValueError is a one-line message meant for people.
            raise invalid_params(str(exc).splitlines()[0] if str(exc) else "mode not accepted") from None
        return self.reply({"chargerId": cid, "mode": self.c.published().charger(cid).mode})

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
        if not 0 < delta <= MAXOVERRIDE_S:
            raise invalid_params(
                f"until must be in the future and at most {MAXOVERRIDE_S / 86400:g} days ahead"
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
            reason=by_caller("setOverride"),
        )
        return await self.apply(cid, ov, OVERRIDE)

    def clear_override(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        return self.reply({"chargerId": cid, "cleared": self.c.clear_override(cid)})

    def get_decision(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self.charger(args)
        published = self.c.published()
        record = published.charger(cid).decision
        if record is None:  # nothing decided yet: say why rather than answer an empty reply
            reading = published.snapshot.chargers.get(cid)
            why = (
                reading.error
                if reading is not None and reading.error
                else "the charger has not been read yet"
            )
            return self.reply({"chargerId": cid, "decision": None, "reasons": [f"no decision yet: {why}"]})
        return self.reply(record_json(record, self.wall_at))

    def get_chargers(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Every configured charger: where it sits, its mode, its health."""
        _worst, health = charger_health(self.c, self.stale_after_s)
        published = self.c.published()
        out = []
        for cid in self.c.charger_ids:
            setup = self.c.charger_setup(cid)
            out.append(
                {
                    "chargerId": cid,
                    "mode": published.charger(cid).mode,
                    "priority": setup.priority,
                    "circuits": list(setup.circuits),
                    "status": health[cid]["status"],
                    "ageSeconds": health[cid]["ageSeconds"],
                }
            )
        return self.reply(out)

    def get_meters(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.reply({mid: meter_json(m) for mid, m in self.c.published().snapshot.meters.items()})

    async def get_sessions(self, args: dict[str, Any]) -> dict[str, Any]:
        history = self.history
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
