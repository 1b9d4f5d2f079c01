"""The plug for aiohttp clients: ``from payme_auth.aiohttp import PaymeAuthMiddleware``.

An aiohttp client middleware (aiohttp 3.12 or later) that does for an
:class:`aiohttp.ClientSession` what :class:`payme_auth.PaymeAuth` does for
``httpx.AsyncClient(auth=...)``::

    async with PaymeAuth("client-id", "client-secret") as auth:
        async with aiohttp.ClientSession(middlewares=(PaymeAuthMiddleware(auth),)) as session:
            async with session.post(f"{auth.environment.api_base_url}/charges", json=charge) as r:
                ...

Install it with ``pip install "payme-auth[aiohttp]"``. aiohttp runs on asyncio only, so this
plug does too (the ``PaymeAuth`` behind it also serves trio code through its httpx plug).

Rules (those of the httpx plug, stated in ``payme_auth/_flow.py``):
- The token and ``ALG-API-VERSION`` go only to the allowed origins (the audience's and the
  ``extra_origins``); any other request passes through untouched. A caller's own
  ``ALG-API-VERSION`` is kept. Plain HTTP origins are allowed only to loopback hosts (checked
  when the PaymeAuth is built), so the token never crosses a network in clear.
- aiohttp runs the middlewares once per redirect hop, each hop a new request built from the
  caller's headers: a hop to another origin passes through here without the token.
- No lock is held across the call to the next handler.
- On a 401 from an allowed origin the token that failed is dropped (only if it is still the
  cached one). If the body can be sent again (none, bytes, str, JSON, a url-encoded form, or
  a multipart form made only of those), one new token is fetched, shared by every request
  that failed with the same token, and the request is replayed once, counted in
  ``stats().replays``. Any other body (an async iterator, a file, a stream) is not replayed:
  the caller gets the 401, and its next request the new token.
- A second 401 and every 403 go back to the caller as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import aiohttp
    from aiohttp.multipart import MultipartWriter
    from aiohttp.payload import BytesPayload
    from yarl import URL
except ImportError as exc:
    raise ImportError(
        "payme_auth.aiohttp needs aiohttp 3.12 or later: install it with "
        "pip install 'payme-auth[aiohttp]'"
    ) from exc

from ._auth import PaymeAuth, plugged
from ._config import Origin
from ._log import logger

if TYPE_CHECKING:
    import payme_auth.httpx2

__all__ = ["PaymeAuthMiddleware"]


def _origin(url: URL) -> Origin | None:
    # yarl fills in the default port, as _config.origin_of does for httpx's URLs.
    host, scheme = url.host, url.scheme
    if host is None:
        return None
    return (scheme, host.lower(), url.port or 0)


def _replayable(body: object) -> bool:
    """Whether *body* (``ClientRequest.body``) is in memory and can be sent a second time."""
    if isinstance(body, (bytes, BytesPayload)):  # b"": no body; str, JSON, forms: bytes
        return True
    if isinstance(body, MultipartWriter):
        return all(_replayable(part) for part, _, _ in body)
    return False


class PaymeAuthMiddleware:
    """An aiohttp client middleware that authenticates requests to the Pay-me API.

    Pass it to the session::

        session = aiohttp.ClientSession(middlewares=(PaymeAuthMiddleware(auth),))

    Requests to the API's origin (and the ``extra_origins`` of *auth*) get
    ``Authorization: Bearer <token>`` and ``ALG-API-VERSION`` (unless the request sets its
    own); others pass through untouched, redirect hops to another host included. On a 401
    from the API the token is dropped (if still cached) and the request is sent once more
    with a new token, shared by every request that failed with the old one, when its body
    is held in memory (none, bytes, str, JSON, a form); a streamed body is not sent again.
    A second 401 and every 403 are returned as they are; replays are counted in
    :meth:`~payme_auth.PaymeAuth.stats`. A :class:`~payme_auth.TokenError` from a token
    fetch reaches the caller of the request, which is then not sent.

    One middleware may serve any number of sessions, and one PaymeAuth any number of
    middlewares and httpx clients: they share its cached token, its fetches and its
    :meth:`~payme_auth.PaymeAuth.stats`.

    Args:
        auth: a :class:`payme_auth.PaymeAuth`, or the httpx2 plug
            (``payme_auth.httpx2.PaymeAuth``).

    Raises:
        ConfigurationError: *auth* is neither.
    """

    __slots__ = ("_api_version", "_auth", "_origins", "_provider")

    def __init__(self, auth: PaymeAuth | payme_auth.httpx2.PaymeAuth) -> None:
        self._auth = plugged(auth, plug="PaymeAuthMiddleware")
        self._provider, self._origins, self._api_version = self._auth._flow_parts()  # noqa: SLF001

    def applies_to(self, url: URL | str) -> bool:
        """Tell whether a request to *url* gets the token (its origin is an allowed one)."""
        return _origin(URL(url)) in self._origins

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Authenticate *request*, send it with *handler*, replay it once after a 401."""
        if _origin(request.url) not in self._origins:
            return await handler(request)
        provider = self._provider
        token = await provider.get_token()
        headers = request.headers
        if "ALG-API-VERSION" not in headers:
            headers["ALG-API-VERSION"] = self._api_version
        headers["Authorization"] = token.authorization
        response = await handler(request)
        if response.status != 401:
            return response
        provider.invalidate(token)
        if not _replayable(request.body):
            # The body was consumed by the first attempt: the caller gets the 401, and its
            # next request gets the new token.
            return response
        try:
            renewed = await provider.get_token()
        finally:
            # The caller never sees this response: give its connection back, even when
            # no new token can be had (the caller then gets the TokenError).
            response.release()
        provider.note_replay()
        logger.info(
            "the API answered 401 for token %s to %s %s; replaying once with token %s",
            token.fingerprint,
            request.method,
            request.url.with_query(None),
            renewed.fingerprint,
        )
        headers["Authorization"] = renewed.authorization
        return await handler(request)

    def __repr__(self) -> str:
        return f"PaymeAuthMiddleware({self._auth!r})"
