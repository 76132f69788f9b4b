"""The HTTP polling every HTTP meter shares (types "http", "fronius", "shelly").

:class:`JsonPoller` owns one :class:`aiohttp.ClientSession` per meter (created by
``start()``, closed by ``stop()``) and does one GET per ``get_json()`` within a
total timeout. Every failure becomes a :class:`MeterHttpError` whose message is
one line: ``meter <id>: <url without credentials>: <what went wrong>``.

The option helpers here check what these meters have in common: ``url``,
``host``/``port``, ``timeout_s``, ``headers`` and dotted JSON paths.
Credentials in a URL (``http://user:pass@host/``) are sent as HTTP basic auth
and never shown.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from yarl import URL

from surplus.meter import MeterEnv
from surplus.options import OptionError, number

#: A device answer larger than this is not a meter reading.
MAX_BODY_BYTES = 1 << 20
_SECRET_QUERY = re.compile(r"pass|pwd|token|key|secret|auth|sig", re.IGNORECASE)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

Path = tuple[str, ...]


class MeterHttpError(Exception):
    """A failed HTTP meter read; ``str()`` is one line naming meter, URL and cause."""


# ---------------------------------------------------------------------------- options


def shown_url(url: URL) -> str:
    """``url`` for messages: no user or password, secret-looking query values masked."""
    safe = url.with_user(None) if url.user is not None or url.password is not None else url
    if safe.query:
        masked = [(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in safe.query.items()]
        safe = safe.with_query(masked)
    return str(safe)


def timeout_option(options: Mapping[str, Any]) -> float:
    """``timeout_s``: the bound on one whole request (connect, send, answer)."""
    return number(options, "timeout_s", 2.0, lo=0.05, hi=60.0, unit="s")


def device_url(options: Mapping[str, Any], path: str, query: Mapping[str, str] | None = None) -> URL:
    """``http://{host}:{port}{path}`` from the ``host`` (required) and ``port`` (80) options."""
    host = options.get("host")
    if host is None:
        raise OptionError("host", "required: the device's host name or IP address")
    if not isinstance(host, str) or not host.strip():
        raise OptionError("host", f"expected a host name or IP address, got {host!r}")
    host = host.strip()
    if "/" in host or "@" in host or any(c.isspace() for c in host):
        raise OptionError("host", f"{host!r} is not a host name or IP address (give only the host)")
    port = options.get("port", 80)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise OptionError("port", f"expected a port number 1..65535, got {port!r}")
    try:
        return URL.build(scheme="http", host=host, port=port, path=path, query=query)
    except ValueError as exc:
        raise OptionError("host", f"{host!r} is not a host name or IP address ({exc})") from None


def url_option(options: Mapping[str, Any], name: str = "url") -> URL:
    """An absolute ``http://`` or ``https://`` URL."""
    value = options.get(name)
    if value is None:
        raise OptionError(
            name, "required: the http:// or https:// URL to read, like 'http://192.168.1.20/status'"
        )
    if not isinstance(value, str) or not value.strip():
        raise OptionError(name, f"expected an http:// or https:// URL, got {value!r}")
    try:
        url = URL(value.strip())
    except ValueError:
        raise OptionError(name, "not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise OptionError(name, f"expected an http:// or https:// URL, got {shown_url(url)!r}")
    return url


def path_option(options: Mapping[str, Any], name: str, *, required: bool) -> Path | None:
    """A dotted JSON path such as ``data.grid.power`` (number parts index lists)."""
    value = options.get(name)
    if value is None:
        if not required:
            return None
        raise OptionError(name, "required: the dotted path to the value in the JSON, like 'data.grid.power'")
    if not isinstance(value, str) or not value.strip():
        raise OptionError(name, f"expected a dotted path like 'data.grid.power', got {value!r}")
    parts = tuple(p.strip() for p in value.strip().split("."))
    if any(not p for p in parts):
        raise OptionError(name, f"{value!r} has an empty part")
    return parts


def headers_option(options: Mapping[str, Any], name: str = "headers") -> dict[str, str]:
    """A mapping of header names to string values (values are never echoed: they may be tokens)."""
    value = options.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OptionError(name, "expected a mapping of header names to values")
    headers: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _HEADER_NAME.match(key):
            raise OptionError(name, f"{key!r} is not a valid header name")
        if not isinstance(val, str) or "\n" in val or "\r" in val:
            raise OptionError(name, f"the value of {key!r} must be a one-line string")
        headers[key] = val
    return headers


# ---------------------------------------------------------------------------- polling


def basic_auth(username: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def dotted(path: Sequence[str]) -> str:
    """``("a", "0", "b")`` -> ``"a.0.b"``."""
    return ".".join(path)


class JsonPoller:
    """One HTTP session for one meter: GET a JSON document, turn failures into one-line errors."""

    def __init__(
        self,
        meter_id: str,
        url: URL,
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        middlewares: Sequence[Any] = (),
    ) -> None:
        self.meter_id = meter_id
        self._headers = dict(headers or {})
        if url.user is not None:  # credentials in the URL become a header, so no URL carries them
            self._headers.setdefault("Authorization", basic_auth(url.user, url.password or ""))
            url = url.with_user(None)
        self.url = url
        self.timeout_s = timeout_s
        self._middlewares = tuple(middlewares)
        self._session: aiohttp.ClientSession | None = None
        self.shown = shown_url(url)

    async def start(self) -> None:
        """Create the session (no I/O yet: the first GET connects)."""
        if self._session is None or self._session.closed:
            kwargs: dict[str, Any] = {}
            if self._middlewares:
                kwargs["middlewares"] = self._middlewares
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers=self._headers,
                cookie_jar=aiohttp.DummyCookieJar(),
                **kwargs,
            )

    async def stop(self) -> None:
        """Close the session; safe to call twice."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return "the device closed the connection"
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"bad answer ({exc.message})"  # its str() repeats the full URL
        # aiohttp may quote the URL it fetched: show ours, which hides secrets in the query.
        return f"{type(exc).__name__}: {exc}".replace(str(self.url), self.shown)

    def error(self, what: str) -> MeterHttpError:
        """An error for this meter and URL, squeezed onto one line."""
        line = " ".join(f"meter {self.meter_id}: {self.shown}: {what}".split())
        return MeterHttpError(line)

    async def get_json(self) -> Any:
        """One GET; the parsed JSON document or a :class:`MeterHttpError`."""
        if self._session is None or self._session.closed:
            await self.start()  # start() failed or was never called: the session costs no I/O
        assert self._session is not None
        try:
            async with self._session.get(self.url) as resp:
                if resp.status >= 400:
                    raise self.error(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
                body = await resp.content.read(MAX_BODY_BYTES + 1)
        except MeterHttpError:
            raise
        except TimeoutError:
            raise self.error(f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            errno = exc.os_error.errno
            why = os.strerror(errno) if errno else exc.os_error.strerror or str(exc)
            raise self.error(f"cannot connect ({why.lower()})") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise self.error(f"HTTP failed: {self._describe(exc)}") from None
        if len(body) > MAX_BODY_BYTES:
            raise self.error(f"answer larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise self.error("invalid JSON (not UTF-8 text)") from None
        except json.JSONDecodeError as exc:
            raise self.error(f"invalid JSON ({exc.msg})") from None

    def field(self, doc: Any, path: Sequence[str]) -> Any:
        """The value at ``path``; a missing part is an error naming the whole path."""
        node = doc
        for part in path:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise self.error(f"field {dotted(path)} missing")
        return node

    def number(self, doc: Any, path: Sequence[str], *, null_ok: bool = False) -> float | None:
        """A finite number at ``path``; ``null`` gives ``None`` when ``null_ok``, else an error."""
        value = self.field(doc, path)
        if value is None:
            if null_ok:
                return None
            raise self.error(f"field {dotted(path)} is null")
        if isinstance(value, bool) or not isinstance(value, int | float):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise self.error(f"field {dotted(path)} is {shown}, not a number")
        if not math.isfinite(value):
            raise self.error(f"field {dotted(path)} is not a finite number")
        return float(value)


def charger_power_w(env: MeterEnv) -> float:
    """What the chargers draw now (0 without a callback or an answer)."""
    if env.charger_power_w is None:
        return 0.0
    value = env.charger_power_w()
    return float(value) if value is not None else 0.0


def house_without_chargers(env: MeterEnv, total_w: float | None) -> float | None:
    """A device's total consumption minus the chargers, never below zero."""
    if total_w is None:
        return None
    # The device and the charger are read a moment apart; a house cannot feed the grid.
    return round(max(0.0, total_w - charger_power_w(env)), 1)
