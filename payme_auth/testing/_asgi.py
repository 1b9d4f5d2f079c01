"""The emulator's side of the ASGI wire: reading request bodies, sending answers.

Rules:
- A request body is read to its end even when it is too large to keep: a client that is
  not read from may never see the answer.
- Every answer carries its own ``Content-Length``; one given by a caller is never sent.
- An answer *cut short* declares its whole body, sends the first half and is never
  completed: the app returns with the response unfinished, which is the only way ASGI has
  to drop a connection mid-answer. Each server reports that in its own way: uvicorn logs
  ``ASGI callable returned without completing response.`` at ERROR on ``uvicorn.error``
  and closes the connection, so an httpx client gets :class:`httpx.RemoteProtocolError`;
  :class:`httpx.ASGITransport` (httpx 0.28) fails its own check that the app completed the
  response and raises :class:`AssertionError` from the request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "MAX_BODY_SIZE",
    "DisconnectedError",
    "Message",
    "Receive",
    "Send",
    "read_body",
    "send_answer",
    "send_json",
]

MAX_BODY_SIZE = 64 * 1024
"""Request bodies larger than this get 413 (they are read, but not kept)."""

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class DisconnectedError(Exception):
    """The client went away before its request body was read."""


async def read_body(receive: Receive) -> bytes | None:
    """Return the request body, or ``None`` if it is larger than :data:`MAX_BODY_SIZE`.

    Raises:
        DisconnectedError: the client went away first.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise DisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_SIZE:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= MAX_BODY_SIZE else None


async def send_answer(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[str, str]],
    *,
    cut_short: bool = False,
) -> None:
    """Send *status*, *headers* and *body*; with *cut_short*, only the first half of *body*."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    raw.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    if cut_short:
        half = body[: len(body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
    else:
        await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: object, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Send *payload* as a compact UTF-8 JSON answer, with *headers* after the content type."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    await send_answer(send, status, body, [("content-type", "application/json"), *headers])
