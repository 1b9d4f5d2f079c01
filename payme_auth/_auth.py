"""``PaymeAuth``: the public face, and its httpx plug.

Rules:
- The token goes only to the API origin (the audience's scheme, host and port) and to
  origins the user adds; any other request passes through untouched. httpx itself strips
  ``Authorization`` when it follows a redirect to another origin, with one exception of its
  own: ``http://host`` to ``https://host`` on the default ports. Plain HTTP is allowed only
  to loopback hosts, so that exception can only move the token to TLS on the same machine.
- No lock is held across ``yield request``: httpx may close the flow from another task.
- On a 401 from the API the token that failed is dropped (only if it is still the cached
  one), one new token is fetched, shared by every request that failed with the same token,
  and the request is replayed once. A body that cannot be replayed is not; a second 401 and
  every 403 go back to the caller as they are.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ._config import Environment, Origin, Scope, env_settings, origin_of
from ._errors import ConfigurationError
from ._flow import auth_flow, sync_auth_flow
from ._policy import RetryPolicy
from ._provider import TokenProvider
from ._settings import Settings, TimeoutLike
from ._stats import AuthStats
from ._store import TokenStore
from ._token import AccessToken

__all__ = ["PaymeAuth", "PaymeAuthBase", "plugged"]

_Auth = TypeVar("_Auth", bound="PaymeAuthBase")


class PaymeAuthBase:
    """What every plug shares: the settings, the token provider and its life cycle.

    Use :class:`PaymeAuth` (or ``payme_auth.httpx2.PaymeAuth``); its arguments are these.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        environment: Environment = Environment.PREPROD,
        scopes: Iterable[str | Scope] | str | None = None,
        refresh_margin: float = 60.0,
        timeout: float | TimeoutLike = 10.0,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        extra_origins: Iterable[str] = (),
        assumed_expires_in: int | None = 300,
        advisory_ratio: float | None = 2 / 3,
        clock: Callable[[], float] | None = None,
        store: TokenStore | None = None,
    ) -> None:
        settings = Settings(
            client_id=client_id,
            client_secret=client_secret,
            environment=environment,
            scopes=scopes,
            refresh_margin=refresh_margin,
            timeout=timeout,
            http_client=http_client,
            retry=retry,
            extra_origins=extra_origins,
            assumed_expires_in=assumed_expires_in,
            advisory_ratio=advisory_ratio,
            clock=clock,
            store=store,
        )
        self._share(settings, settings.provider())

    def _shared(self) -> tuple[Settings, TokenProvider]:
        """What another plug needs to serve the same tokens (see :meth:`_share`)."""
        return self._settings, self._provider

    def _share(self, settings: Settings, provider: TokenProvider) -> None:
        """Serve tokens from *provider*, made from *settings* (maybe by another plug)."""
        self._settings = settings
        self._provider = provider
        self._origins: frozenset[Origin] = settings.origins
        self._api_version = settings.environment.api_version
        self.client_id = settings.client_id
        self.environment = settings.environment

    @classmethod
    def from_env(cls: type[_Auth], **overrides: Any) -> _Auth:
        """Build one from ``PAYME_*`` environment variables.

        Reads ``PAYME_CLIENT_ID`` and ``PAYME_CLIENT_SECRET`` (required),
        ``PAYME_ENVIRONMENT`` (``preprod``, the default, or ``production``) or, for a custom
        environment, ``PAYME_TOKEN_URL`` and ``PAYME_AUDIENCE`` together,
        ``PAYME_API_VERSION`` and ``PAYME_SCOPES`` (separated by spaces or commas). Keyword
        arguments override what the variables say, and pass any other setting::

            auth = PaymeAuth.from_env(timeout=5.0)

        Raises:
            ConfigurationError: a variable is missing or invalid.
        """
        settings = {**env_settings(skip=overrides), **overrides}
        for key, variable in (
            ("client_id", "PAYME_CLIENT_ID"),
            ("client_secret", "PAYME_CLIENT_SECRET"),
        ):
            if key not in settings:
                raise ConfigurationError(f"{variable} is not set")
        return cls(**settings)

    # -- tokens ----------------------------------------------------------------------------

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes requested, in order."""
        return self._settings.scopes

    async def get_token(self) -> AccessToken:
        """Return a valid access token: the cached one, or a new one when it is due.

        However many tasks call this at once, at most one token request per event loop is
        in flight; all of them get its token, or its error. While the cached token has
        not expired, a failed fetch is logged and that token returned instead.

        Raises:
            TokenError: no token could be obtained and none valid was cached (see its
                subclasses).
            AuthClosedError: :meth:`aclose` was called.
        """
        token = self._provider.cached()
        if token is not None:
            return token
        return await self._provider.get_token()

    def get_token_sync(self) -> AccessToken:
        """:meth:`get_token` for synchronous code (Django, Flask, Celery, threads).

        Blocks the calling thread only. Threads share the cached token and one fetch
        however many of them wait; the fetch runs in a thread of its own, so a thread that
        is interrupted leaves nothing half-done. Sync and async callers of one PaymeAuth
        share the same token.

        Raises:
            TokenError: no token could be obtained and none valid was cached.
            AuthClosedError: :meth:`close` was called.
        """
        token = self._provider.cached()
        if token is not None:
            return token
        return self._provider.get_token_sync()

    def refresh_sync(self) -> AccessToken:
        """:meth:`refresh` for synchronous code."""
        return self._provider.refresh_sync()

    def headers_sync(self) -> dict[str, str]:
        """:meth:`headers` for synchronous code."""
        token = self.get_token_sync()
        return {"Authorization": token.authorization, "ALG-API-VERSION": self._api_version}

    async def refresh(self) -> AccessToken:
        """Fetch a new token now, even if the cached one is still good.

        Concurrent calls share one fetch (and join one already in flight).
        """
        return await self._provider.refresh()

    def invalidate(self, token: AccessToken | None = None) -> bool:
        """Drop the cached token, so that the next call fetches a new one.

        With *token*, drop it only if it is still the cached one: a caller that saw that
        token rejected cannot throw away a newer one. Returns whether a token was dropped.
        """
        return self._provider.invalidate(token)

    async def headers(self) -> dict[str, str]:
        """The headers a Pay-me API request needs: ``Authorization`` and ``ALG-API-VERSION``.

        For clients with no plug (aiohttp has one: :class:`payme_auth.aiohttp.PaymeAuthMiddleware`).
        These headers do not say which token they carry; to report a 401, build them yourself::

            token = await auth.get_token()
            headers = {"Authorization": token.authorization, "ALG-API-VERSION": API_VERSION}

        is the same, and lets you report a 401 with ``auth.invalidate(token)``.
        """
        token = await self.get_token()
        return {"Authorization": token.authorization, "ALG-API-VERSION": self._api_version}

    def stats(self) -> AuthStats:
        """A snapshot of the token's state and of what this PaymeAuth has done.

        Holds no secret; meant for a health endpoint::

            @app.get("/health/payme")
            async def payme_health() -> dict[str, object]:
                return attrs.asdict(auth.stats())
        """
        return self._provider.stats()

    def _flow_parts(self) -> tuple[TokenProvider, frozenset[Origin], str]:
        """What a plug over this PaymeAuth needs to run the shared flow."""
        return self._provider, self._origins, self._api_version

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Forget the token, stop every fetch in flight, and refuse further fetches.

        Works from any thread, with or without an event loop; :meth:`aclose` is the same
        for async code. Every caller waiting for a token gets :class:`AuthClosedError`. A
        borrowed ``http_client`` is left open. Closing twice is harmless.
        """
        self._provider.close()

    async def aclose(self) -> None:
        """Forget the token, stop every fetch in flight, and refuse further fetches.

        A fetch of this event loop is cancelled before this returns, so no token request
        leaves after it; one of another event loop as soon as that loop runs. A borrowed
        ``http_client`` is left open. Closing twice is harmless.
        """
        self._provider.close()

    async def __aenter__(self: _Auth) -> _Auth:
        self._provider.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._provider.close()

    def __repr__(self) -> str:
        return (
            f"PaymeAuth(client_id={self.client_id!r}, environment={self.environment.name!r}, "
            f"scopes={' '.join(self.scopes)!r})"
        )


class PaymeAuth(PaymeAuthBase, httpx.Auth):
    """Access tokens for the Pay-me API: fetched once, cached, renewed, shared.

    Use it as the ``auth`` of an :class:`httpx.AsyncClient`; every request to the API gets
    ``Authorization: Bearer <token>`` and ``ALG-API-VERSION``::

        async with PaymeAuth("my-client-id", "my-client-secret") as auth:
            async with httpx.AsyncClient(
                base_url="https://api.preprod.alignet.io", auth=auth
            ) as client:
                response = await client.post("/charges", json=charge)

    For any other HTTP client, ``await auth.headers()`` gives the two headers.

    ``async with`` is optional: ``httpx.AsyncClient(auth=PaymeAuth(...))`` works on its
    own. Either way token fetches run in tasks of the PaymeAuth's own, so a caller's
    cancellation or deadline never aborts a fetch that others wait for. One PaymeAuth may
    serve several event loops and threads, and ``httpx.Client`` too.

    Args:
        client_id: the client id Pay-me issued.
        client_secret: the client secret Pay-me issued. Never logged nor shown.
        environment: :attr:`Environment.PREPROD` (the default), :attr:`Environment.PRODUCTION`,
            or an :class:`Environment` of your own.
        scopes: the scopes to request (strings or :class:`Scope`); ``create:token`` is always
            included. Default: all four documented scopes.
        refresh_margin: renew the token, in the background, at the latest when this many
            seconds of its life remain; callers keep using it meanwhile, and wait for a new
            one only in its last 5 s (or last twentieth). Capped at half the lifetime.
        advisory_ratio: how far into its life, up to the refresh margin, a token is renewed
            in the background while every caller keeps using it without waiting (2/3 by
            default). ``None`` renews only inside the refresh margin.
        timeout: the token request's timeout in seconds, for the whole request, or an
            :class:`httpx.Timeout` bounding each phase.
        http_client: an :class:`httpx.AsyncClient` to send token requests with. It is
            borrowed: never changed, never closed. By default a short-lived client is opened
            for each fetch.
        retry: how often and how patiently to retry an unavailable token endpoint.
        extra_origins: more origins (``"https://host:port"``) that may receive the token,
            besides the audience's.
        assumed_expires_in: the lifetime, in seconds, assumed for a token whose answer has
            no ``expires_in``; ``None`` makes such an answer an error.
        clock: a monotonic clock in seconds (for tests). Default: :func:`time.monotonic`.
            When given, it is also the wall clock of the times written to a ``store``.
        store: a :class:`TokenStore` shared by many processes (such as
            :class:`payme_auth.redis.RedisTokenStore`), so that a whole fleet fetches one
            token per lifetime: a fetch first takes a newer token another process stored,
            else fetches under the store's lease and stores the new token. A cached token
            is served without asking the store; a store that fails or is slow only makes
            this process fetch on its own. ``None`` (the default): nothing is shared.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def applies_to(self, url: httpx.URL) -> bool:
        """Tell whether a request to *url* gets the token (its origin is the API's)."""
        return origin_of(url) in self._origins

    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Authenticate *request* for httpx (called by :class:`httpx.AsyncClient`)."""
        # Returns the shared flow's generator itself: no wrapping layer on the hot path.
        return auth_flow(
            request, self._provider, self._origins, self._api_version, httpx.ByteStream
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Authenticate *request* for httpx (called by :class:`httpx.Client`)."""
        return sync_auth_flow(
            request, self._provider, self._origins, self._api_version, httpx.ByteStream
        )


def plugged(auth: object, *, plug: str) -> PaymeAuth:
    """The :class:`PaymeAuth` behind *auth* (either plug's), for the plug of another HTTP
    client named *plug*; a :class:`ConfigurationError` for anything else."""
    if isinstance(auth, PaymeAuth):
        return auth
    if isinstance(auth, PaymeAuthBase):  # the httpx2 plug: the same provider, for httpx
        inner: PaymeAuth = auth.httpx_auth  # type: ignore[attr-defined]
        return inner
    raise ConfigurationError(f"{plug} needs a payme_auth.PaymeAuth, not {type(auth).__name__}")
