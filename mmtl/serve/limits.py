"""Connection-level limits the ASGI stack does not provide by itself.

- :class:`RequestLimits` (ASGI middleware): at most ``max_headers`` header fields of at most
  ``max_header_bytes`` together (431 otherwise); a request with a body must declare its length
  (411 otherwise; chunked bodies are refused) and it must be under the limit (413, decided from the
  header before anything is read).
- :class:`QuietCancellation` (ASGI middleware): a request still running when uvicorn's graceful
  shutdown times out is answered 503 and logged in one line, not as a CancelledError traceback.
- :class:`DeadlineH11Protocol` (uvicorn's h11 protocol): a request's headers and body must arrive
  within ``read_timeout_s`` of its first byte (or of the connection opening): a client that
  dribbles bytes, or sends fewer body bytes than its Content-Length and waits, is answered 408 and
  disconnected (uvicorn's own timeout covers only idle keep-alive connections). A body cut short by
  the client closing its side is answered 400. On shutdown, a request whose body is still arriving
  is answered 503 at once instead of holding the shutdown up. Every 503 carries ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BODY_METHODS = (b"POST", b"PUT", b"PATCH")
RETRY_AFTER_S = 1  # seconds a client is told to wait after a 503
MAX_SOCKET_EXTENSIONS = 1  # read deadlines that bytes waiting in the socket may extend, per request
logger = logging.getLogger("uvicorn.error")


class RequestLimits:
    """ASGI middleware: bounded headers; Content-Length required on requests with a body, and under
    ``max_body_bytes``."""

    def __init__(self, app: Any, max_body_bytes: int, max_header_bytes: int = 32 * 1024,
                 max_headers: int = 100) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = self._check_headers(scope["headers"])
            if problem is None and scope["method"].encode() in BODY_METHODS:
                problem = self._check(dict(scope["headers"]))
            if problem is not None:
                await _send_error(send, *problem)
                return
        await self.app(scope, receive, send)

    def _check_headers(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        if len(headers) > self.max_headers:
            return 431, f"{len(headers)} header fields; the limit is {self.max_headers}"
        size = sum(len(name) + len(value) + 4 for name, value in headers)  # "name: value\r\n"
        if size > self.max_header_bytes:
            return 431, f"headers are {size} bytes; the limit is {self.max_header_bytes}"
        return None

    def _check(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return 411, "chunked bodies are not accepted; send Content-Length"
        length = headers.get(b"content-length")
        if length is None:  # h11 has already refused malformed and conflicting values
            return 411, "Content-Length header required"
        if int(length) > self.max_body_bytes:
            return 413, f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}"
        return None


def _error_headers(status: int, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return headers + ([(b"retry-after", str(RETRY_AFTER_S).encode())] if status == 503 else [])


async def _send_error(send: Any, status: int, message: str) -> None:
    """A JSON error answer that closes the connection (the body, if any, is left unread)."""
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status, "headers": _error_headers(status, body)})
    await send({"type": "http.response.body", "body": body})


def error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 JSON error answer that closes the connection, for the protocol to write itself."""
    body = json.dumps({"error": message, "status": status}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in _error_headers(status, body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class QuietCancellation:
    """ASGI middleware: a request cancelled by the server (uvicorn cancels what still runs when its
    graceful shutdown times out) is answered 503 if nothing was sent yet, and logged in one line;
    the cancellation ends here instead of reaching uvicorn, which logs each as a traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            logger.warning("%s %s was cancelled by the server's shutdown", scope["method"], scope["path"])
            if not started:
                await _send_error(send, 503, "the server is shutting down; retry")


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request (``config.mmtl_read_timeout``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout: float = getattr(self.config, "mmtl_read_timeout", 30.0)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._socket_extensions = 0  # times the current request's deadline waited on socket bytes
        # uvicorn's own concurrency check answers 503 without Retry-After: the same check, done here
        self.max_concurrency, self.limit_concurrency = self.limit_concurrency, None
        self.app = self._limited(self.app)

    def _limited(self, app: Any) -> Any:
        async def limited(scope: dict, receive: Any, send: Any) -> None:
            limit = self.max_concurrency  # this request's task is already counted, unlike in uvicorn's check
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) > limit):
                logger.warning("Exceeded concurrency limit.")
                await _send_error(send, 503, f"the server is at its limit of {limit} connections and requests")
                return
            await app(scope, receive, send)
        return limited

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is not h11.DONE:
            self._start_deadline()
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the whole request is in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        """The client closed its side: a body still owed is answered 400 (asyncio then closes)."""
        if self._reading_body():
            self._answer_and_close(400, "the body ended before its Content-Length")

    def shutdown(self) -> None:
        """Graceful shutdown: a request still arriving (headers or body) is answered 503 now."""
        if self._request_arriving():
            self._answer_and_close(503, "the server is shutting down; retry")
            return
        super().shutdown()

    def _reading_body(self) -> bool:
        """The current request's body is still arriving and nothing has been answered."""
        return (self.conn.their_state is h11.SEND_BODY and self.cycle is not None
                and not self.cycle.response_started)

    def _request_arriving(self) -> bool:
        """Part of a request is in and nothing has been answered: its headers or its body are arriving."""
        return self._reading_body() or (self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0]))

    def _answer_and_close(self, status: int, message: str) -> None:
        """Answer the current request from here (the app's own answer, if any, is dropped) and close."""
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app reads a disconnect; its sends go nowhere
            self.cycle.message_event.set()
        self.transport.write(error_bytes(status, message))
        self.transport.close()

    def _server_is_behind(self) -> bool:
        """Bytes of this request wait in our buffers, or in the socket within the extension bound.

        (Under load, a deadline counted against the server closed uploads the client had long sent,
        which the client saw as connection resets.) Bytes in our own buffers are the server's doing;
        bytes in the socket may also be a client's byte timed to the deadline, so they extend the
        deadline ``MAX_SOCKET_EXTENSIONS`` times per request."""
        if self.flow.read_paused or (self.cycle is not None and self.cycle.body):
            return True
        if self._socket_extensions < MAX_SOCKET_EXTENSIONS and self._bytes_wait_in_socket():
            self._socket_extensions += 1
            return True
        return False

    def _bytes_wait_in_socket(self) -> bool:
        """The kernel holds bytes of this connection that the event loop has not read yet."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
                return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # nothing waiting (EAGAIN), or the socket is gone
            return False

    def _start_deadline(self) -> None:
        """A request begins: its headers and body must arrive within ``read_timeout`` from now."""
        self._socket_extensions = 0
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._server_is_behind():  # the deadline is on the client; on a starved server it waits
            self._arm()
            return
        self.logger.info("closing a connection whose request did not arrive within %.0f s", self.read_timeout)
        if self._request_arriving():
            self._answer_and_close(408, f"the request did not arrive within {self.read_timeout:.0f} s")
        else:
            self.transport.close()
