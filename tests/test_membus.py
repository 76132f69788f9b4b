"""ModelBus: the Bus protocol on simulator models, driven by a fake clock."""

from __future__ import annotations

import pytest

from surplus.clock import FakeClock
from surplus.modbus import codec
from surplus.modbus import registers as R
from surplus.modbus.base import BusError, ModbusExceptionReply
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile


async def test_an_hour_of_heartbeats_keeps_the_box_out_of_error_200() -> None:
    clock = FakeClock()
    model = AmtronModel(clock)
    bus = ModelBus({50: model}, clock)
    t0 = clock.now()
    bus.start_heartbeat(50, R.HEARTBEAT_EM.address, R.HEARTBEAT_VALUE, 5.0)
    assert model.record.heartbeats == [t0]  # the first one right away
    await clock.advance(3600)
    assert len(model.record.heartbeats) == 721
    assert model.record.worst_heartbeat_gap_s == 5.0
    assert model.error_code == 0
    await bus.close()


async def test_stopping_the_heartbeat_ends_in_error_200() -> None:
    clock = FakeClock()
    model = AmtronModel(clock)
    bus = ModelBus({50: model}, clock)
    bus.start_heartbeat(50, R.HEARTBEAT_EM.address, R.HEARTBEAT_VALUE, 5.0)
    await clock.advance(60)
    bus.stop_heartbeat(50)
    n = len(model.record.heartbeats)
    await clock.advance(30)
    assert len(model.record.heartbeats) == n
    assert model.error_code == 200
    await bus.close()


async def test_a_wrong_heartbeat_value_is_refused_and_does_not_count() -> None:
    clock = FakeClock()
    model = AmtronModel(clock)
    bus = ModelBus({50: model}, clock)
    bus.start_heartbeat(50, R.HEARTBEAT_EM.address, 0x1234, 5.0)
    await clock.advance(30)
    assert model.record.heartbeats == []
    assert model.error_code == 200
    await bus.close()


async def test_reads_writes_exceptions_and_unknown_ids() -> None:
    clock = FakeClock()
    a, b = AmtronModel(clock, ev=EvProfile()), AmtronModel(clock, seed=1)
    bus = ModelBus({50: a, 11: b}, clock)
    await bus.write_registers(50, R.CHARGING_CURRENT_EM.address, codec.encode(R.CHARGING_CURRENT_EM, 9.5))
    await bus.write_register(50, R.CHARGING_RELEASE_EM.address, 1)
    assert (a.em_current_a, a.release, b.em_current_a, b.release) == (9.5, 1, 0.0, 0)
    words = await bus.read(50, R.CHARGING_CURRENT_EM.address, 2)
    assert codec.decode(R.CHARGING_CURRENT_EM, words) == 9.5
    assert codec.decode(R.EVSE_STATE, await bus.read(11, R.EVSE_STATE.address, 1)) == 1
    with pytest.raises(ModbusExceptionReply) as exc:
        await bus.write_register(50, R.EVSE_STATE.address, 1)
    assert exc.value.code == 2
    with pytest.raises(BusError, match="no answer"):
        await bus.read(12, 0, 1)
    bus.silent = True
    assert not bus.connected
    with pytest.raises(BusError, match="no answer"):
        await bus.read(50, 0, 1)
    await bus.close()
