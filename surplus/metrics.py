"""``/metrics``: the latest snapshot in Prometheus text format.

A collector on a per-app :class:`CollectorRegistry` (no global state) reads
``controller.snapshot()`` at scrape time, so a scrape never touches the bus.
The charger gauges come from one table, like Home Assistant's entity
descriptions: a new metric is one row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .api import ControllerAPI
from .types import ChargerState


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerMetric:
    """One row of the table: a gauge per charger (and per phase when ``phases`` is set)."""

    name: str
    doc: str
    value: Callable[[ChargerState], float] | None = None
    #: For per-phase metrics: L1, L2, L3 getters.
    phases: tuple[Callable[[ChargerState], float], ...] = ()


CHARGER_METRICS: tuple[ChargerMetric, ...] = (
    ChargerMetric(
        name="evse_state",
        doc="EVSE_STATE (1 idle, 2-4 connected, 5 charging, 6 error)",
        value=lambda s: s.evse_state,
    ),
    ChargerMetric(
        name="error_code",
        doc="ACTIVE_ERROR_CODE (0 none, 200 energy manager lost)",
        value=lambda s: s.error_code,
    ),
    ChargerMetric(
        name="charging_release",
        doc="CHARGING_RELEASE_EM (1 released)",
        value=lambda s: float(s.charging_release),
    ),
    ChargerMetric(
        name="current_limit_amperes",
        doc="CHARGING_CURRENT_EM read back (0 means no limit)",
        value=lambda s: s.current_limit_a,
    ),
    ChargerMetric(
        name="signaled_current_amperes",
        doc="Current signalled to the EV",
        value=lambda s: s.signaled_current_a,
    ),
    ChargerMetric(name="active_phases", doc="Phases the box uses (1 or 3)", value=lambda s: s.active_phases),
    ChargerMetric(
        name="current_amperes",
        doc="Output current per phase",
        phases=(lambda s: s.current_l1_a, lambda s: s.current_l2_a, lambda s: s.current_l3_a),
    ),
    ChargerMetric(
        name="voltage_volts",
        doc="Output voltage per phase",
        phases=(lambda s: s.voltage_l1_v, lambda s: s.voltage_l2_v, lambda s: s.voltage_l3_v),
    ),
    ChargerMetric(name="power_watts", doc="Active power, all phases", value=lambda s: s.power_total_w),
    ChargerMetric(
        name="temperature_celsius", doc="Temperature inside the EVSE", value=lambda s: s.temperature_c
    ),
    ChargerMetric(
        name="session_energy_wh", doc="Energy of the current session", value=lambda s: s.session_energy_wh
    ),
)


class SnapshotCollector(Collector):
    """Yields the controller's latest snapshot as metric families."""

    def __init__(self, controller: ControllerAPI) -> None:
        self._c = controller

    def collect(self) -> Iterator[Metric]:
        snap = self._c.snapshot()
        lag = max(0.0, self._c.clock.now() - snap.at_s)
        chargers = [(cid, snap.chargers.get(cid)) for cid in self._c.charger_ids]

        age = GaugeMetricFamily(
            "surplus_charger_data_age_seconds", "Age of the last good charger read", labels=["charger"]
        )
        up = GaugeMetricFamily("surplus_charger_connected", "1 while the charger answers", labels=["charger"])
        for cid, reading in chargers:
            up.add_metric([cid], float(reading is not None and reading.connected))
            if reading is not None and math.isfinite(reading.age_s):
                age.add_metric([cid], reading.age_s + lag)
        yield up
        yield age

        states = [(cid, r.state) for cid, r in chargers if r is not None and r.state is not None]
        for row in CHARGER_METRICS:
            name = f"surplus_charger_{row.name}"
            if row.phases:
                fam = GaugeMetricFamily(name, row.doc, labels=["charger", "phase"])
                for cid, state in states:
                    for i, get in enumerate(row.phases, start=1):
                        fam.add_metric([cid, f"L{i}"], float(get(state)))
            else:
                fam = GaugeMetricFamily(name, row.doc, labels=["charger"])
                for cid, state in states:
                    assert row.value is not None
                    fam.add_metric([cid], float(row.value(state)))
            yield fam
        energy = CounterMetricFamily(
            "surplus_charger_energy_wh", "Lifetime charged energy (CHARGED_ENERGY_TOTAL)", labels=["charger"]
        )
        for cid, state in states:
            energy.add_metric([cid], state.energy_total_wh)
        yield energy

        grid = GaugeMetricFamily(
            "surplus_meter_grid_power_watts", "Grid power, + import / - export", labels=["meter"]
        )
        pv = GaugeMetricFamily("surplus_meter_pv_power_watts", "PV power", labels=["meter"])
        meter_age = GaugeMetricFamily(
            "surplus_meter_age_seconds", "Age of the meter reading", labels=["meter"]
        )
        for mid, m in snap.meters.items():
            grid.add_metric([mid], m.grid_power_w)
            meter_age.add_metric([mid], m.age_s + lag)
            if m.pv_power_w is not None:
                pv.add_metric([mid], m.pv_power_w)
        yield grid
        yield pv
        yield meter_age

        setpoint = GaugeMetricFamily(
            "surplus_decision_current_amperes",
            "Current the last decision asked for (0 = pause)",
            labels=["charger", "source"],
        )
        for cid in self._c.charger_ids:
            record = self._c.last_decision(cid)
            if record is not None:
                d = record.decision
                setpoint.add_metric([cid, d.source.value], (d.current_a or 0.0) if d.charge else 0.0)
        yield setpoint


def metrics_endpoint(controller: ControllerAPI) -> Callable[[], tuple[bytes, str]]:
    """What ``surplus.web.start_web(metrics=...)`` serves at ``GET /metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(controller))

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return render
