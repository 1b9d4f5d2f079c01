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

import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any

import httpx

from ._config import (
    Environment,
    Origin,
    Scope,
    env_settings,
    normalize_scopes,
    origin_of,
    parse_origin,
)
from ._errors import ConfigurationError
from ._fetcher import TokenFetcher
from ._flow import auth_flow
from ._policy import RetryPolicy, check_seconds
from ._protocol import MAX_EXPIRES_IN
from ._provider import TokenProvider
from ._stats import AuthStats
from ._store import TokenStore, store_key
from ._token import AccessToken

__all__ = ["PaymeAuth"]

_MAX_CREDENTIAL_LENGTH = 1024


def _check_credential(name: str, value: object, *, secret: bool) -> str:
    shown = "" if secret else f": {value!r}"
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
    if not value or value != value.strip():
        raise ConfigurationError(f"{name} must be non-empty, with no surrounding spaces{shown}")
    if len(value) > _MAX_CREDENTIAL_LENGTH or not value.isprintable():
        raise ConfigurationError(
            f"{name} must be at most {_MAX_CREDENTIAL_LENGTH} printable characters{shown}"
        )
    return value


def _timeouts(timeout: float | httpx.Timeout) -> tuple[httpx.Timeout, float]:
    """Return httpx's per-operation timeouts and a bound on one whole attempt."""
    if isinstance(timeout, httpx.Timeout):
        parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        if any(part is None for part in parts):
            raise ConfigurationError(
                "timeout must bound every phase (connect, read, write, pool): "
                "a token request that can hang forever would hang every caller"
            )
        return timeout, float(sum(part for part in parts if part is not None))
    seconds = check_seconds("timeout", timeout)
    if seconds <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout!r}")
    return httpx.Timeout(seconds), seconds


class PaymeAuth(httpx.Auth):
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
    own. Inside ``async with``, token fetches run in a task group of the PaymeAuth's own,
    so a caller's cancellation or deadline never aborts a fetch that others wait for.

    Args:
        client_id: the client id Pay-me issued.
        client_secret: the client secret Pay-me issued. Never logged nor shown.
        environment: :attr:`Environment.PREPROD` (the default), :attr:`Environment.PRODUCTION`,
            or an :class:`Environment` of your own.
        scopes: the scopes to request (strings or :class:`Scope`); ``create:token`` is always
            included. Default: all four documented scopes.
        refresh_margin: renew the token when fewer than this many seconds of its life remain;
            callers then wait for the new one. Capped at half the token's lifetime.
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

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        environment: Environment = Environment.PREPROD,
        scopes: Iterable[str | Scope] | str | None = None,
        refresh_margin: float = 60.0,
        timeout: float | httpx.Timeout = 10.0,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        extra_origins: Iterable[str] = (),
        assumed_expires_in: int | None = 300,
        advisory_ratio: float | None = 2 / 3,
        clock: Callable[[], float] | None = None,
        store: TokenStore | None = None,
    ) -> None:
        self.client_id = _check_credential("client_id", client_id, secret=False)
        secret = _check_credential("client_secret", client_secret, secret=True)
        if not isinstance(environment, Environment):
            raise ConfigurationError(
                f"environment must be an Environment, not {type(environment).__name__}"
            )
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError(
                f"http_client must be an httpx.AsyncClient, not {type(http_client).__name__}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        assumed: object = assumed_expires_in
        if assumed is not None and (
            isinstance(assumed, bool)
            or not isinstance(assumed, int)
            or not 1 <= assumed <= MAX_EXPIRES_IN
        ):
            raise ConfigurationError(
                f"assumed_expires_in must be a positive whole number of seconds or None, "
                f"not {assumed_expires_in!r}"
            )
        if isinstance(extra_origins, str):
            extra_origins = [extra_origins]
        elif not isinstance(extra_origins, Iterable):
            raise ConfigurationError(
                f"extra_origins must be a list of origins, not {type(extra_origins).__name__}"
            )
        if clock is not None and not callable(clock):
            raise ConfigurationError(f"clock must be a callable, not {type(clock).__name__}")
        if store is not None and not isinstance(store, TokenStore):
            raise ConfigurationError(
                f"store must be a TokenStore (get, publish, acquire, release, discard), "
                f"not {type(store).__name__}"
            )
        http_timeout, attempt_timeout = _timeouts(timeout)
        self.environment = environment
        self._origins: frozenset[Origin] = frozenset(
            {environment.api_origin, *map(parse_origin, extra_origins)}
        )
        self._api_version = environment.api_version
        ratio: object = advisory_ratio
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1
        ):
            raise ConfigurationError(
                f"advisory_ratio must be a number in (0, 1] or None, not {advisory_ratio!r}"
            )
        wall_clock = clock or time.time
        clock = clock or time.monotonic
        fetcher = TokenFetcher(
            environment=environment,
            client_id=self.client_id,
            client_secret=secret,
            scopes=normalize_scopes(scopes),
            timeout=http_timeout,
            attempt_timeout=attempt_timeout,
            http_client=http_client,
            assumed_expires_in=assumed_expires_in,
            clock=clock,
        )
        self._provider = TokenProvider(
            fetcher,
            refresh_margin=check_seconds("refresh_margin", refresh_margin),
            advisory_ratio=advisory_ratio,
            retry=retry or RetryPolicy(),
            clock=clock,
            store=store,
            store_key=store_key(
                token_url=environment.token_url,
                audience=environment.audience,
                client_id=self.client_id,
                scopes=fetcher.scopes,
                client_secret=secret,
            )
            if store is not None
            else "",
            attempt_timeout=attempt_timeout,
            wall_clock=wall_clock,
        )
        self._scopes = fetcher.scopes

    @classmethod
    def from_env(cls, **overrides: Any) -> PaymeAuth:
        """Build a PaymeAuth from ``PAYME_*`` environment variables.

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
        return self._scopes

    async def get_token(self) -> AccessToken:
        """Return a valid access token: the cached one, or a new one when it is due.

        However many tasks call this at once, at most one token request is in flight; all
        of them get its token, or its error. While the cached token has not expired, a
        failed fetch is logged and that token returned instead.

        Raises:
            TokenError: no token could be obtained and none valid was cached (see its
                subclasses).
            AuthClosedError: :meth:`aclose` was called.
        """
        token = self._provider.current()
        if token is not None:
            return token
        return await self._provider.get_token()

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

        For clients other than httpx (aiohttp, for one)::

            async with session.post(url, json=charge, headers=await auth.headers()) as r: ...
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

    # -- the httpx plug --------------------------------------------------------------------

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

    def _flow_parts(self) -> tuple[TokenProvider, frozenset[Origin], str]:
        """What another plug over this PaymeAuth needs to run the same flow (httpx2's)."""
        return self._provider, self._origins, self._api_version

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Refuse synchronous clients: tokens are fetched asynchronously."""
        raise ConfigurationError(
            "PaymeAuth works with httpx.AsyncClient, not the synchronous httpx.Client"
        )

    # -- life cycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Forget the token, stop any fetch in flight, and refuse further fetches.

        A borrowed ``http_client`` is left open. Closing twice is harmless.
        """
        await self._provider.aclose()

    async def __aenter__(self) -> PaymeAuth:
        await self._provider.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._provider.stop()

    def __repr__(self) -> str:
        return (
            f"PaymeAuth(client_id={self.client_id!r}, environment={self.environment.name!r}, "
            f"scopes={' '.join(self.scopes)!r})"
        )
