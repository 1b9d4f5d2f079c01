"""Serve a :class:`~payme_auth.testing.PaymeEmulator` for real, on a loopback socket.

Rules:
- The socket is bound here, before serving, so ``port=0`` yields a free port that is known
  as soon as :func:`run_emulator` returns, and no other process can take it meanwhile.
- uvicorn runs in a daemon thread with its own asyncio loop, so the calling code may run
  under asyncio, trio or no event loop at all; only the entry and the exit block it.
- uvicorn is optional (the ``emulator`` extra) and imported only when a server is started.
- uvicorn is told to leave the process alone: no logging configuration, no signal
  handlers (it skips them outside the main thread), no proxy headers, no access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs

from ._emulator import PaymeEmulator

if TYPE_CHECKING:
    import uvicorn

    from .._config import Environment

__all__ = ["EmulatorServer", "run_emulator"]

_FORCED_EXIT_TIMEOUT = 5.0


@attrs.frozen(kw_only=True)
class EmulatorServer:
    """A running emulator server, as yielded by :func:`run_emulator`.

    Attributes:
        host: the host it listens on, as given.
        port: the port it listens on (the one picked when ``port=0`` was asked for).
        emulator: the app it serves; change its knobs or read its stats while it runs.
    """

    host: str
    port: int
    emulator: PaymeEmulator
    _server: uvicorn.Server | None = attrs.field(
        default=None, repr=False, eq=False, alias="_server"
    )

    @property
    def open_connections(self) -> int:
        """How many client connections the server holds open right now.

        A keep-alive client holds its connections between requests. Closing happens on
        the server's own thread, so after a client is closed, poll for a short while::

            await client.aclose()
            while server.open_connections:
                await anyio.sleep(0.01)

        Raises:
            RuntimeError: this value was not made by :func:`run_emulator`.
        """
        if self._server is None:
            raise RuntimeError("open_connections needs an EmulatorServer from run_emulator")
        return len(self._server.server_state.connections)

    @property
    def url(self) -> str:
        """The base URL, such as ``"http://127.0.0.1:54321"`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint, :attr:`url` followed by ``"/token"``."""
        return f"{self.url}/token"

    @property
    def audience(self) -> str:
        """The audience the emulator expects unless given one, :attr:`url` followed by ``"/"``."""
        return f"{self.url}/"

    @property
    def environment(self) -> Environment:
        """A :class:`payme_auth.Environment` pointing at this server, named ``"emulator"``."""
        from payme_auth import Environment

        return Environment(
            token_url=self.token_url,
            audience=self.audience,
            api_version=self.emulator.api_version,
            name="emulator",
        )


@contextlib.contextmanager
def run_emulator(
    emulator: PaymeEmulator | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
) -> Iterator[EmulatorServer]:
    """Serve *emulator* (a new default :class:`PaymeEmulator` if ``None``) on *host*:*port*.

    A synchronous context manager, usable from sync code and from asyncio or trio tests::

        with run_emulator() as server:
            auth = PaymeAuth(
                client_id=DEFAULT_CLIENT_ID,
                client_secret=DEFAULT_CLIENT_SECRET,
                environment=server.environment,
            )

    Raises:
        ImportError: uvicorn is not installed (install ``payme-auth[emulator]``).
        TimeoutError: the server did not start within *startup_timeout* seconds.
        RuntimeError: the server failed to start.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "serving the Pay-me emulator needs uvicorn: install payme-auth[emulator]",
            name="uvicorn",
        ) from exc
    app = PaymeEmulator() if emulator is None else emulator
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP given explicitly: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it every kept-alive answer waits ~40 ms for Nagle's algorithm.
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            interface="asgi3",
            http="h11",
            ws="none",
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
        )
        server = uvicorn.Server(config)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            # Kept for the waiting thread to raise from; uvicorn exits with SystemExit.
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=serve, name="payme-emulator", daemon=True)
        thread.start()
        try:
            _wait_started(server, thread, errors, startup_timeout)
            yield EmulatorServer(host=host, port=bound_port, emulator=app, _server=server)
        finally:
            server.should_exit = True
            thread.join(shutdown_timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(_FORCED_EXIT_TIMEOUT)


def _wait_started(
    server: uvicorn.Server, thread: threading.Thread, errors: list[BaseException], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            cause = errors[0] if errors else None
            raise RuntimeError("the Pay-me emulator server failed to start") from cause
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the Pay-me emulator server did not start within {timeout} s")
        time.sleep(0.005)
