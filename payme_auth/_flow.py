"""The auth flow both plugs run: its rules once, for httpx and for httpx2 requests alike.

Rules:
- The token goes only to the allowed origins (the audience's and the extra ones); any other
  request passes through untouched. ``ALG-API-VERSION`` is added unless already set.
- No lock is held across a ``yield``: the client may close the flow from another task.
- On a 401 from an allowed origin the token that failed is dropped (only if it is still the
  cached one). If the request body can be sent again (the client's in-memory byte stream),
  one new token is fetched, shared by every request that failed with the same token, and
  the request is replayed once. A streamed body is not replayed: the caller gets the 401,
  and its next request the new token.
- A second 401, every 403, and a 401 from another origin reached by a redirect go back to
  the caller as they are.

The flow is a single async generator written against what httpx's and httpx2's models share
(``Request.url``, ``.headers``, ``.method``, ``.stream``; ``Response.status_code`` and
``.request``), so each plug is a one-line adapter: no wrapping generator, nothing allocated
per request beyond the generator itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol, TypeVar, cast

from ._config import Origin, origin_of
from ._log import logger
from ._provider import TokenProvider

__all__ = ["RequestLike", "ResponseLike", "URLLike", "auth_flow", "origin"]


class URLLike(Protocol):
    """What the flow reads of a URL (``httpx.URL`` and ``httpx2.URL`` both fit)."""

    @property
    def scheme(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int | None: ...

    def copy_with(self, **kwargs: Any) -> Any: ...


class _HeadersLike(Protocol):
    @property
    def raw(self) -> list[tuple[bytes, bytes]]: ...

    def __setitem__(self, key: str, value: str, /) -> None: ...


class RequestLike(Protocol):
    """What the flow reads and sets on a request."""

    @property
    def url(self) -> URLLike: ...

    @property
    def headers(self) -> _HeadersLike: ...

    @property
    def method(self) -> str: ...

    @property
    def stream(self) -> object: ...


class ResponseLike(Protocol):
    """What the flow reads of a response."""

    @property
    def status_code(self) -> int: ...

    @property
    def request(self) -> RequestLike: ...


RequestT = TypeVar("RequestT", bound=RequestLike)

_API_VERSION_HEADER = b"alg-api-version"


# _config's origin_of reads only scheme, host and port, which httpx2's URL has too: the same
# function, typed for both, so that requests and settings are always compared alike.
origin = cast("Callable[[URLLike], Origin]", origin_of)
"""Return the origin of a URL: scheme, lower-cased host and port (default filled in)."""


async def auth_flow(
    request: RequestT,
    provider: TokenProvider,
    origins: frozenset[Origin],
    api_version: str,
    replayable: type[object],
) -> AsyncGenerator[RequestT, ResponseLike]:
    """Authenticate *request*: the flow a plug's ``async_auth_flow`` returns.

    *replayable* is the client library's in-memory byte stream class (``ByteStream``): only
    a body of that type is sent a second time.
    """
    if origin(request.url) not in origins:
        yield request
        return
    token = provider.cached()
    if token is None:
        token = await provider.get_token()
    headers = request.headers
    # A scan of the raw names: `"ALG-API-VERSION" in headers` first guesses the headers'
    # encoding by decoding every name and value, which costs more than the rest of the flow.
    for name, _ in headers.raw:
        if name.lower() == _API_VERSION_HEADER:
            break
    else:
        headers["ALG-API-VERSION"] = api_version
    headers["Authorization"] = token.authorization
    response = yield request
    # A 401 from a host the client was redirected to says nothing about our token.
    if response.status_code != 401 or origin(response.request.url) not in origins:
        return
    provider.invalidate(token)
    if not isinstance(request.stream, replayable):
        # A streamed body was consumed by the first attempt: the caller gets the 401,
        # and its next request gets the new token.
        return
    renewed = await provider.get_token()
    provider.note_replay()
    logger.info(
        "the API answered 401 for token %s to %s %s; replaying once with token %s",
        token.fingerprint,
        request.method,
        request.url.copy_with(query=None),
        renewed.fingerprint,
    )
    headers["Authorization"] = renewed.authorization
    yield request
