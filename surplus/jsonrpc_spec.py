"""The JSON-RPC method table: error codes, typed parameters, method entries, the OpenRPC document.

A :class:`MethodSpec` with its :class:`Param` entries is the single source of
truth for one method: the dispatcher (:mod:`surplus.jsonrpc`) validates and
authorizes calls from it, and :func:`openrpc_document` describes it for
``rpc.discover``. Pure data and checks; :mod:`surplus.jsonrpc` re-exports every
name, so the method modules import from one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .checks import is_number

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: Application errors (Node server's code): stale data, refused by the governor, timeouts.
SERVER_ERROR = -32000
#: A method that needs ``Authorization: Bearer <token>`` was called without it.
UNAUTHORIZED = -32001

ParamKind = Literal["number", "integer", "boolean", "string", "time"]
#: Takes the validated parameters; returns the result, or an awaitable of it. Plain functions
#: (the snapshot reads) are dispatched without creating a task, which is most of their cost.
Handler = Callable[[dict[str, Any]], Any]


class RpcError(Exception):
    """Raised by handlers: becomes a JSON-RPC error object with this code, message and data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_params(message: str) -> RpcError:
    """A ``-32602`` error whose message tells a person what to send instead."""
    return RpcError(INVALID_PARAMS, message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One parameter of a method: its JSON type, range or choices, and whether it is required."""

    name: str
    kind: ParamKind
    doc: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    def describe(self) -> str:
        """What a valid value looks like, for error messages."""
        if self.choices is not None:
            return f"{self.name} must be one of {', '.join(json.dumps(c) for c in self.choices)}"
        if self.kind == "time":
            return f"{self.name} must be an ISO 8601 time with a timezone or a number of seconds from now"
        article = "an" if self.kind == "integer" else "a"
        text = f"{self.name} must be {article} {self.kind}"
        if self.minimum is not None and self.maximum is not None:
            text += f" between {self.minimum:g} and {self.maximum:g}"
        elif self.minimum is not None:
            text += f" of at least {self.minimum:g}"
        return text

    def check(self, value: Any) -> Any:
        """Return ``value`` normalised to its kind, or raise a -32602 :class:`RpcError`."""
        if self.kind == "boolean":
            ok = isinstance(value, bool)
        elif self.kind == "string":
            ok = isinstance(value, str)
        elif self.kind == "time":
            ok = isinstance(value, str) or is_number(value)
        elif self.kind == "integer":
            ok = is_number(value) and float(value).is_integer()
            if ok:
                value = int(value)
        else:
            ok = is_number(value)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if ok and self.maximum is not None and value > self.maximum:
            ok = False
        if not ok:
            raise invalid_params(self.describe())
        return value

    def schema(self) -> dict[str, Any]:
        """JSON Schema of the parameter (for OpenRPC)."""
        if self.kind == "time":
            return {
                "oneOf": [
                    {"type": "string", "format": "date-time"},
                    {"type": "number", "exclusiveMinimum": 0, "description": "seconds from now"},
                ]
            }
        schema: dict[str, Any] = {"type": self.kind}
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodSpec:
    """One JSON-RPC method: the table entry the dispatcher and OpenRPC are both made from."""

    name: str
    doc: str
    handler: Handler
    params: tuple[Param, ...] = ()
    #: Changes something (needs the token when one is configured).
    write: bool = False
    #: JSON Schema of the result.
    result: Mapping[str, Any]

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate positional or named parameters; return the named, normalised values."""
        if args and kwargs:
            raise invalid_params("params must be either an array or an object, not both")
        if len(args) > len(self.params):
            raise invalid_params(f"{self.name} takes at most {len(self.params)} positional parameter(s)")
        given = dict(zip((p.name for p in self.params), args, strict=False)) if args else dict(kwargs)
        known = {p.name for p in self.params}
        unknown = sorted(k for k in given if k not in known)
        if unknown:
            expected = ", ".join(p.name for p in self.params) or "no parameters"
            raise invalid_params(f"unknown parameter {unknown[0]!r} for {self.name} (expected: {expected})")
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in given and given[p.name] is not None:
                out[p.name] = p.check(given[p.name])
            elif p.required:
                raise invalid_params(f"{p.name} is required: {p.describe()}")
        return out


def openrpc_document(methods: Sequence[MethodSpec], *, title: str, version: str) -> dict[str, Any]:
    """An OpenRPC 1.2 document describing exactly ``methods``."""
    return {
        "openrpc": "1.2.6",
        "info": {"title": title, "version": version},
        "methods": [
            {
                "name": m.name,
                "description": m.doc,
                "paramStructure": "either",
                "params": [
                    {"name": p.name, "description": p.doc, "required": p.required, "schema": p.schema()}
                    for p in m.params
                ],
                "result": {"name": f"{m.name}Result", "schema": dict(m.result)},
                "x-write": m.write,
            }
            for m in methods
        ],
    }
