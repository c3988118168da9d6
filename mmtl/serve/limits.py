"""Connection-level limits the ASGI stack does not provide by itself.

- :class:`RequestLimits` (ASGI middleware): a request with a body must declare its length
  (411 otherwise; chunked bodies are refused) and it must be under the limit (413, decided from the
  header before anything is read).
- :class:`DeadlineH11Protocol` (uvicorn's h11 protocol): a request's headers and body must arrive
  within ``read_timeout_s`` of its first byte (or of the connection opening); a client that
  dribbles bytes is disconnected. uvicorn's own timeout covers only idle keep-alive connections.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class RequestLimits:
    """ASGI middleware: Content-Length required on requests with a body, and under ``max_body_bytes``."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"].encode() in BODY_METHODS:
            problem = self._check(dict(scope["headers"]))
            if problem is not None:
                await _send_error(send, *problem)
                return
        await self.app(scope, receive, send)

    def _check(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return 411, "chunked bodies are not accepted; send Content-Length"
        length = headers.get(b"content-length")
        if length is None:  # h11 has already refused malformed and conflicting values
            return 411, "Content-Length header required"
        if int(length) > self.max_body_bytes:
            return 413, f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}"
        return None


async def _send_error(send: Any, status: int, message: str) -> None:
    """A JSON error answer that closes the connection (the body, if any, is left unread)."""
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request (``config.mmtl_read_timeout``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout: float = getattr(self.config, "mmtl_read_timeout", 30.0)
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is not h11.DONE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the whole request is in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request did not arrive within %.0f s", self.read_timeout)
            self.transport.close()
