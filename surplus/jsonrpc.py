"""JSON-RPC 2.0 over a table of methods; the only module that imports jsonrpcserver.

The method table (:class:`MethodSpec` with typed :class:`Param` entries) is the
single source of truth: the dispatcher validates parameters from it, checks
authorization from its ``write`` flag, and generates the OpenRPC document that
``rpc.discover`` returns, so the served methods and their description cannot
drift apart.

jsonrpcserver does the request/response bookkeeping (method lookup, ids,
notifications, result objects). It checks neither types nor the request schema
cheaply, and it sends ``str(exc)`` for uncaught exceptions, so this module
parses and validates requests itself, validates parameters from the table, and
turns every unexpected exception into a bare ``-32603 Internal error``.

The table's types and the error codes live in :mod:`surplus.jsonrpc_spec` and
are re-exported here.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonrpcserver import Error, Result, Success, async_dispatch_to_serializable, dispatch_to_serializable

from .checks import is_number
from .jsonrpc_spec import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    UNAUTHORIZED,
    Handler,
    MethodSpec,
    Param,
    ParamKind,
    RpcError,
    invalid_params,
    openrpc_document,
)

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_ERROR",
    "UNAUTHORIZED",
    "Dispatcher",
    "Handler",
    "MethodSpec",
    "Param",
    "ParamKind",
    "RpcError",
    "dumps",
    "error_object",
    "invalid_params",
    "openrpc_document",
    "without_paths",
]

log = logging.getLogger(__name__)

_REQUEST_KEYS = frozenset(("jsonrpc", "method", "params", "id"))


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; echoing them back (e.g. as an id) would produce invalid JSON.
    raise ValueError(f"invalid JSON constant {name}")


def _parse(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)


def _valid_request(obj: Any) -> bool:
    if not isinstance(obj, dict) or not obj.keys() <= _REQUEST_KEYS:
        return False
    if obj.get("jsonrpc") != "2.0" or not isinstance(obj.get("method"), str):
        return False
    if "params" in obj and not isinstance(obj["params"], list | dict):
        return False
    if "id" in obj:
        rid = obj["id"]
        return rid is None or isinstance(rid, str) or is_number(rid)
    return True


def error_object(code: int, message: str, rid: Any = None) -> dict[str, Any]:
    """A complete JSON-RPC error response."""
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": rid}


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


#: An absolute filesystem path of two or more parts: /dev/ttyUSB0, /dev/pts/3, /var/lib/surplus/x.json.
#: Not "/metrics", "pause/resume", "1/3" or the path of a URL (http://host:8080/x, tcp://host:502).
_PATH = re.compile(r"(?<![\w/:.~@-])/[\w.+~@-]+(?:/[\w.+~@-]*)+")


def _no_path(match: re.Match[str]) -> str:
    return "<serial port>" if match.group().startswith("/dev/") else "<path>"


def without_paths(text: str) -> str:
    """``text`` with each filesystem path replaced by ``<serial port>`` (under /dev/) or ``<path>``.

    Error texts come from the bus, pyserial and the OS and often name the port
    (``could not open port /dev/ttyUSB0: [Errno 2] No such file or directory``);
    replies say what went wrong without saying where things are on the machine.
    The log keeps the paths.
    """
    return _PATH.sub(_no_path, text)


def dumps(obj: Any) -> bytes:
    """Serialise a reply; a non-finite float (never valid JSON) becomes null, a filesystem path ``<path>``."""
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(obj), allow_nan=False, separators=(",", ":"))
    # The path characters include neither '"' nor '\\', so this cannot break the JSON.
    return without_paths(text).encode()


def _error_result(spec: MethodSpec, exc: Exception) -> Result:
    if isinstance(exc, RpcError):
        return Error(exc.code, exc.message) if exc.data is None else Error(exc.code, exc.message, exc.data)
    # Never leak exception text or paths to clients; the log has the traceback.
    log.error("RPC method %s failed", spec.name, exc_info=exc)
    return Error(INTERNAL_ERROR, "Internal error")


def _log_late_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("RPC write failed after its reply timed out", exc_info=task.exception())


@dataclass(frozen=True, slots=True)
class _Context:
    authorized: bool


class Dispatcher:
    """Dispatches JSON-RPC request bodies to a method table.

    ``rpc.discover`` is added to the table and describes the whole table,
    itself included. ``auth_writes``/``auth_reads`` say which methods need an
    authorized request; the web layer decides what authorized means.
    """

    def __init__(
        self,
        methods: Sequence[MethodSpec],
        *,
        title: str,
        version: str,
        max_batch: int = 50,
        auth_writes: bool = False,
        auth_reads: bool = False,
        call_timeout_s: float = 10.0,
    ) -> None:
        discover = MethodSpec(
            name="rpc.discover",
            doc="The OpenRPC 1.2 document describing every method of this server.",
            handler=self._discover,
            result={"type": "object", "required": ["openrpc", "info", "methods"]},
        )
        specs = [*methods, discover]
        names = [m.name for m in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate method names in the RPC table")
        self.specs: Mapping[str, MethodSpec] = {m.name: m for m in specs}
        self._doc = openrpc_document(specs, title=title, version=version)
        self._max_batch = max_batch
        self._auth_writes = auth_writes
        self._auth_reads = auth_reads
        self._timeout_s = call_timeout_s
        self._lib_methods = {m.name: self._adapter(m) for m in specs}

    def _discover(self, _args: dict[str, Any]) -> Any:
        return self._doc

    def openrpc(self) -> dict[str, Any]:
        """The document ``rpc.discover`` returns."""
        return self._doc

    def _bind(
        self, spec: MethodSpec, ctx: _Context, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        needs_auth = self._auth_writes if spec.write else self._auth_reads
        if needs_auth and not ctx.authorized:
            raise RpcError(
                UNAUTHORIZED, f"unauthorized: {spec.name} needs the header Authorization: Bearer <token>"
            )
        return spec.bind(args, kwargs)

    def _adapter(self, spec: MethodSpec) -> Callable[..., Any]:
        # ctx is positional-only so any parameter name (even "ctx") lands in kwargs.
        call: Callable[..., Any]
        if inspect.iscoroutinefunction(spec.handler):

            async def call(ctx: _Context, /, *args: Any, **kwargs: Any) -> Result:
                try:
                    bound = self._bind(spec, ctx, args, kwargs)
                    # Never cancelled half-way: on timeout the reply says so and the controller
                    # finishes (or refuses) on its own.
                    task = asyncio.ensure_future(spec.handler(bound))
                    try:
                        return Success(await asyncio.wait_for(asyncio.shield(task), self._timeout_s))
                    except TimeoutError:
                        task.add_done_callback(_log_late_failure)
                        raise RpcError(
                            SERVER_ERROR, f"{spec.name} timed out after {self._timeout_s:g} s"
                        ) from None
                except Exception as exc:
                    return _error_result(spec, exc)

        else:

            def call(ctx: _Context, /, *args: Any, **kwargs: Any) -> Result:
                try:
                    return Success(spec.handler(self._bind(spec, ctx, args, kwargs)))
                except Exception as exc:
                    return _error_result(spec, exc)

        # jsonrpcserver binds arguments with inspect.signature() on every call; a precomputed
        # signature makes that lookup cheap (it was a third of the dispatch time).
        adapter: Any = call
        adapter.__signature__ = inspect.signature(call)
        return call

    async def _one(self, request: dict[str, Any], ctx: _Context) -> dict[str, Any] | None:
        # The request is already parsed and validated; hand the object straight to the library.
        spec = self.specs.get(request["method"])
        kwargs: dict[str, Any] = {
            "methods": self._lib_methods,
            "context": ctx,
            "deserializer": lambda _text: request,
            "validator": lambda obj: obj,
        }
        if spec is not None and inspect.iscoroutinefunction(spec.handler):
            reply = await async_dispatch_to_serializable("", **kwargs)
        else:
            reply = dispatch_to_serializable("", **kwargs)
        return reply if isinstance(reply, dict) else None

    async def call(self, method: str, params: Mapping[str, Any], *, authorized: bool) -> dict[str, Any]:
        """One request made inside the process (the MQTT bridge's commands): the JSON-RPC
        reply object, JSON-safe (as :func:`dumps` would send it), with ``result`` or ``error``."""
        request = {"jsonrpc": "2.0", "method": method, "params": dict(params), "id": 1}
        reply = await self._one(request, _Context(authorized))
        out: dict[str, Any] = json.loads(dumps(reply))
        return out

    async def handle(
        self, body: bytes, *, authorized: bool, on_parse_error: Callable[[str], None] | None = None
    ) -> bytes | None:
        """Reply to one HTTP request body; None when there is nothing to send (notifications only).

        ``on_parse_error`` is told why a body is not JSON (the server logs it as one line).
        """
        ctx = _Context(authorized)
        try:
            parsed = _parse(body)
        except Exception as exc:  # invalid UTF-8, invalid JSON, nesting too deep...
            if on_parse_error is not None:
                on_parse_error(f"not JSON ({type(exc).__name__}: {exc})")
            return dumps(error_object(PARSE_ERROR, "Parse error"))
        if isinstance(parsed, list):
            if not parsed:
                return dumps(error_object(INVALID_REQUEST, "Invalid request: empty batch"))
            if len(parsed) > self._max_batch:
                return dumps(
                    error_object(
                        INVALID_REQUEST, f"Invalid request: batch of {len(parsed)} exceeds {self._max_batch}"
                    )
                )
            replies: list[dict[str, Any]] = []
            # One after another, in order: writes in a batch apply in the order they were sent.
            for item in parsed:
                if not _valid_request(item):
                    replies.append(error_object(INVALID_REQUEST, "Invalid request"))
                    continue
                reply = await self._one(item, ctx)
                if reply is not None:
                    replies.append(reply)
            return dumps(replies) if replies else None
        if not _valid_request(parsed):
            return dumps(error_object(INVALID_REQUEST, "Invalid request"))
        reply = await self._one(parsed, ctx)
        return None if reply is None else dumps(reply)
