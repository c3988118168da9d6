"""Running the app: uvicorn (h11, with a request-read deadline) in this process, or N worker processes."""
from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI

import uvicorn
from uvicorn.supervisors import Multiprocess

from mmtl.errors import MMTLError
from mmtl.inference import Predictor
from mmtl.serve.app import ServerLimits, Service, create_app
from mmtl.serve.limits import DeadlineH11Protocol

SETTINGS_VARIABLE = "MMTL_SERVE_SETTINGS"  # how ``mmtl serve --workers N`` hands its settings to the workers


@dataclass
class ServeSettings:
    """What ``mmtl serve`` loads and how it answers: the same in every worker process (sent as JSON)."""

    checkpoint: str
    limits: ServerLimits = field(default_factory=ServerLimits)
    max_batch: int = 16  # most requests batched into one forward pass
    max_wait_ms: float = 5.0  # how long a batch waits to fill
    device: str = "cpu"
    precision: str = "fp32"

    def to_json(self) -> str:
        """The settings as JSON (what :meth:`from_json` reads)."""
        return json.dumps({**asdict(self), "checkpoint": str(self.checkpoint)})

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        """Settings written by :meth:`to_json`."""
        raw = json.loads(text)
        return cls(**{**raw, "limits": ServerLimits(**raw["limits"])})

    def load(self) -> Predictor:
        """The checkpoint's predictor on the settings' device and precision."""
        return Predictor.from_pretrained(self.checkpoint, device=self.device, precision=self.precision)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one); a clear error when the address cannot be used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        raise MMTLError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, limits: ServerLimits, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings shared by one-process and multi-process serving."""
    # log_config=None: uvicorn's own config runs logging.config.dictConfig, which closes every log handler
    # of the process (the host application's too); its loggers propagate to the root logger instead
    config = uvicorn.Config(app, http=DeadlineH11Protocol, ws="none", lifespan="on", log_level="warning",
                            log_config=None, access_log=False, limit_concurrency=limits.max_concurrency,
                            timeout_keep_alive=max(1, round(limits.keep_alive_s)), server_header=False,
                            timeout_graceful_shutdown=5,
                            # a header block still incomplete past this is refused by h11 (400); a
                            # complete one over limits.max_header_bytes by RequestLimits (431)
                            h11_max_incomplete_event_size=4 * limits.max_header_bytes, **kwargs)
    config.mmtl_read_timeout = limits.read_timeout_s  # read by DeadlineH11Protocol
    return config


class MMTLServer:
    """One process serving a :class:`Service` on a bound socket.

    ``serve_forever()`` blocks (run it in a thread in tests); ``shutdown()`` asks it to stop,
    ``server_close()`` releases the socket and the batcher.
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.app = service
        try:
            self.socket = bind_socket(host, port)
        except MMTLError:
            service.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn_config(create_app(service), service.limits))
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Ask ``serve_forever`` to return, and wait until it has (at most ``timeout`` seconds)."""
        self.server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self.app.close()


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                limits: ServerLimits | None = None, max_batch: int = 16, max_wait_ms: float = 5.0) -> MMTLServer:
    """A ready server (port 0 picks a free port; see ``.url``). Call ``serve_forever()``, then ``shutdown()``
    and ``server_close()``."""
    return MMTLServer(Service(predictor, limits, max_batch, max_wait_ms), host, port)


def serve(settings: ServeSettings, host: str, port: int, workers: int = 1) -> None:
    """Serve until Ctrl-C or SIGTERM: in this process, or in ``workers`` processes sharing the socket."""
    if workers < 1:
        raise MMTLError(f"--workers must be >= 1, got {workers}")
    predictor = settings.load()
    if workers == 1:
        server = make_server(predictor, host, port, settings.limits, settings.max_batch, settings.max_wait_ms)
        _announce(predictor, server.url, workers)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return
    # the settings are valid before workers start
    Service(predictor, settings.limits, settings.max_batch, settings.max_wait_ms).close()
    del predictor
    sock = bind_socket(host, port)
    os.environ[SETTINGS_VARIABLE] = settings.to_json()
    config = uvicorn_config("mmtl.serve.server:app_from_environment", settings.limits, factory=True, workers=workers)
    host_, port_ = sock.getsockname()[:2]
    _announce(None, f"http://{host_}:{port_}", workers)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


def app_from_environment() -> FastAPI:
    """The app of one ``mmtl serve --workers N`` worker process, built from the settings its parent wrote."""
    settings = ServeSettings.from_json(os.environ[SETTINGS_VARIABLE])
    return create_app(Service(settings.load(), settings.limits, settings.max_batch, settings.max_wait_ms))


def _announce(predictor: Predictor | None, url: str, workers: int) -> None:
    tasks = f"{', '.join(predictor.tasks)} " if predictor is not None else ""
    print(f"serving {tasks}on {url} (web page at /, API at /v1/predict; {workers} worker process(es)); "
          "Ctrl-C stops", flush=True)
