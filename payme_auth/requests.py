"""The plug for requests: ``from payme_auth.requests import PaymeRequestsAuth``.

A :class:`requests.auth.AuthBase` that does for a :class:`requests.Session` what
:class:`payme_auth.PaymeAuth` does for ``httpx.Client(auth=...)``::

    auth = PaymeAuth.from_env()  # one per process, shared by every thread

    session = requests.Session()
    session.auth = PaymeRequestsAuth(auth)
    response = session.post(f"{auth.environment.api_base_url}/charges", json=charge)

Install it with ``pip install "payme-auth[requests]"``.

Rules (those of the httpx plug, stated in ``payme_auth/_flow.py``):
- The token and ``ALG-API-VERSION`` go only to the allowed origins (the audience's and the
  ``extra_origins``: scheme, host and port, default ports filled in); any other request
  passes through untouched. A caller's own ``ALG-API-VERSION`` is kept.
- requests applies an auth once per request, not per redirect hop: a hop copies the first
  request's headers, and ``Session.rebuild_auth`` drops ``Authorization`` when the host,
  port or scheme changes (except ``http`` to ``https`` on the default ports, which can only
  move the token to TLS: plain HTTP origins are allowed only to loopback hosts). So a
  redirect to another origin never carries the token.
- A token is waited for by blocking the calling thread; every thread shares one cached
  token and one fetch in flight (see ``payme_auth/_provider.py``).
- On a 401 from an allowed origin to a request that carried the token, that token is
  dropped (only if it is still the cached one). If the body can be sent again (none, bytes,
  str: JSON, url-encoded forms and multipart forms are bytes or str by then), one new token
  is fetched, shared by every request that failed with the same token, and the request is
  replayed once on the same connection pool, with the same settings (timeout, verify,
  proxies, stream) and hooks, counted in ``stats().replays``. A generator, an iterator or a
  file is not sent again: the caller gets the 401, and its next request the new token.
- A second 401 and every 403 go back to the caller as they are.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

try:
    import requests
    from requests.auth import AuthBase
    from requests.cookies import extract_cookies_to_jar
except ImportError as exc:
    raise ImportError(
        "payme_auth.requests needs requests: install it with pip install 'payme-auth[requests]'"
    ) from exc

import httpx

from ._auth import PaymeAuth, plugged
from ._config import Origin, origin_of
from ._log import logger
from ._token import AccessToken

if TYPE_CHECKING:
    import payme_auth.httpx2

__all__ = ["PaymeRequestsAuth"]


def _origin(url: str | None) -> Origin | None:
    """The origin of *url*, parsed as the settings' origins are (``None`` if it has none)."""
    if not url:
        return None
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    # Only the scheme and host[:port] are parsed (and remembered): never a path, a query,
    # or userinfo, which may hold secrets of their own.
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return _origin_of_prefix(f"{scheme}://{host}")


@functools.lru_cache(maxsize=256)
def _origin_of_prefix(prefix: str) -> Origin | None:
    # Parsing with httpx costs ~9 µs, more than the rest of the plug: once per origin.
    try:
        return origin_of(httpx.URL(prefix))
    except (httpx.InvalidURL, TypeError, ValueError):
        return None


def _replayable(body: object) -> bool:
    """Whether *body* (``PreparedRequest.body``) is in memory and can be sent again."""
    return body is None or isinstance(body, (bytes, str))


class PaymeRequestsAuth(AuthBase):
    """A requests auth that authenticates requests to the Pay-me API.

    Set it on a session, or pass it per request::

        session.auth = PaymeRequestsAuth(auth)
        requests.post(url, json=charge, auth=PaymeRequestsAuth(auth), timeout=15)

    Requests to the API's origin (and the ``extra_origins`` of *auth*) get
    ``Authorization: Bearer <token>`` and ``ALG-API-VERSION`` (unless the request sets its
    own); others pass through untouched, and a redirect to another origin does not carry the
    token. On a 401 from the API the token is dropped (if still cached) and the request is
    sent once more with a new token, shared by every request that failed with the old one,
    when its body is held in memory (none, bytes, str, JSON, a form); a generator or a file
    is not sent again. A second 401 and every 403 are returned as they are; replays are
    counted in :meth:`~payme_auth.PaymeAuth.stats`. A :class:`~payme_auth.TokenError` from a
    token fetch reaches the caller of the request, which is then not sent.

    The calling thread blocks while a token is fetched; every thread, session and client of
    one PaymeAuth shares its cached token, its fetch in flight and its stats, so one
    instance may serve any number of sessions and threads.

    Args:
        auth: a :class:`payme_auth.PaymeAuth`, or the httpx2 plug
            (``payme_auth.httpx2.PaymeAuth``).

    Raises:
        ConfigurationError: *auth* is neither.
    """

    def __init__(self, auth: PaymeAuth | payme_auth.httpx2.PaymeAuth) -> None:
        self._auth = plugged(auth, plug="PaymeRequestsAuth")
        self._provider, self._origins, self._api_version = self._auth._flow_parts()  # noqa: SLF001

    @property
    def auth(self) -> PaymeAuth:
        """The :class:`payme_auth.PaymeAuth` whose tokens this plug attaches."""
        return self._auth

    def applies_to(self, url: str) -> bool:
        """Tell whether a request to *url* gets the token (its origin is an allowed one)."""
        return _origin(url) in self._origins

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Authenticate *request* (called by requests as it prepares the request)."""
        if _origin(request.url) not in self._origins:
            return request
        provider = self._provider
        token = provider.cached() or provider.get_token_sync()
        headers = request.headers
        if "ALG-API-VERSION" not in headers:  # a CaseInsensitiveDict
            headers["ALG-API-VERSION"] = self._api_version
        headers["Authorization"] = token.authorization

        def on_response(response: requests.Response, **settings: Any) -> requests.Response:
            return self._after(response, token, settings)

        # Registered before the caller's own hooks (requests prepares auth first), so those
        # see the replayed response.
        request.register_hook("response", on_response)
        return request

    def _after(
        self, response: requests.Response, token: AccessToken, settings: dict[str, Any]
    ) -> requests.Response:
        """The response hook: replay *response*'s request once after a 401 for *token*."""
        request = response.request
        if (
            response.status_code != 401
            or _origin(request.url) not in self._origins
            # A redirect hop that lost the token says nothing about it.
            or request.headers.get("Authorization") != token.authorization
        ):
            return response
        provider = self._provider
        provider.invalidate(token)
        if not _replayable(request.body):
            # A streamed body was consumed by the first attempt: the caller gets the 401,
            # and its next request gets the new token.
            return response
        # Read and release the refused answer, so that its connection serves the replay.
        _ = response.content
        response.close()
        renewed = provider.get_token_sync()
        replay = request.copy()
        jar = replay._cookies  # noqa: SLF001 - as requests' own HTTPDigestAuth replays
        if jar is not None:  # cookies the 401 set (a load balancer's) go with the replay
            extract_cookies_to_jar(jar, request, response.raw)
            replay.prepare_cookies(jar)
        replay.headers["Authorization"] = renewed.authorization
        provider.note_replay()
        logger.info(
            "the API answered 401 for token %s to %s %s; replaying once with token %s",
            token.fingerprint,
            request.method,
            str(request.url).partition("?")[0],
            renewed.fingerprint,
        )
        # The adapter sends without running hooks: a second 401 goes back as it is.
        again: requests.Response = response.connection.send(replay, **settings)
        again.history.append(response)
        again.request = replay
        return again

    def __repr__(self) -> str:
        return f"PaymeRequestsAuth({self._auth!r})"
