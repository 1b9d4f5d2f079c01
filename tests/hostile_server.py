"""A token endpoint that answers as an attacker (or a broken proxy) would, over a raw socket.

It runs in the test's own event loop (asyncio or trio) on 127.0.0.1, reads one request per
connection and hands it to a handler that writes whatever bytes it likes: echoes of the
request body in any encoding, compression bombs, bodies that trickle or never end.

Also here: every spelling a secret can take on its way back, and the checks that none of
them shows in an error, its traceback, the locals of payme_auth's frames, or a log record.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import traceback
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from types import TracebackType

import anyio
import anyio.abc
import attrs

from payme_auth import Environment

CHUNK = 64 * 1024
ENDLESS_LIMIT = 1024 * 1024 * 1024
"""An endless body stops after this many bytes, or when the client hangs up."""

ENDLESS_SECONDS = 30.0
"""... or after this long, so that a test that fails still ends."""


@attrs.frozen(kw_only=True)
class Request:
    """One request as it arrived: the head's lines and the body."""

    head: bytes
    body: bytes

    def json(self) -> dict[str, str]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


Handler = Callable[[Request, anyio.abc.ByteStream], Awaitable[None]]


@attrs.define(kw_only=True)
class HostileServer:
    """Where the server listens, and how many requests reached it."""

    port: int
    requests: int = 0

    @property
    def environment(self) -> Environment:
        base = f"http://127.0.0.1:{self.port}"
        return Environment(token_url=f"{base}/token", audience=f"{base}/")


async def _read_request(stream: anyio.abc.ByteStream) -> Request:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
        assert len(data) < CHUNK, "request head too long"
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        body += await stream.receive()
    return Request(head=head, body=body)


@asynccontextmanager
async def hostile_server(handler: Handler) -> AsyncIterator[HostileServer]:
    """Serve *handler* on 127.0.0.1 for the duration of the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server = HostileServer(port=listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610 - anyio, not Django

    async def handle(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            try:
                request = await _read_request(stream)
                server.requests += 1
                await handler(request, stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                pass  # the client hung up, as it should when it has read enough
            except OSError:
                pass

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        try:
            yield server
        finally:
            group.cancel_scope.cancel()


def head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    """A response head; *length* ``None`` means no Content-Length."""
    lines = [f"HTTP/1.1 {status} Hostile", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(
    status: int, body: bytes | str | object, headers: dict[str, str] | None = None
) -> Handler:
    """A handler sending one fixed answer; a non-bytes, non-str body is sent as JSON."""
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
    headers = headers or {"Content-Type": "application/json"}

    async def send(_request: Request, stream: anyio.abc.ByteStream) -> None:
        await stream.send(head(status, headers, len(data)) + data)

    return send


def chunked_answer(status: int, body: bytes, headers: dict[str, str]) -> Handler:
    """A handler sending *body* in chunked encoding, 100 bytes a chunk, with no length."""
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    headers = {**headers, "Transfer-Encoding": "chunked"}

    async def send(_request: Request, stream: anyio.abc.ByteStream) -> None:
        await stream.send(head(status, headers, None) + chunks)

    return send


def echoing(status: int, build: Callable[[Request], tuple[bytes, dict[str, str]]]) -> Handler:
    """A handler answering *status* with a body (and headers) made from the request."""

    async def send(request: Request, stream: anyio.abc.ByteStream) -> None:
        body, headers = build(request)
        await stream.send(head(status, headers, len(body)) + body)

    return send


def endless(
    status: int = 200, *, chunked: bool = True, pause: float = 0.0, encoding: str | None = None
) -> Handler:
    """A handler whose body never ends (within the server's own bounds)."""
    piece = b" " * CHUNK
    headers = {"Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
        piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"

    async def send(_request: Request, stream: anyio.abc.ByteStream) -> None:
        await stream.send(head(status, headers, None) + (b"{" if not chunked else b"1\r\n{\r\n"))
        sent = 0
        with anyio.move_on_after(ENDLESS_SECONDS):
            while sent < ENDLESS_LIMIT:
                await stream.send(piece)
                sent += len(piece)
                if pause:
                    await anyio.sleep(pause)

    return send


@functools.cache
def bomb(encoding: str, size: int = 250 * 1024 * 1024) -> bytes:
    """*size* bytes of spaces compressed as *encoding* (gzip or deflate): about 250 KB."""
    wbits = {"gzip": 31, "deflate": 15}[encoding]
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, compressor.flush()])


def compressed(status: int, encoding: str, body: bytes) -> Handler:
    """A handler sending *body* as it is, labelled with Content-Encoding *encoding*."""
    return answer(status, body, {"Content-Type": "application/json", "Content-Encoding": encoding})


# -- spellings and the checks ------------------------------------------------------------------


def spellings(secret: str, client_id: str) -> set[str]:
    """Every way a server may echo *secret*, as the checks look for it."""
    as_json = json.dumps(secret)[1:-1]
    upper_hex = re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group()[2:].upper(), as_json)
    return {
        secret,
        as_json,
        upper_hex,
        as_json.replace("/", "\\/"),
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        base64.b64encode(f"{client_id}:{secret}".encode()).decode(),
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
    }


ECHOES: dict[str, Callable[[bytes, str], str]] = {
    # How an endpoint may give the request body back, as text.
    "as sent": lambda body, _id: body.decode(),
    "unicode": lambda body, _id: json.dumps(json.loads(body), ensure_ascii=False),
    "upper hex": lambda body, _id: re.sub(
        r"\\u[0-9a-f]{4}", lambda m: "\\u" + m.group()[2:].upper(), body.decode()
    ),
    "slashes escaped": lambda body, _id: body.decode().replace("/", "\\/"),
    "escaped twice": lambda body, _id: json.dumps(body.decode()),
    "form": lambda body, _id: urllib.parse.urlencode(json.loads(body)),
    "percent": lambda body, _id: urllib.parse.quote(json.loads(body)["client_secret"], safe=""),
    "basic auth": lambda body, _id: (
        "Authorization: Basic "
        + base64.b64encode(f"{_id}:{json.loads(body)['client_secret']}".encode()).decode()
    ),
    "base64 body": lambda body, _id: base64.b64encode(body).decode(),
}


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        members = getattr(current, "exceptions", ())
        pending.extend(m for m in members if isinstance(m, BaseException))
        pending.extend(x for x in (current.__cause__, current.__context__) if x is not None)


def _frames(traceback_: TracebackType | None) -> Iterator[TracebackType]:
    while traceback_ is not None:
        yield traceback_
        traceback_ = traceback_.tb_next


def payme_auth_locals(error: BaseException) -> list[str]:
    """``name=repr`` of every local of every payme_auth frame in *error*'s tracebacks."""
    found = []
    for current in _chain(error):
        for entry in _frames(current.__traceback__):
            frame = entry.tb_frame
            if str(frame.f_globals.get("__name__", "")).startswith("payme_auth"):
                found += [f"{name}={value!r}" for name, value in frame.f_locals.items()]
    return found


def texts_of(error: BaseException, records: Iterable[logging.LogRecord]) -> list[str]:
    """Everything an error tracker or a log handler could keep of *error* and *records*."""
    texts = ["".join(traceback.format_exception(error)), *payme_auth_locals(error)]
    for current in _chain(error):
        texts += [str(current), repr(current), repr(vars(current))]
    for record in records:
        texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(record.exc_info[1])))
    return texts


WINDOW = 12
"""A piece this long of a spelling is a leak too: text cut short may show part of a secret."""


def assert_never_shown(secrets: Iterable[str], texts: Iterable[str]) -> None:
    """No spelling of any secret, nor any piece of one WINDOW characters long, in *texts*."""
    texts = list(texts)
    for spelling in secrets:
        width = min(WINDOW, len(spelling))
        pieces = {spelling[i : i + width] for i in range(len(spelling) - width + 1)}
        for text in texts:
            for piece in pieces:
                assert piece not in text, f"{piece!r} of {spelling!r} shown in: {text[:2000]}"
