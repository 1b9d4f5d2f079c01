"""A lenient loopback token endpoint and API, served by uvicorn in a child process.

Every contender talks to this one server, so the comparison is fair: Pay-me's strict
emulator (``payme_auth.testing``) refuses the form-encoded ``client_credentials`` request
that Authlib and httpx-auth send, so this app accepts either a JSON body or a form body, and
the client credentials in the body or in HTTP Basic.

Rules:
- It runs in a child process (``python -m benchmarks._server``), not in a thread: a server
  thread would share the GIL with the event loop under test, and every GIL hand-over (5 ms by
  default) would show as an event-loop stall of the contender being measured.
- It binds 127.0.0.1 only, prints ``PORT <n>`` once it serves, and exits by itself when its
  standard input closes (the parent died or is done) or after ``--max-seconds``.
- ``POST /_control`` sets knobs, revokes tokens, resets and returns the counters (JSON);
  it is for the harness only.
- ``POST /token`` waits ``token_latency`` seconds, then answers 503 during an outage (see
  ``outage_on_renewal``) or with probability ``token_failure_rate``, else a fresh token
  living ``token_lifetime`` seconds. Every token request's arrival and answer times are kept
  (``time.monotonic()``, which is the same clock in every process on Linux).
- ``/charges...`` checks the bearer token after ``api_latency`` seconds, or once tokens are
  revoked when ``hold_api_until_revocation`` is set (so revoking fails calls in flight):
  unknown, revoked or expired tokens get 401. A token that had already expired when the
  request *arrived* is counted in ``expired_on_arrival``.
  The token ``floor-token`` is always valid: the floor contender sends it.
- A *gate* is a second port for token requests whose behaviour the harness switches
  (``{"gate": "serve" | "refuse" | "hang"}``; the answer's ``gate_port`` is its port):
  ``serve`` passes connections through to the app; ``refuse`` stops listening, with the
  port kept bound so that connections are refused (and no client's ephemeral port lands
  on it); ``hang`` accepts connections, reads them and never answers. Every switch closes
  the connections already open, so that kept-alive ones meet the new behaviour too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any

FLOOR_TOKEN = "floor-token"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"

_KNOBS = {
    "token_lifetime": 3600,
    "token_latency": 0.0,
    "api_latency": 0.0,
    "token_failure_rate": 0.0,
    # After the first token is issued, the next token request starts an outage of this many
    # seconds, during which every token request gets 503: "the endpoint fails just when a
    # renewal is due", whenever each contender considers it due.
    "outage_on_renewal": 0.0,
    # API calls wait (at most 10 s) until the next revocation: "revoked while in flight".
    "hold_api_until_revocation": False,
}


class Gate:
    """A token port in front of the app that serves, refuses connections, or hangs."""

    def __init__(self, app_port: int) -> None:
        self.app_port = app_port
        self.mode = "serve"
        self.port = 0
        self.server: asyncio.Server | None = None
        self.parked: socket.socket | None = None  # bound, not listening: refuses
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    async def switch(self, mode: str) -> None:
        if mode not in ("serve", "refuse", "hang"):
            raise ValueError(f"unknown gate mode {mode!r}")
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()
        listening = mode in ("serve", "hang")
        if listening and self.server is None:
            sock = self.parked or _listener(0)
            self.parked = None
            sock.listen(2048)
            self.server = await asyncio.start_server(self._connection, sock=sock, backlog=2048)
        elif not listening and self.server is not None:
            self.server.close()
            self.parked = _listener(self.port)
            self.server = None
        if not self.port:
            self.port = (self.server.sockets[0] if self.server else self.parked).getsockname()[1]
        self.mode = mode

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode != "serve":  # hang: read what comes, never answer
                while await reader.read(65536):
                    pass
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.app_port)
            self.writers.add(upstream)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            for each in (writer, upstream):
                if each is not None:
                    each.close()
                    self.writers.discard(each)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _listener(port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP, and without it a keep-alive answer written in two pieces
    # (headers, body) waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class BenchApp:
    """The ASGI app: token endpoint, a protected ``/charges`` API and a control route."""

    def __init__(self) -> None:
        self.knobs: dict[str, Any] = dict(_KNOBS)
        self.rng = random.Random(1234)
        self.port = 0  # the app's own, set once it listens
        self.gate: Gate | None = None
        self.reset()

    def reset(self) -> None:
        self.tokens: dict[str, float] = {}  # token -> expires_at (monotonic)
        self.token_log: list[tuple[float, float, int]] = []  # (arrived, answered, status)
        self.outage_until: float | None = None
        self.released = asyncio.Event()
        self.issued = 0
        self.counts = dict.fromkeys(
            (
                "token_requests",
                "token_failures",
                "api_requests",
                "api_unauthorized",
                "expired_on_arrival",
                "missing_api_version",
                "json_token_requests",
                "form_token_requests",
                "api_in_flight",
            ),
            0,
        )

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "token_log": self.token_log, "knobs": self.knobs}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if path == "/token" or path.startswith("/token/"):  # a suffix tells clients apart
            await self._token(headers, body, send)
        elif path.startswith("/charges"):
            await self._api(headers, send)
        elif path == "/_control":
            await self._control(body, send)
        else:
            await _send(send, 404, {"message": "Not Found"})

    async def _control(self, body: bytes, send: Any) -> None:
        command = json.loads(body or b"{}")
        if command.get("reset"):
            self.reset()
        for name, value in command.get("set", {}).items():
            if name not in self.knobs:
                await _send(send, 400, {"message": f"unknown knob {name}"})
                return
            self.knobs[name] = value
        gate: dict[str, Any] = {}
        if command.get("gate"):
            if self.gate is None:
                self.gate = Gate(self.port)
            try:
                await self.gate.switch(command["gate"])
            except ValueError as error:
                await _send(send, 400, {"message": str(error)})
                return
            gate = {"gate_port": self.gate.port, "gate_accepted": self.gate.accepted}
        revoked = 0
        if command.get("revoke"):
            revoked = len(self.tokens)
            self.tokens.clear()
            self.knobs["hold_api_until_revocation"] = False
            self.released.set()
        await _send(send, 200, {**self.stats(), **gate, "revoked": revoked})

    async def _token(self, headers: dict[str, str], body: bytes, send: Any) -> None:
        arrived = time.monotonic()
        self.counts["token_requests"] += 1
        fields = _token_fields(headers, body)
        if headers.get("content-type", "").startswith("application/json"):
            self.counts["json_token_requests"] += 1
        else:
            self.counts["form_token_requests"] += 1
        knobs = self.knobs
        outage = knobs["outage_on_renewal"]
        if outage and self.issued and self.outage_until is None:
            self.outage_until = arrived + outage
        await asyncio.sleep(knobs["token_latency"])
        failing = (self.outage_until is not None and arrived < self.outage_until) or (
            knobs["token_failure_rate"] and self.rng.random() < knobs["token_failure_rate"]
        )
        if failing:
            status, payload = 503, {"message": "Service Unavailable"}
        elif fields.get("client_id") != CLIENT_ID or fields.get("client_secret") != CLIENT_SECRET:
            status, payload = 401, {"error": "invalid_client"}
        elif fields.get("grant_type") != "client_credentials":
            status, payload = 400, {"error": "unsupported_grant_type"}
        else:
            token, lifetime = secrets.token_urlsafe(24), knobs["token_lifetime"]
            now = time.monotonic()
            self.tokens = {t: e for t, e in self.tokens.items() if e > now}
            self.tokens[token] = now + lifetime
            self.issued += 1
            status, payload = (
                200,
                {
                    "action": "authorize",
                    "success": True,
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": lifetime,
                    "scope": fields.get("scope", ""),
                    "authorization": {"meta": {"status": {"code": "00", "message_ilgn": []}}},
                },
            )
        if status != 200:
            self.counts["token_failures"] += 1
        self.token_log.append((arrived, time.monotonic(), status))
        await _send(send, status, payload)

    async def _api(self, headers: dict[str, str], send: Any) -> None:
        self.counts["api_requests"] += 1
        arrived = time.monotonic()
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if "alg-api-version" not in headers:
            self.counts["missing_api_version"] += 1
        expires_at = self.tokens.get(token)
        if expires_at is not None and expires_at <= arrived:
            self.counts["expired_on_arrival"] += 1
        latency, hold = self.knobs["api_latency"], self.knobs["hold_api_until_revocation"]
        if latency or hold:
            self.counts["api_in_flight"] += 1
            try:
                if hold:
                    released = self.released
                    await asyncio.wait_for(released.wait(), 10.0)
                else:
                    await asyncio.sleep(latency)
            except asyncio.TimeoutError:
                pass
            finally:
                self.counts["api_in_flight"] -= 1
        valid = token == FLOOR_TOKEN or (
            token in self.tokens and self.tokens[token] > time.monotonic()
        )
        if scheme.lower() != "bearer" or not valid:
            self.counts["api_unauthorized"] += 1
            await _send(send, 401, {"message": "Unauthorized"})
            return
        await _send(send, 200, {"action": "authorize", "success": True, "state": "AUTORIZADO"})


def _token_fields(headers: dict[str, str], body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    if headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            fields = {str(k): str(v) for k, v in data.items()}
    else:
        fields = dict(urllib.parse.parse_qsl(body.decode("latin-1")))
    basic = headers.get("authorization", "")
    if basic.lower().startswith("basic "):
        decoded = base64.b64decode(basic[6:]).decode("latin-1")
        user, _, password = decoded.partition(":")
        fields.setdefault("client_id", urllib.parse.unquote_plus(user))
        fields.setdefault("client_secret", urllib.parse.unquote_plus(password))
    return fields


async def _send(send: Any, status: int, payload: object) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    max_seconds = (
        float(sys.argv[sys.argv.index("--max-seconds") + 1])
        if ("--max-seconds" in sys.argv)
        else 3600.0
    )
    sock = _listener(0)
    sock.listen(2048)
    app = BenchApp()
    app.port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        interface="asgi3",
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        log_level="error",
        access_log=False,
        backlog=2048,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)

    def watchdog() -> None:
        # Ends the process when the parent closes our stdin (or dies), or at the deadline.
        deadline = threading.Timer(max_seconds, lambda: os._exit(3))
        deadline.daemon = True
        deadline.start()
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
