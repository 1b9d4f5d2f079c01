"""``payme-auth emulator``: serve the local Pay-me emulator until told to stop.

Rules:
- The "ready" line is written, and stdout flushed, only once the socket listens: a
  script or a container health check may wait for it and connect at once.
- It stops on SIGINT (Ctrl-C) or SIGTERM (``docker stop``, a process manager) and exits
  0: being stopped is how it is meant to end.
- The URLs printed are ones a client can use: a wildcard address (``0.0.0.0``, ``::``)
  is printed as the loopback address of the same family.
- Each request served is printed on one line (the time, method, path, status and client
  id: never a secret nor a token), and the counters are printed when it stops, so that
  a test run against it can be read afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shlex
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import attrs

from ._cli import EXIT_OK, CommandError
from ._log import attached

if TYPE_CHECKING:
    from .testing import EmulatorStats

__all__ = ["EmulatorOptions", "counters_line", "serve_emulator"]

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - a mapping


@attrs.frozen(kw_only=True)
class EmulatorOptions:
    """What ``emulator`` serves, and where (see ``payme-auth emulator --help``)."""

    host: str = "127.0.0.1"
    port: int = 8765
    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    scopes: str | None = None
    token_lifetime: int = 8600
    token_latency: float = 0.0
    api_latency: float = 0.0
    failure_rate: float = 0.0
    seed: int | None = None


def _client_url(host: str, port: int) -> str:
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _LineHandler(logging.Handler):
    """Write each record to *out* as one line, and flush: the lines follow the requests."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.DEBUG)
        self.out = out
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.out.write(self.format(record) + "\n")
            self.out.flush()
        except Exception:  # noqa: BLE001 - a closed stdout must not break the server
            self.handleError(record)


@contextlib.contextmanager
def _request_lines(out: TextIO) -> Iterator[None]:
    """While active, write the emulator's request log to *out*."""
    from .testing._emulator import logger

    with attached(_LineHandler(out), to=logger, level=logging.DEBUG):
        yield


def counters_line(stats: EmulatorStats) -> str:
    """The counters printed when the emulator stops."""
    return (
        f"served: token requests {stats.token_requests}, tokens issued {stats.tokens_issued}, "
        f"token requests refused or failed {stats.token_failures}, API requests "
        f"{stats.api_requests}, API 401s {stats.api_unauthorized}, API 403s {stats.api_forbidden}"
    )


def serve_emulator(
    options: EmulatorOptions, out: TextIO, *, stop: threading.Event | None = None
) -> int:
    """Serve the emulator, write how to use it to *out*, and block until stopped; return 0.

    It stops on SIGINT or SIGTERM (when called from the main thread) or when *stop* is set.

    Raises:
        ConfigurationError: an option is invalid.
        ImportError: uvicorn is missing (the ``emulator`` extra).
        CommandError: the address cannot be listened on.
    """
    from ._errors import ConfigurationError
    from .testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, PaymeEmulator, run_emulator

    client_id = options.client_id or DEFAULT_CLIENT_ID
    client_secret = options.client_secret or DEFAULT_CLIENT_SECRET
    settings: dict[str, object] = {}
    if options.scopes is not None:
        settings["scopes"] = options.scopes.replace(",", " ")
    if options.seed is not None:
        settings["rng"] = random.Random(options.seed)  # noqa: S311 - failures, not secrets
    try:
        emulator = PaymeEmulator(
            client_id=client_id,
            client_secret=client_secret,
            token_lifetime=options.token_lifetime,
            token_latency=options.token_latency,
            api_latency=options.api_latency,
            token_failure_rate=options.failure_rate,
            **settings,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(str(exc)) from None
    if not 0 <= options.port <= 65535:
        raise ConfigurationError(f"--port must be from 0 to 65535, not {options.port}")

    stopping = stop or threading.Event()
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                run_emulator(emulator, host=options.host, port=options.port)
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CommandError(
                f"cannot listen on {options.host}:{options.port}: {reason}"
            ) from None
        url = _client_url(options.host, server.port)
        exports = {
            "PAYME_TOKEN_URL": f"{url}/token",
            "PAYME_AUDIENCE": f"{url}/",
            "PAYME_CLIENT_ID": client_id,
            "PAYME_CLIENT_SECRET": client_secret,
        }
        out.write(
            f"Pay-me emulator listening on {options.host}:{server.port}\n"
            f"  token URL      {url}/token\n"
            f"  audience       {url}/\n"
            f"  API base URL   {url}\n"
            f"  client id      {client_id}\n"
            f"  client secret  {client_secret}\n"
            f"  scopes         {' '.join(emulator.scopes)}\n"
            f"  token lifetime {emulator.token_lifetime} s, token latency "
            f"{emulator.token_latency:g} s, API latency {emulator.api_latency:g} s, "
            f"token failure rate {emulator.token_failure_rate:g}\n"
            "# for another program on this machine:\n"
        )
        out.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in exports.items())
        out.write(f"ready: {url} (stop with Ctrl-C or SIGTERM)\n")
        out.flush()
        with _request_lines(out):
            _wait(stopping)
        out.write("stopping the Pay-me emulator\n")
        out.flush()
    out.write(counters_line(emulator.stats) + "\n")
    out.flush()
    return EXIT_OK


def _wait(stopping: threading.Event) -> None:
    """Block until *stopping* is set, SIGTERM arrives, or SIGINT (quietly) does."""
    previous: object = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    if in_main:
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        # A timeout keeps the main thread waking up, so signals are handled promptly
        # on every platform.
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
