"""Register values <-> 16-bit words, through pymodbus's own converters.

Word order is configurable because the specification PDF says low word first
while every working implementation reads high word first ("big", the default);
see the register notes. Strings are ASCII, NUL padded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal

from pymodbus.client.mixin import ModbusClientMixin

from .registers import Register, RegType

WordOrder = Literal["big", "little"]
Value = int | float | str

_DT = ModbusClientMixin.DATATYPE
_DATATYPE = {RegType.UINT16: _DT.UINT16, RegType.UINT32: _DT.UINT32, RegType.FLOAT32: _DT.FLOAT32}


def decode(reg: Register, words: Sequence[int], word_order: WordOrder = "big") -> Value:
    """Decode the ``reg.count`` words of one register into its Python value."""
    if len(words) != reg.count:
        raise ValueError(f"{reg.name}: expected {reg.count} words, got {len(words)}")
    if reg.type is RegType.STRING:
        raw = b"".join(int(w).to_bytes(2, "big") for w in words)
        return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").strip()
    return _decode_number(reg.type, tuple(words), word_order)


@functools.lru_cache(maxsize=4096)
def _decode_number(type_: RegType, words: tuple[int, ...], word_order: WordOrder) -> int | float:
    # Memoised: most registers read the same words poll after poll, and the
    # fake-clock tests poll thousands of times per simulated hour.
    value = ModbusClientMixin.convert_from_registers(list(words), _DATATYPE[type_], word_order=word_order)
    assert isinstance(value, (int, float))
    if type_ is RegType.FLOAT32:
        # A float32 holds about 7 significant digits; showing more is noise (9.100000381 for 9.1).
        return float(f"{value:.7g}")
    return value


def encode(reg: Register, value: Value, word_order: WordOrder = "big") -> list[int]:
    """Encode a value into the words to write (or, in the simulator, to serve)."""
    if reg.type is RegType.STRING:
        raw = str(value).encode("ascii", errors="replace")[: reg.count * 2].ljust(reg.count * 2, b"\x00")
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if reg.type is RegType.FLOAT32:
        return ModbusClientMixin.convert_to_registers(float(value), _DT.FLOAT32, word_order=word_order)
    return ModbusClientMixin.convert_to_registers(int(value), _DATATYPE[reg.type], word_order=word_order)


def decode_span(
    registers: Iterable[Register], start: int, words: Sequence[int], word_order: WordOrder = "big"
) -> Mapping[str, Value]:
    """Decode every register of ``registers`` that lies inside words read from ``start`` (read-only)."""
    return _decode_span(tuple(registers), start, tuple(words), word_order)


@functools.lru_cache(maxsize=256)
def _decode_span(
    registers: tuple[Register, ...], start: int, words: tuple[int, ...], word_order: WordOrder
) -> Mapping[str, Value]:
    # Memoised per span: status, configuration and diagnostics read back the
    # same words tick after tick; the result is shared, hence read-only.
    return MappingProxyType(decode_words(registers, start, words, word_order))


def decode_words(
    registers: Sequence[Register], start: int, words: Sequence[int], word_order: WordOrder = "big"
) -> dict[str, Value]:
    """Like :func:`decode_span`, without the memo (for callers that keep their own)."""
    out: dict[str, Value] = {}
    for reg in registers:
        lo = reg.address - start
        if lo < 0 or lo + reg.count > len(words):
            continue
        out[reg.name] = decode(reg, words[lo : lo + reg.count], word_order)
    return out
