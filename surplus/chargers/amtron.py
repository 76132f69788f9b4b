"""The MENNEKES AMTRON Compact 2.0s / 4You 300 / Start 2.0s driver.

It reads through the read plan (:mod:`surplus.modbus.plan`), derives what the
device can do from the device's own registers, and writes only what the
safety governor approved (:meth:`AmtronCharger.execute`), in the order the box
needs. Every bus failure becomes a one-line :class:`ChargerError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Literal

from ..clock import Clock
from ..modbus import plan
from ..modbus import registers as R
from ..modbus.base import Bus, BusError, PortUnavailable
from ..modbus.codec import Value, WordOrder, decode_words
from ..modbus.registers import Register
from ..types import (
    Capabilities,
    ChargerConfig,
    ChargerState,
    Command,
    DeviceInfo,
    ReadGroup,
    box_fallback_risk,
)
from .amtron_values import (
    capabilities_from,
    config_from,
    current_problem,
    in_error,
    state_from,
    word_order_warning,
    write_steps,
)
from .base import ChargerError

log = logging.getLogger(__name__)

#: Device ids tried when none is configured: the satellite default, then the Node server's default.
PROBE_IDS = (50, 1)
#: How often the registers our writes change (and session, temperature) are read back
#: when we wrote nothing: another master or a reboot shows within this time.
CONTROL_EVERY_S = 5.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


class AmtronCharger:
    """Implements :class:`surplus.chargers.base.Charger` for one AMTRON on a :class:`Bus`."""

    def __init__(
        self,
        bus: Bus,
        *,
        charger_id: str,
        clock: Clock,
        device_id: int | None = None,
        word_order: Literal["big", "little"] = "big",
        heartbeat_interval_s: float = 3.0,
        heartbeat_enabled: bool = True,
        box_fallback_a: int | None = None,
    ) -> None:
        if device_id is not None and not 1 <= device_id <= 247:
            raise ValueError(f"device_id must be 1..247, not {device_id}")
        if heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat_interval_s must be positive, not {heartbeat_interval_s}")
        self.charger_id = charger_id
        self._bus = bus
        self._clock = clock
        self._configured_id = device_id
        self._device_id = device_id
        self._word_order: WordOrder = word_order
        self._heartbeat_interval_s = heartbeat_interval_s
        self._heartbeat_enabled = heartbeat_enabled
        #: Opt-in: the heartbeat-loss fallback (0x073A) to write at start (None: leave it).
        self._box_fallback_a = box_fallback_a
        self._fallback_warned = False
        self._info: DeviceInfo | None = None
        self._config: ChargerConfig | None = None
        self._capabilities: Capabilities | None = None
        self._last_state: ChargerState | None = None
        #: The latest value of every register read so far (each poll refreshes its part).
        self._latest: dict[str, Value] = {}
        #: When CONTROL_POLL was last read; a write makes it due at once.
        self._control_read_at: float | None = None
        self._control_due = False
        #: When FULL_POLL (identity, configuration) was last read.
        self._full_read_at: float | None = None
        self._groups: Mapping[ReadGroup, float] | None = None
        self._groups_key: tuple[float | None, float | None] = (None, None)
        self._heartbeat_running = False
        #: A full read was asked for while it was another box's turn on the line: done at the next.
        self._full_pending = False
        #: The EVSE state changed on the last read (the next read is urgent).
        self._state_moved = False
        #: Why the last read failed (None: it worked); repeated while the box waits for its turn.
        self._read_error: str | None = None
        #: Per poll set and layout: the planned reads.
        self._plans: dict[tuple[str, int], tuple[plan.Span, ...]] = {}
        #: Per span start: the words last read, their span and what they decoded to.
        self._decoded: dict[int, tuple[list[int], plan.Span, Mapping[str, Value]]] = {}

    # --- properties ----------------------------------------------------------
    @property
    def device_id(self) -> int | None:
        """The Modbus id in use (None until :meth:`start` found the device)."""
        return self._device_id

    @property
    def info(self) -> DeviceInfo | None:
        return self._info

    @property
    def capabilities(self) -> Capabilities | None:
        return self._capabilities

    # --- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Find the device, start its heartbeat, read info and configuration."""
        device_id = await self._find_device()
        self._device_id = device_id
        if self._heartbeat_enabled:
            self._bus.start_heartbeat(
                device_id, R.HEARTBEAT_EM.address, R.HEARTBEAT_VALUE, self._heartbeat_interval_s
            )
            self._heartbeat_running = True
        else:
            log.warning("%s: heartbeat disabled; the AMTRON will not accept EM control", self.charger_id)
        try:
            await self._read_identity()
            await self._check_word_order()
            await self._set_box_fallback()
        except ChargerError:
            self._stop_heartbeat()
            raise
        info, caps = self._info, self._capabilities
        assert info is not None and caps is not None
        risk = box_fallback_risk(info, self._require_config())
        if risk is not None and not self._fallback_warned:
            log.warning("%s: %s", self.charger_id, risk)
            self._fallback_warned = True
        log.info(
            "%s: AMTRON on device id %d, layout %s, firmware %s, max %.0f A, %d phases%s",
            self.charger_id,
            device_id,
            info.layout_text,
            info.firmware_version or "?",
            caps.max_current_a,
            caps.grid_phases,
            ", phase switching" if caps.phase_switching else "",
        )

    async def stop(self) -> None:
        """Stop the heartbeat (the loop sends the safe-state command first)."""
        self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat_running and self._device_id is not None:
            self._bus.stop_heartbeat(self._device_id)
        self._heartbeat_running = False

    async def _find_device(self) -> int:
        candidates = (self._configured_id,) if self._configured_id is not None else PROBE_IDS
        errors: dict[int, str] = {}
        port_missing = False
        for device_id in candidates:
            try:
                await self._bus.read(
                    device_id, R.MODBUS_LAYOUT_VERSION.address, R.MODBUS_LAYOUT_VERSION.count
                )
            except BusError as exc:
                errors[device_id] = _one_line(str(exc))
                port_missing = isinstance(exc, PortUnavailable)
                continue
            if self._configured_id is None:
                log.info("%s: AMTRON answered on device id %d", self.charger_id, device_id)
            return device_id
        ids = " or ".join(str(i) for i in candidates)
        texts = set(errors.values())
        why = texts.pop() if len(texts) == 1 else "; ".join(f"id {i}: {t}" for i, t in errors.items())
        if port_missing:  # the port itself is missing: say that, not "no AMTRON answered"
            raise ChargerError(f"{self.charger_id}: {why}")
        raise ChargerError(f"{self.charger_id}: no AMTRON answered on device id {ids} ({why})")

    # --- reading -------------------------------------------------------------
    def _require_id(self) -> int:
        if self._device_id is None:
            raise ChargerError(f"{self.charger_id}: not started")
        return self._device_id

    async def _read(self, registers: Iterable[Register], layout: int | None) -> dict[str, Value]:
        return await self._read_spans(plan.plan_reads(registers, layout=layout))

    async def _read_spans(self, spans: Iterable[plan.Span]) -> dict[str, Value]:
        device_id = self._require_id()
        values: dict[str, Value] = {}
        for span in spans:
            try:
                words = await self._bus.read(device_id, span.address, span.count)
            except BusError as exc:
                raise ChargerError(
                    f"{self.charger_id}: reading {span.label} failed: {_one_line(str(exc))}"
                ) from None
            # Most spans read the same words poll after poll: decode each content once.
            seen = self._decoded.get(span.address)
            if seen is not None and seen[0] == words and seen[1] is span:
                values.update(seen[2])
                continue
            decoded = decode_words(span.registers, span.address, words, self._word_order)
            self._decoded[span.address] = (words, span, decoded)
            values.update(decoded)
        return values

    def _poll_spans(self, name: str, layout: int) -> tuple[plan.Span, ...]:
        """The planned reads of a poll set ("fast", "control", "fast+control", "full"), planned once."""
        key = (name, layout)
        spans = self._plans.get(key)
        if spans is None:
            registers = {
                "fast": plan.FAST_POLL,
                "fast+control": plan.FAST_POLL + plan.CONTROL_POLL,
                "control": plan.CONTROL_POLL,
                "full": plan.FULL_POLL,
            }[name]
            spans = self._plans[key] = tuple(plan.plan_reads(registers, layout=layout))
        return spans

    async def _read_identity(self) -> None:
        layout_values = await self._read([R.MODBUS_LAYOUT_VERSION], None)
        layout = int(layout_values[R.MODBUS_LAYOUT_VERSION.name])
        if layout not in R.MODBUS_LAYOUT_VERSION.enum:
            log.warning(
                "%s: unknown register layout 0x%04X; reading it as the nearest known one",
                self.charger_id,
                layout,
            )
        self._apply_identity(layout, await self._read([*plan.INFO, *plan.CONFIG], layout))

    def _apply_identity(self, layout: int, values: Mapping[str, Value]) -> None:
        device_id = self._require_id()
        self._info = DeviceInfo(
            layout_version=layout,
            firmware_version=str(values.get(R.FIRMWARE_VERSION.name, "")),
            serial_number=str(values.get(R.SERIAL_NUMBER.name, "")),
            article_number=str(values.get(R.ARTICLE_NUMBER.name, "")),
            device_id=device_id,
        )
        self._config = config_from(values)
        self._capabilities = capabilities_from(self._config, layout, self.charger_id)

    def _require_config(self) -> ChargerConfig:
        if self._config is None:
            raise ChargerError(f"{self.charger_id}: configuration not read yet")
        return self._config

    async def _set_box_fallback(self) -> None:
        """Write ``box_fallback_a`` to 0x073A where the box has it, and check its mirror 0x030E.

        A box that refuses it (an older layout, an exception reply) keeps its setting:
        that is said in the log and start-up goes on, since the heartbeat still guards it.
        """
        wanted = self._box_fallback_a
        if wanted is None or self._info is None:
            return
        have = self._require_config().master_lost_fallback_current_a
        if have == wanted:
            log.info("%s: heartbeat-loss fallback is %d, as configured", self.charger_id, wanted)
            return
        layout = self._info.layout_version
        if layout < R.SETTING_FALLBACK_CURRENT.since_layout:
            log.warning(
                "%s: control.box_fallback_a: layout %s has no writable fallback (0x073A); the box keeps %d",
                self.charger_id,
                self._info.layout_text,
                have,
            )
            return
        device_id = self._require_id()
        try:
            await self._write(device_id, str(wanted), R.SETTING_FALLBACK_CURRENT, [wanted])
        except ChargerError as exc:
            log.warning("%s: control.box_fallback_a not applied: %s", self.charger_id, exc)
            return
        await self._read_identity()  # the mirror (0x030E) and everything derived from it
        now = self._require_config().master_lost_fallback_current_a
        if now == wanted:
            log.info("%s: heartbeat-loss fallback set to %d (was %d)", self.charger_id, wanted, have)
        else:
            log.warning(
                "%s: wrote heartbeat-loss fallback %d but 0x030E reads %d", self.charger_id, wanted, now
            )

    async def _check_word_order(self) -> None:
        device_id = self._require_id()
        try:
            words = await self._bus.read(device_id, R.VOLTAGE_L1.address, R.VOLTAGE_L1.count)
        except BusError as exc:
            raise ChargerError(
                f"{self.charger_id}: reading VOLTAGE_L1 failed: {_one_line(str(exc))}"
            ) from None
        warning = word_order_warning(words, self._word_order)
        if warning is not None:
            log.warning("%s: %s", self.charger_id, warning)

    async def read_state(self, *, full: bool = False) -> ChargerState:
        """Read the device: :data:`plan.FAST_POLL` always, :data:`plan.CONTROL_POLL`
        after any write and every ``CONTROL_EVERY_S``, all of :data:`plan.FULL_POLL`
        with ``full`` (or the first time).

        Registers not read this time keep their value from the read that last
        covered them; after a write the readback is always fresh, so the governor
        never judges our own write by an older value.

        When the line's budget is short (:meth:`Bus.poll_turn` says it is another box's
        turn), nothing is read: the last state comes back with its own ``read_at_s`` (or
        the last read's error again), and a ``full`` read waits for the box's next turn.
        A box written to since its last read, or whose EVSE state changed on it, is
        read at once (urgent).
        """
        if self._info is None:
            await self._read_identity()
        assert self._info is not None
        layout = self._info.layout_version
        full = full or self._full_pending
        urgent = self._last_state is None or self._control_due or self._state_moved
        words = tuple(span.count for span in self._poll_spans("fast", layout))
        if not self._bus.poll_turn(self._require_id(), urgent=urgent, reads=words):
            self._full_pending = full
            if self._read_error is not None:
                raise ChargerError(self._read_error)
            assert self._last_state is not None  # a box never read is always urgent
            return self._last_state
        try:
            state = await self._poll(full, layout)
        except ChargerError as exc:
            self._read_error = str(exc)
            raise
        self._read_error = None
        self._full_pending = False
        return state

    async def _poll(self, full: bool, layout: int) -> ChargerState:
        assert self._info is not None
        read_at = self._clock.now()
        before = self._latest.get(R.EVSE_STATE.name)
        if full or not self._latest:
            self._control_due = False  # a write during the read makes it due again
            values = await self._read_spans(self._poll_spans("full", layout))
            self._apply_identity(int(values.get(R.MODBUS_LAYOUT_VERSION.name, layout)), values)
            self._latest = dict(values)
            self._control_read_at = self._full_read_at = read_at
        else:
            due = (
                self._control_due
                or self._control_read_at is None
                or read_at - self._control_read_at >= CONTROL_EVERY_S
            )
            self._control_due = False
            polled = self._poll_spans("fast+control" if due else "fast", layout)
            self._latest.update(await self._read_spans(polled))
            if not due and self._latest.get(R.EVSE_STATE.name) != before:
                # The state moved (plugged, charging, paused): read the CP state, release and
                # session with it, so no reply pairs the new state with the old ones.
                self._latest.update(await self._read_spans(self._poll_spans("control", layout)))
                due = True
            if due:
                self._control_read_at = read_at
        self._state_moved = before is not None and self._latest.get(R.EVSE_STATE.name) != before
        info, config, caps = self._info, self._config, self._capabilities
        assert info is not None and config is not None and caps is not None
        key = (self._control_read_at, self._full_read_at)
        groups = self._groups
        if groups is None or key != self._groups_key:  # a new map only when a group was read
            assert self._control_read_at is not None and self._full_read_at is not None
            self._groups_key = key
            self._groups = groups = MappingProxyType(
                {ReadGroup.CONTROL: self._control_read_at, ReadGroup.CONFIGURATION: self._full_read_at}
            )
        state = state_from(
            self._latest,
            charger_id=self.charger_id,
            read_at_s=read_at,
            info=info,
            config=config,
            caps=caps,
            groups=groups,
        )
        self._last_state = state
        return state

    # --- writing -------------------------------------------------------------
    async def execute(self, command: Command) -> None:
        """Write what the governor approved, in the order the AMTRON needs.

        Pausing: release off before anything else. Starting: phases, then the
        current, then release on. In error state (6, or error 200 after a lost
        heartbeat) the documented recovery order: heartbeat, release, current.
        The whole command is checked before the first write.
        """
        self._validate(command)
        device_id = self._require_id()
        caps = self._capabilities
        assert caps is not None
        steps = write_steps(command, caps, self._word_order, error=await self._in_error_state())
        self._control_due = True  # read back what we wrote on the next poll
        for step in steps:
            await self._write(device_id, *step)

    def _validate(self, command: Command) -> None:
        if command.charger_id != self.charger_id:
            raise ChargerError(f"{self.charger_id}: command is for {command.charger_id!r}")
        problem = None if command.current_a is None else current_problem(command.current_a)
        if problem is not None:
            raise ChargerError(f"{self.charger_id}: {problem}")
        if command.phases is not None and command.phases not in (1, 3):
            raise ChargerError(f"{self.charger_id}: refusing phases {command.phases!r} (1 or 3)")
        if self._capabilities is None:
            raise ChargerError(f"{self.charger_id}: not started")

    async def _in_error_state(self) -> bool:
        state = self._last_state
        if state is not None:
            evse, error = state.evse_state, state.error_code
        else:
            values = await self._read([R.EVSE_STATE, R.ACTIVE_ERROR_CODE], None)
            evse, error = int(values[R.EVSE_STATE.name]), int(values[R.ACTIVE_ERROR_CODE.name])
        return in_error(evse, error)

    async def _write(self, device_id: int, shown: str, reg: Register, words: list[int]) -> None:
        try:
            if reg.count == 1:
                await self._bus.write_register(device_id, reg.address, words[0])
            else:
                await self._bus.write_registers(device_id, reg.address, words)
        except BusError as exc:
            raise ChargerError(
                f"{self.charger_id}: writing {reg.name}={shown} failed: {_one_line(str(exc))}"
            ) from None
        log.debug("%s: wrote %s=%s", self.charger_id, reg.name, shown)
