"""The simulator model on a fake clock: state machine, limits, heartbeat, phases, energy."""

from __future__ import annotations

import math

import pytest

from surplus.clock import FakeClock
from surplus.modbus import codec
from surplus.modbus import registers as R
from surplus.modbus.base import ModbusExceptionReply
from surplus.sim.model import PROFILE_22KW, AmtronModel, DeviceProfile, EvProfile, profile_by_name


def get(model: AmtronModel, reg: R.Register) -> codec.Value:
    return codec.decode(reg, model.read(reg.address, reg.count))


def put(model: AmtronModel, reg: R.Register, value: codec.Value) -> None:
    fc = 0x10 if reg.count > 1 else 0x06
    model.write(reg.address, codec.encode(reg, value), fc)


def beat(model: AmtronModel) -> None:
    put(model, R.HEARTBEAT_EM, R.HEARTBEAT_VALUE)


def start(model: AmtronModel, amps: float = 16.0) -> None:
    beat(model)
    put(model, R.CHARGING_RELEASE_EM, 1)
    put(model, R.CHARGING_CURRENT_EM, amps)


def step(clock: FakeClock, model: AmtronModel, seconds: float, *, every: float = 5.0) -> None:
    """Let time pass while a well-behaved master keeps the heartbeat going."""
    end = clock.now() + seconds
    while clock.now() < end:
        clock.set(min(end, clock.now() + every))
        beat(model)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_state_sequence_plug_in_release_current_accept(clock: FakeClock) -> None:
    m = AmtronModel(clock)
    seen = [(m.evse_state, m.cp_state)]
    m.plug_in(EvProfile(accept_delay_s=2.0))
    seen.append((m.evse_state, m.cp_state))
    beat(m)
    put(m, R.CHARGING_RELEASE_EM, 1)
    seen.append((m.evse_state, m.cp_state))  # released, but no current yet
    put(m, R.CHARGING_CURRENT_EM, 10.0)
    seen.append((m.evse_state, m.cp_state))
    clock.set(clock.now() + 1.9)
    seen.append((m.evse_state, m.cp_state))
    clock.set(clock.now() + 0.2)
    seen.append((m.evse_state, m.cp_state))
    assert seen == [(1, 10), (3, 11), (3, 11), (4, 27), (4, 27), (5, 28)]
    assert get(m, R.SIGNALED_CURRENT) == 10.0
    assert get(m, R.AUTHORIZATION_STATUS) == 1
    assert get(m, R.DOWNGRADE_STATUS) == 1
    assert m.charging_current_a == 10.0
    m.unplug()
    assert (m.evse_state, m.cp_state, get(m, R.SIGNALED_CURRENT), get(m, R.AUTHORIZATION_STATUS)) == (
        1,
        10,
        0.0,
        0,
    )


@pytest.mark.parametrize(
    ("em_a", "signaled_a", "state"),
    [
        (0.0, 16.0, 5),  # 0 = no limitation: the device maximum, not "stop"!
        (5.99, 0.0, 3),  # soft pause
        (0.01, 0.0, 3),
        (6.0, 6.0, 5),
        (10.5, 10.5, 5),
        (32.0, 16.0, 5),  # clamped to MAX_CURRENT_EVSE of an 11 kW unit
    ],
)
def test_em_current_semantics(clock: FakeClock, em_a: float, signaled_a: float, state: int) -> None:
    m = AmtronModel(clock, ev=EvProfile(max_current_a=32.0))
    start(m, em_a)
    step(clock, m, 5)
    assert (get(m, R.SIGNALED_CURRENT), m.evse_state) == (signaled_a, state)
    assert get(m, R.CHARGING_RELEASE_EM) == 1
    assert m.charging_current_a == signaled_a


def test_effective_current_is_the_minimum_of_all_limits(clock: FakeClock) -> None:
    m = AmtronModel(clock, profile=PROFILE_22KW, ev=EvProfile(max_current_a=20.0))
    start(m, 0.0)
    step(clock, m, 5)
    assert get(m, R.SIGNALED_CURRENT) == 32.0
    assert m.charging_current_a == 20.0  # the car's own limit
    m.set_downgrade(True)
    step(clock, m, 5)
    assert get(m, R.SIGNALED_CURRENT) == 16.0
    assert get(m, R.DOWNGRADE_STATUS) == 2
    put(m, R.SETTING_MAX_CURRENT_EVSE, 5)  # 10 A
    assert get(m, R.MAX_CURRENT_EVSE) == 10.0
    assert get(m, R.SIGNALED_CURRENT) == 10.0


@pytest.mark.parametrize(
    ("layout", "amps", "accepted"),
    [
        (0x0102, 6.0, False),
        (0x0102, 6.01, True),
        (0x0103, 6.0, True),
        (0x0103, 32.01, False),
        (0x0103, -1.0, False),
        (0x0103, math.nan, False),
        (0x0103, math.inf, False),
    ],
)
def test_current_values_refused_with_exception_3(
    clock: FakeClock, layout: int, amps: float, accepted: bool
) -> None:
    m = AmtronModel(clock, profile=DeviceProfile(layout_version=layout))
    before = m.em_current_a
    if accepted:
        put(m, R.CHARGING_CURRENT_EM, amps)
        assert m.em_current_a == pytest.approx(amps, abs=1e-5)
    else:
        with pytest.raises(ModbusExceptionReply) as exc:
            put(m, R.CHARGING_CURRENT_EM, amps)
        assert exc.value.code == 3
        assert m.em_current_a == before
        assert m.record.refused_writes[-1].exception_code == 3


def test_release_zero_is_a_hard_pause_and_lock_prevents_charging(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile())
    start(m, 10)
    step(clock, m, 5)
    assert m.evse_state == 5
    put(m, R.CHARGING_RELEASE_EM, 0)
    assert (m.evse_state, m.charging_current_a, get(m, R.AUTHORIZATION_STATUS)) == (3, 0.0, 2)
    put(m, R.CHARGING_RELEASE_EM, 1)
    step(clock, m, 5)
    assert m.evse_state == 5
    put(m, R.LOCK_EVSE, 1)
    step(clock, m, 5)
    assert (m.evse_state, m.charging_current_a) == (2, 0.0)


#: A box whose heartbeat-loss fallback (0x073A) was never set: 0 = "keep the last master values".
FALLBACK_OFF = DeviceProfile(master_lost_fallback_current_a=0)


def test_heartbeat_loss_without_a_car_gives_error_200_after_10_s(clock: FakeClock) -> None:
    m = AmtronModel(clock)
    start(m, 10)
    clock.set(clock.now() + 10.0)  # exactly 10 s: still fine
    assert (m.evse_state, m.error_code) == (1, 0)
    clock.set(clock.now() + 0.01)
    assert (m.evse_state, m.error_code, m.charging_current_a) == (6, 200, 0.0)
    assert get(m, R.ACTIVE_ERROR_CODE) == 200
    assert get(m, R.MASTER_LOST_FALLBACK_STATE) == 1


def test_fallback_0_keeps_charging_with_the_last_master_values(clock: FakeClock) -> None:
    """The spec: 0 = fallback disabled, the EVSE keeps the last received master values (no error)."""
    m = AmtronModel(clock, profile=FALLBACK_OFF, ev=EvProfile())
    start(m, 10)
    step(clock, m, 5)
    assert m.evse_state == 5
    clock.set(clock.now() + 10.0)
    assert get(m, R.MASTER_LOST_FALLBACK_STATE) == 0
    clock.set(clock.now() + 3600.0)  # an hour without an energy manager
    assert (m.evse_state, m.error_code, m.charging_current_a) == (5, 0, 10.0)
    assert (get(m, R.MASTER_LOST_FALLBACK_STATE), get(m, R.SIGNALED_CURRENT)) == (1, 10.0)
    m.unplug()  # the car leaves: nothing to keep, the box reports the missing manager
    assert (m.evse_state, m.error_code) == (6, 200)


def test_fallback_0_with_a_paused_master_stays_paused(clock: FakeClock) -> None:
    m = AmtronModel(clock, profile=FALLBACK_OFF, ev=EvProfile())
    start(m, 3)  # the soft-pause value
    clock.set(clock.now() + 60.0)
    assert (m.evse_state, m.error_code, m.charging_current_a) == (3, 0, 0.0)


def test_fallback_0_and_a_car_but_no_master_ever_is_error_200(clock: FakeClock) -> None:
    m = AmtronModel(clock, profile=FALLBACK_OFF, ev=EvProfile())
    clock.set(clock.now() + 10.5)
    assert (m.evse_state, m.error_code) == (6, 200)


def test_a_freshly_booted_box_without_a_master_goes_to_error_200(clock: FakeClock) -> None:
    m = AmtronModel(clock)
    clock.set(clock.now() + 10.5)
    assert (m.evse_state, m.error_code) == (6, 200)


@pytest.mark.parametrize(
    ("sequence", "recovered"),
    [
        (["hb", "release", "current"], True),
        (["hb", "release", "hb", "current"], True),  # a heartbeat task in between is fine
        (["release", "hb", "current"], False),
        (["hb", "current", "release"], False),
        (["current", "release"], False),
        (["hb", "release", "release0", "current"], False),
        (["hb"], False),
    ],
)
def test_recovery_only_in_the_order_heartbeat_release_current(
    clock: FakeClock, sequence: list[str], recovered: bool
) -> None:
    m = AmtronModel(clock, profile=FALLBACK_OFF, ev=EvProfile())
    clock.set(clock.now() + 11)
    assert m.error_code == 200
    actions = {
        "hb": lambda: beat(m),
        "release": lambda: put(m, R.CHARGING_RELEASE_EM, 1),
        "release0": lambda: put(m, R.CHARGING_RELEASE_EM, 0),
        "current": lambda: put(m, R.CHARGING_CURRENT_EM, 8.0),
    }
    for action in sequence:
        actions[action]()
        clock.set(clock.now() + 1)
    assert (m.error_code == 0) is recovered
    if recovered:
        step(clock, m, 5)
        assert (m.evse_state, m.charging_current_a) == (5, 8.0)
        assert get(m, R.MASTER_LOST_FALLBACK_STATE) == 0
    else:
        assert m.evse_state == 6


@pytest.mark.parametrize(("fallback", "amps", "state"), [(0, 12.0, 5), (1, 0.0, 3), (8, 8.0, 5)])
def test_configured_fallback_applies_while_a_car_is_connected(
    clock: FakeClock, fallback: int, amps: float, state: int
) -> None:
    m = AmtronModel(clock, ev=EvProfile())
    put(m, R.SETTING_FALLBACK_CURRENT, fallback)
    assert get(m, R.MASTER_LOST_FALLBACK_CURRENT) == fallback
    start(m, 12)
    step(clock, m, 5)
    assert m.charging_current_a == 12.0
    clock.set(clock.now() + 20)
    assert (m.error_code, m.master_lost, m.charging_current_a, m.evse_state) == (0, True, amps, state)
    beat(m)  # the master is back: its values count again, no error to clear
    step(clock, m, 5)
    assert (m.master_lost, m.charging_current_a) == (False, 12.0)


def test_fallback_without_a_car_is_error_200(clock: FakeClock) -> None:
    m = AmtronModel(clock)
    put(m, R.SETTING_FALLBACK_CURRENT, 8)
    clock.set(clock.now() + 11)
    assert m.error_code == 200


@pytest.mark.parametrize("value", [0, 1, 0x55AB, 0xAA55])
def test_only_0x55aa_is_a_heartbeat(clock: FakeClock, value: int) -> None:
    m = AmtronModel(clock)
    with pytest.raises(ModbusExceptionReply) as exc:
        m.write(R.HEARTBEAT_EM.address, [value], 0x06)
    assert exc.value.code == 3
    assert m.record.heartbeats == []


def test_phase_switch_runs_the_box_pause(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile(accept_delay_s=2.0))
    put(m, R.SETTING_PHASE_SWITCHING_PAUSE, 30)
    start(m, 16)
    step(clock, m, 5)
    assert (m.evse_state, m.charging_phases, m.charging_power_w) == (5, 3, 16 * 3 * 230)
    put(m, R.REQUESTED_PHASES, 1)
    assert get(m, R.SWITCHED_PHASES) == 1
    assert (m.evse_state, m.charging_current_a, get(m, R.SIGNALED_CURRENT)) == (4, 0.0, 0.0)
    step(clock, m, 29, every=1)
    assert m.evse_state == 4
    step(clock, m, 3, every=1)  # pause over, plus the car's accept delay
    assert (m.evse_state, m.charging_phases, m.charging_current_a) == (5, 1, 16.0)
    assert get(m, R.CURRENT_L2) == 0.0 and get(m, R.CURRENT_L1) > 15.9
    assert get(m, R.REQUESTED_PHASES) == 1


def test_phase_switch_while_idle_is_immediate_and_ev_phases_limit_the_draw(clock: FakeClock) -> None:
    m = AmtronModel(clock)
    put(m, R.REQUESTED_PHASES, 1)
    put(m, R.REQUESTED_PHASES, 0)
    assert get(m, R.SWITCHED_PHASES) == 0
    m.plug_in(EvProfile(phases=1))
    start(m, 16)
    step(clock, m, 5)
    assert (m.charging_phases, get(m, R.DETECTED_EV_PHASES)) == (1, 1)


@pytest.mark.parametrize(("profile", "code"), [(PROFILE_22KW, 3), (DeviceProfile(phase_options_hw=0), 3)])
def test_phase_switch_refused_without_hardware(clock: FakeClock, profile: DeviceProfile, code: int) -> None:
    m = AmtronModel(clock, profile=profile)
    with pytest.raises(ModbusExceptionReply) as exc:
        put(m, R.REQUESTED_PHASES, 1)
    assert exc.value.code == code
    assert get(m, R.SWITCHED_PHASES) == 0


def test_energy_integrates_16a_three_phases_for_an_hour(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile(capacity_wh=100_000, soc=0.1, accept_delay_s=0.0))
    total0 = m.energy_total_wh
    sessions0 = get(m, R.CHARGING_SESSIONS_TOTAL)
    start(m, 16)
    step(clock, m, 3600)
    assert m.energy_total_wh - total0 == pytest.approx(16 * 3 * 230, rel=1e-6)
    assert get(m, R.CHARGED_ENERGY_SESSION) == pytest.approx(11.04, rel=1e-5)
    assert get(m, R.CHARGED_ENERGY_TOTAL) == pytest.approx((total0 + 11040) / 1000, rel=1e-6)
    assert get(m, R.SESSION_DURATION) == 3600
    assert get(m, R.SESSION_MAX_CURRENT) == 16.0
    assert get(m, R.DETECTED_EV_PHASES) == 3
    assert m.soc == pytest.approx(0.1 + 11040 / 100_000)
    assert get(m, R.POWER_OVERALL) == pytest.approx(11040, rel=0.02)
    assert 200 < get(m, R.VOLTAGE_L3) < 260  # type: ignore[operator]
    assert get(m, R.TEMPERATURE) > 40  # type: ignore[operator]
    m.unplug()
    m.plug_in(EvProfile())
    assert get(m, R.CHARGING_SESSIONS_TOTAL) == sessions0 + 1  # type: ignore[operator]
    assert get(m, R.CHARGED_ENERGY_SESSION) == 0.0


def test_energy_does_not_depend_on_how_often_anybody_reads(clock: FakeClock) -> None:
    results = []
    for every in (1.0, 7.0):
        c = FakeClock()
        m = AmtronModel(c, ev=EvProfile(accept_delay_s=3.3))
        start(m, 11)
        step(c, m, 600, every=every)
        results.append(m.energy_total_wh)
    assert results[0] == pytest.approx(results[1], rel=1e-12)


def test_battery_fills_and_stops_drawing(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile(capacity_wh=10_000, soc=0.9, target_soc=1.0, accept_delay_s=0.0))
    start(m, 16)
    step(clock, m, 1800)
    assert m.soc == 1.0
    assert (m.evse_state, m.charging_current_a) == (4, 0.0)  # B2: current offered, car full
    assert m.session_energy_wh == pytest.approx(1000.0)


@pytest.mark.parametrize(
    ("reg", "code"),
    [(R.EVSE_STATE, 2), (R.MAX_CURRENT_EVSE, 2), (R.ACTIVE_ERROR_CODE, 2), (R.FIRMWARE_VERSION, 2)],
)
def test_writes_to_read_only_registers_are_refused(clock: FakeClock, reg: R.Register, code: int) -> None:
    m = AmtronModel(clock)
    before = m.values()[reg.name]
    with pytest.raises(ModbusExceptionReply) as exc:
        m.write(reg.address, [1] * reg.count, 0x10)
    assert exc.value.code == code
    assert m.values()[reg.name] == before


@pytest.mark.parametrize(
    ("address", "count"),
    [
        (0x0000, 35),  # crosses the gap after FIRMWARE_VERSION
        (0x0D00, 1),  # heartbeat is write-only
        (0x0D00, 7),
        (0x0200, 1),  # unmapped
        (0x0303, 1),  # splits CHARGING_CURRENT_EM
        (0x0500, 126),  # more than a request may ask
    ],
)
def test_reads_refused_like_the_firmware(clock: FakeClock, address: int, count: int) -> None:
    with pytest.raises(ModbusExceptionReply):
        AmtronModel(clock).read(address, count)


def test_registers_newer_than_the_layout_are_absent(clock: FakeClock) -> None:
    m = AmtronModel(clock, profile=DeviceProfile(layout_version=0x0102))
    assert get(m, R.SERIAL_NUMBER) == "SIM0000001"
    for reg in (R.SIGNALED_CURRENT, R.ARTICLE_NUMBER, R.SETTING_FALLBACK_CURRENT):
        with pytest.raises(ModbusExceptionReply):
            m.read(reg.address, reg.count)


def test_whole_map_reads_and_word_order_is_configurable(clock: FakeClock) -> None:
    big = AmtronModel(clock, ev=EvProfile())
    little = AmtronModel(clock, ev=EvProfile(), word_order="little")
    for reg in R.REGISTERS:
        if reg.access.readable:
            assert len(big.read(reg.address, reg.count)) == reg.count
    assert codec.decode(R.MAX_CURRENT_EVSE, little.read(0x0306, 2), "little") == 16.0
    assert codec.decode(R.MAX_CURRENT_EVSE, little.read(0x0306, 2), "big") != 16.0
    assert get(big, R.FIRMWARE_VERSION) == "5.22.3"
    assert get(big, R.MODBUS_LAYOUT_VERSION) == 0x0103


def test_deterministic_with_the_same_seed() -> None:
    def run(seed: int) -> list[list[int]]:
        c = FakeClock()
        m = AmtronModel(c, seed=seed, ev=EvProfile())
        start(m, 13)
        out = []
        for _ in range(20):
            step(c, m, 3)
            out.append(m.read(0x0500, 20) + m.read(0x0900, 2))
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_restart_only_while_idle_and_resets_em_values(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile())
    start(m, 10)
    with pytest.raises(ModbusExceptionReply):
        put(m, R.SYSTEM_RESTART, R.RESTART_VALUE)
    m.unplug()
    put(m, R.SYSTEM_RESTART, R.RESTART_VALUE)
    assert (m.release, m.em_current_a) == (0, 0.0)


def test_record_keeps_heartbeats_and_current_changes(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile())
    start(m, 10)
    step(clock, m, 12, every=4)
    put(m, R.CHARGING_CURRENT_EM, 10)
    put(m, R.CHARGING_CURRENT_EM, 12)
    assert m.record.worst_heartbeat_gap_s == 4.0
    assert [a for _, a in m.record.current_writes] == [10.0, 10.0, 12.0]
    assert [a for _, a in m.record.current_changes] == [10.0, 12.0]
    assert m.record.writes[0].register == "HEARTBEAT_EM"


def test_profiles_by_name() -> None:
    assert profile_by_name("22kW").max_current_evse_a == 32.0
    with pytest.raises(ValueError, match="unknown simulator profile"):
        profile_by_name("7kw")


def test_a_device_error_stops_charging_until_cleared(clock: FakeClock) -> None:
    m = AmtronModel(clock, ev=EvProfile(accept_delay_s=1.0))
    start(m, 10)
    step(clock, m, 5)
    m.set_error(2011)
    assert (m.evse_state, m.cp_state, get(m, R.ACTIVE_ERROR_CODE), m.charging_current_a) == (6, 14, 2011, 0.0)
    m.set_error(0)
    step(clock, m, 5)
    assert (m.evse_state, m.charging_current_a) == (5, 10.0)


@pytest.mark.parametrize(
    ("address", "values", "fc", "code"),
    [
        (0x0302, [0x4120], 0x06, 2),  # half a float
        (0x0D05, [1, 1], 0x06, 3),  # FC 6 carries one word
        (0x0D05, [1], 0x05, 1),  # not a register write
        (0x0D05, [2], 0x06, 3),
        (0x0D04, [5], 0x06, 3),
        (0x073A, [3], 0x06, 3),  # fallback 2..5 A is not a valid setting
        (0x0D07, [1], 0x06, 2),  # unmapped
    ],
)
def test_malformed_writes_are_refused_and_change_nothing(
    clock: FakeClock, address: int, values: list[int], fc: int, code: int
) -> None:
    m = AmtronModel(clock)
    before = m.values()
    with pytest.raises(ModbusExceptionReply) as exc:
        m.write(address, values, fc)
    assert exc.value.code == code
    after = m.values()
    assert {k: after[k] for k in ("CHARGING_CURRENT_EM", "CHARGING_RELEASE_EM", "REQUESTED_PHASES")} == {
        k: before[k] for k in ("CHARGING_CURRENT_EM", "CHARGING_RELEASE_EM", "REQUESTED_PHASES")
    }
    assert m.record.writes[-1].exception_code == code


def test_multi_register_writes_are_all_or_nothing(clock: FakeClock) -> None:
    m = AmtronModel(clock)
    with pytest.raises(ModbusExceptionReply):
        m.write(R.SOLAR_CHARGING_MODE.address, [2, 0, 7], 0x10)  # release=7 is invalid
    assert (get(m, R.SOLAR_CHARGING_MODE), m.release) == (0, 0)
    m.write(R.SOLAR_CHARGING_MODE.address, [2, 0, 1], 0x10)
    assert (get(m, R.SOLAR_CHARGING_MODE), m.release) == (2, 1)
