"""A :class:`~surplus.modbus.base.Bus` straight onto simulator models, without Modbus.

For fake-clock tests of the driver and the control loop: the same register
semantics and exceptions as the wire, none of the I/O. The heartbeat runs on
the injected clock, so an hour of beats costs milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from surplus.clock import Clock
from surplus.modbus.base import BusError, ModbusExceptionReply

from .model import AmtronModel

log = logging.getLogger(__name__)

_FC_WRITE_SINGLE = 0x06
_FC_WRITE_MULTIPLE = 0x10


class ModelBus:
    """In-memory bus: device id -> :class:`AmtronModel`."""

    def __init__(self, models: Mapping[int, AmtronModel], clock: Clock) -> None:
        self.models = models
        self._clock = clock
        self._heartbeats: dict[int, asyncio.Task[None]] = {}
        #: Set to True to make the line go quiet (every transaction: "no answer").
        self.silent = False

    @property
    def connected(self) -> bool:
        """True unless the bus was made silent."""
        return not self.silent

    def _model(self, device_id: int) -> AmtronModel:
        model = self.models.get(device_id)
        if model is None or self.silent:
            raise BusError(f"device {device_id}: no answer")
        return model

    async def read(self, device_id: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers from ``address`` (as FC 0x03)."""
        return self._model(device_id).read(address, count)

    async def write_register(self, device_id: int, address: int, value: int) -> None:
        """Write one register (as FC 0x06)."""
        self._model(device_id).write(address, [value], _FC_WRITE_SINGLE)

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None:
        """Write several registers (as FC 0x10)."""
        self._model(device_id).write(address, list(values), _FC_WRITE_MULTIPLE)

    def poll_turn(self, device_id: int, *, urgent: bool = False, reads: tuple[int, ...] = ()) -> bool:
        """Always True: memory has no wire time to budget."""
        return True

    def start_heartbeat(self, device_id: int, address: int, value: int, interval_s: float) -> None:
        """Write ``value`` now, then every ``interval_s`` of the clock, until stopped."""
        self.stop_heartbeat(device_id)
        self._beat(device_id, address, value)
        self._heartbeats[device_id] = asyncio.get_running_loop().create_task(
            self._run_heartbeat(device_id, address, value, interval_s)
        )

    def stop_heartbeat(self, device_id: int) -> None:
        """Stop that device's heartbeat (no-op when none runs)."""
        task = self._heartbeats.pop(device_id, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Cancel every heartbeat task and wait for them to end."""
        tasks = list(self._heartbeats.values())
        self._heartbeats.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _beat(self, device_id: int, address: int, value: int) -> None:
        try:
            self._model(device_id).write(address, [value], _FC_WRITE_SINGLE)
        except ModbusExceptionReply as exc:
            log.warning("heartbeat to device %d refused: %s (exception %d)", device_id, exc, exc.code)
        except BusError as exc:
            log.warning("heartbeat to device %d failed: %s", device_id, exc)

    async def _run_heartbeat(self, device_id: int, address: int, value: int, interval_s: float) -> None:
        while True:
            await self._clock.sleep(interval_s)
            self._beat(device_id, address, value)
