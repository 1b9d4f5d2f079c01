"""The auth flow both plugs run: its rules once, for httpx and for httpx2 requests alike.

Rules:
- The token goes only to the allowed origins (the audience's and the extra ones); any other
  request passes through untouched. ``ALG-API-VERSION`` is added unless already set.
- No lock is held across a ``yield``: the client may close the flow from another task.
- A synchronous client waits for a token by blocking its thread; the fetch itself runs in a
  thread of its own (see ``_provider``), shared by every thread that waits.
- On a 401 from an allowed origin the token that failed is dropped (only if it is still the
  cached one). If the request body can be sent again (the client's in-memory byte stream),
  one new token is fetched, shared by every request that failed with the same token, and
  the request is replayed once. A streamed body is not replayed: the caller gets the 401,
  and its next request the new token.
- A second 401, every 403, and a 401 from another origin reached by a redirect go back to
  the caller as they are.

The flow is one async generator (and its synchronous twin, for ``httpx.Client``, sharing
every step) written against what httpx's and httpx2's models share (``Request.url``,
``.headers``, ``.method``, ``.stream``; ``Response.status_code`` and ``.request``), so each
plug is a one-line adapter: no wrapping generator, nothing allocated per request beyond the
generator itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Protocol, TypeVar, cast

from ._config import Origin, origin_of
from ._log import logger
from ._provider import TokenProvider
from ._token import AccessToken

__all__ = [
    "RequestLike",
    "ResponseLike",
    "URLLike",
    "auth_flow",
    "origin",
    "sync_auth_flow",
]


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


def _authorize(request: RequestLike, token: AccessToken, api_version: str) -> None:
    """Set the two headers on *request*; a caller's own ALG-API-VERSION is kept."""
    headers = request.headers
    # A scan of the raw names: `"ALG-API-VERSION" in headers` first guesses the headers'
    # encoding by decoding every name and value, which costs more than the rest of the flow.
    for name, _ in headers.raw:
        if name.lower() == _API_VERSION_HEADER:
            break
    else:
        headers["ALG-API-VERSION"] = api_version
    headers["Authorization"] = token.authorization


def _refused(
    request: RequestLike,
    response: ResponseLike,
    token: AccessToken,
    *,
    provider: TokenProvider,
    origins: frozenset[Origin],
    replayable: type[object],
) -> bool:
    """Whether *response* is a 401 for *token* from an allowed origin that calls for one
    replay of *request*; drops that token (if still cached) when it is a 401."""
    # A 401 from a host the client was redirected to says nothing about our token.
    if response.status_code != 401 or origin(response.request.url) not in origins:
        return False
    provider.invalidate(token)
    # A streamed body was consumed by the first attempt: the caller gets the 401, and its
    # next request gets the new token.
    return isinstance(request.stream, replayable)


def _replay(
    request: RequestLike, old: AccessToken, new: AccessToken, provider: TokenProvider
) -> None:
    provider.note_replay()
    logger.info(
        "the API answered 401 for token %s to %s %s; replaying once with token %s",
        old.fingerprint,
        request.method,
        request.url.copy_with(query=None),
        new.fingerprint,
    )
    request.headers["Authorization"] = new.authorization


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
    _authorize(request, token, api_version)
    response = yield request
    if _refused(
        request, response, token, provider=provider, origins=origins, replayable=replayable
    ):
        renewed = await provider.get_token()
        _replay(request, token, renewed, provider)
        yield request


def sync_auth_flow(
    request: RequestT,
    provider: TokenProvider,
    origins: frozenset[Origin],
    api_version: str,
    replayable: type[object],
) -> Generator[RequestT, ResponseLike, None]:
    """:func:`auth_flow` for synchronous clients (a plug's ``sync_auth_flow``): the same
    rules, waiting for a token by blocking this thread."""
    if origin(request.url) not in origins:
        yield request
        return
    token = provider.cached() or provider.get_token_sync()
    _authorize(request, token, api_version)
    response = yield request
    if _refused(
        request, response, token, provider=provider, origins=origins, replayable=replayable
    ):
        renewed = provider.get_token_sync()
        _replay(request, token, renewed, provider)
        yield request
