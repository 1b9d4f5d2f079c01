"""Reading a token answer's body: never more than MAX_RESPONSE_BYTES of it, decoded.

Rules:
- Reading stops as soon as the body passes the cap: an answer that never ends costs the
  cap, not the attempt's deadline.
- The cap bounds the *decoded* body. The token request asks for ``identity``; an answer
  compressed with gzip or deflate all the same is inflated piece by piece, never past the
  cap. Other encodings (br, zstd, ...) offer no such bound and are not read: a 2xx answer
  so encoded is an error, the body of any other is ignored (its status says enough).
- The raw stream is read directly, and decoded here; when reading stops half-way, the
  connection is closed and the stream run dry, so that no iterator of the HTTP stack is left
  unfinished to the garbage collector.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import AsyncIterator, Callable

import httpx

from ._protocol import MAX_RESPONSE_BYTES

__all__ = ["read_capped"]

_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})
# zlib reads a gzip or a zlib header alike with this window size.
_GZIP_OR_ZLIB = zlib.MAX_WBITS | 32


async def read_capped(
    response: httpx.Response, limit: int = MAX_RESPONSE_BYTES
) -> tuple[bytes, bool]:
    """Read and decode at most *limit* bytes of the body; say whether there was more.

    Raises:
        httpx.DecodingError: the body is compressed in a way that cannot be read in bounds,
            or its compressed data is broken.
    """
    if response.is_stream_consumed:  # an answer built in memory (httpx.MockTransport)
        content = response.content
        return content[:limit], len(content) > limit
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"", True
    decode = _decoder(response)
    if decode is None:
        return b"", False
    body = bytearray()
    chunks = response.aiter_raw()
    async for chunk in chunks:
        try:
            body += decode(chunk, limit + 1 - len(body))
        except httpx.DecodingError:
            await _abandon(response, chunks)
            raise
        if len(body) > limit:
            await _abandon(response, chunks)
            return bytes(body[:limit]), True
    return bytes(body), False


async def _abandon(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Stop reading half-way: close the connection, then let the stream run dry on it.

    The stream is a chain of async generators: closing the outer one would leave the others
    to the garbage collector. Reading on from a closed connection ends them all at once.
    """
    await response.aclose()
    with contextlib.suppress(httpx.HTTPError):
        async for _ in chunks:
            pass


def _decoder(response: httpx.Response) -> Callable[[bytes, int], bytes] | None:
    """A function giving at most *n* decoded bytes of a chunk; ``None``: ignore the body."""
    header = response.headers.get("content-encoding", "")
    codings = [c for c in header.lower().replace(" ", "").split(",") if c not in ("", "identity")]
    if not codings:
        return lambda chunk, _n: chunk
    if len(codings) == 1 and codings[0] in _INFLATED:
        inflater = zlib.decompressobj(_GZIP_OR_ZLIB)

        def inflate(chunk: bytes, n: int) -> bytes:
            try:
                return inflater.decompress(chunk, n)
            except zlib.error as exc:
                raise httpx.DecodingError(f"broken {codings[0]} data: {exc}") from None

        return inflate
    if 200 <= response.status_code <= 299:
        raise httpx.DecodingError(
            f"the answer is encoded with {header.strip()!r}, though the request asked for "
            "identity; only gzip and deflate are read"
        )
    return None
