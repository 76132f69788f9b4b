"""What ``health`` and ``/healthz`` report: each charger's status, each meter's, and why it is degraded."""

from __future__ import annotations

import math
from typing import Any

from .api import ControllerAPI
from .modbus import registers as R
from .rpc_shapes import rounded
from .types import MeterReading, Source, box_fallback_risk

#: ``health`` statuses from good to bad; the reply's top-level status is the worst charger's.
_HEALTH_ORDER = ("healthy", "stale", "error", "disconnected")


def charger_health(controller: ControllerAPI, stale_after_s: float) -> tuple[str, dict[str, dict[str, Any]]]:
    """The worst charger status and each charger's health (what ``health`` and ``/healthz`` report).

    A status is ``healthy`` (fresh data, connected, no error), ``stale``
    (data older than ``stale_after_s`` or the line just dropped),
    ``error`` (the box reports an error, e.g. 200) or ``disconnected``.
    """
    snap = controller.published().snapshot
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


def meter_health(controller: ControllerAPI) -> tuple[dict[str, str], list[str]]:
    """Each meter's :func:`meter_status`, and why the controller runs degraded (empty: it does not).

    Degraded: a charger's mode reads the meters (its plugin says ``uses_meter`` or
    ``needs_meter``) while one of them is not ok, or
    a charger runs on its fallback (e.g. "pv" with no meter at all), or a box
    would keep charging by itself if surplus stopped (its heartbeat-loss fallback is 0),
    or a line carries more boxes than it can read within the stated age.
    """
    published = controller.published()
    snap = published.snapshot
    meters = {mid: meter_status(m) for mid, m in snap.meters.items()}
    down = [f"{mid} {status}" for mid, status in meters.items() if status != "ok"]
    reasons = []
    for cid in controller.charger_ids:
        reading = snap.chargers.get(cid)
        state = reading.state if reading is not None else None
        if state is not None and (risk := box_fallback_risk(state.info, state.config)) is not None:
            reasons.append(f"{cid}: {risk}")
        view = published.charger(cid)
        mode, record = view.mode, view.decision
        if down and mode in controller.modes_reading_meter:
            reasons.append(f"{cid}: mode {mode} needs the meters: {'; '.join(down)}")
        elif record is not None and record.decision.source is Source.FALLBACK:
            reasons.append(f"{cid}: {record.decision.reason or 'on its fallback'}")
    reasons.extend(f"line {lid}: {line.problem}" for lid, line in controller.lines().items() if line.problem)
    return meters, reasons
