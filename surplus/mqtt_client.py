"""aiomqtt helpers shared by the MQTT meter and the MQTT bridge.

Connecting and disconnecting so that a cancel or a broker that never answers
leaves no socket or helper task behind, and one-line reasons for a lost
connection (never containing credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl

import aiomqtt
from aiomqtt.exceptions import MqttConnectError


async def connect(client: aiomqtt.Client) -> None:
    """Enter ``client``'s context; on any failure or cancel, leave nothing open behind."""
    attempt = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(attempt)
    except asyncio.CancelledError:
        # Cancelled midway, aiomqtt keeps a half-open socket and its helper task. The
        # attempt is bounded (paho's connect timeout, then aiomqtt's CONNACK timeout),
        # so let it end and undo it properly.
        await asyncio.wait({attempt})
        if attempt.cancelled() or attempt.exception() is not None:
            abandon(client)
        else:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
        raise
    except Exception:
        abandon(client)
        raise


async def helper_ended(client: aiomqtt.Client, timeout_s: float) -> None:
    """Wait (bounded) until aiomqtt's per-connection helper task has ended.

    It ends a loop pass or two after the socket closes; waiting here means
    ``stop()`` returns with no task of ours left running.
    """
    helper = getattr(client, "_misc_task", None)
    if isinstance(helper, asyncio.Task) and not helper.done():
        await asyncio.wait({helper}, timeout=timeout_s)


def abandon(client: aiomqtt.Client) -> None:
    """Close a connection that never completed (aiomqtt leaves it open after a CONNACK timeout)."""
    paho = getattr(client, "_client", None)
    if paho is not None:
        # Queues DISCONNECT; paho closes the socket once it is sent, and aiomqtt then
        # stops its helper task. Without a socket this is a no-op.
        with contextlib.suppress(Exception):
            paho.disconnect()


def tls_context(tls: bool, ca_file: str | None) -> ssl.SSLContext | None:
    """A client's TLS context (None: plain TCP): the broker's certificate is checked against
    ``ca_file`` (None: the system's CAs) and its name against the host connected to."""
    return ssl.create_default_context(cafile=ca_file) if tls else None


def ca_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as a CA bundle (None: it can), for a check at start-up."""
    try:
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return f"{path!r}: no such file"
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        return f"{path!r} is not a readable PEM bundle of CA certificates ({why})"
    return None


#: What paho logs, at ERROR and on every attempt, when the broker drops the connection
#: before answering (a plain client on a TLS port, for one).
_SOCKET_ERROR = "failed to receive on socket: "


class PahoLog:
    """The logger one client's paho messages go to (a child of ``parent``).

    paho's socket error on a dropped connection is not logged (it would be one
    ERROR line per retry); it is kept in ``socket_error`` for the outage's one
    line (:func:`describe`). Everything else passes through.
    """

    def __init__(self, parent: str) -> None:
        # Not registered with logging: one per client, found through its parent's handlers.
        self.logger = logging.Logger(f"{parent}.aiomqtt")
        self.logger.parent = logging.getLogger(parent)
        self.logger.addFilter(self._keep)
        self.socket_error: str | None = None

    def reason(self, exc: BaseException, timeout_s: float, ca_key: str, *, tls: bool) -> str:
        """:func:`describe` for a failed attempt of this client, with what paho saw."""
        return describe(exc, timeout_s, ca_key, tls=tls, socket_error=self.socket_error)

    def _keep(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_SOCKET_ERROR):
            self.socket_error = message.removeprefix(_SOCKET_ERROR)
            return False
        return True


def describe(
    exc: BaseException,
    timeout_s: float,
    ca_key: str = "ca_file",
    *,
    tls: bool = False,
    socket_error: str | None = None,
) -> str:
    """A short one-line reason for a failed or lost connection (never containing credentials).

    ``ca_key`` names the config key that fixes an untrusted certificate;
    ``socket_error`` is what paho saw when the broker dropped the connection
    (:class:`PahoLog`), and ``tls`` whether the client spoke TLS.
    """
    text = " ".join(str(exc).split())
    refused = _cert_error(exc)
    if refused is not None:  # the one TLS failure a user can fix from the config
        why = refused.verify_message or "certificate verify failed"
        return f"TLS: the broker's certificate was not trusted ({why}); {ca_key} names the CA that signed it"
    if isinstance(exc, TimeoutError) or "timed out" in text.lower():
        if socket_error is not None:  # it did answer: by closing the connection
            why = re.sub(r"^\[Errno \d+\]\s*", "", socket_error)
            hint = "" if tls else "; a port that takes TLS (8883 usually) needs tls: true"
            return f"the broker closed the connection without answering ({why}){hint}"
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc.__cause__, aiomqtt.MqttCodeError):  # aiomqtt's "Disconnected during message iteration"
        return "connection lost"
    # "[Errno 111] Connection refused", "[code:135] Not authorized": the number adds nothing.
    text = re.sub(r"^\[(?:Errno \d+|code:\d+)\]\s*", "", text)
    if isinstance(exc, MqttConnectError):
        return f"broker refused the connection: {text}"
    return text or type(exc).__name__


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under ``exc`` (aiomqtt may wrap it), if one did."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
