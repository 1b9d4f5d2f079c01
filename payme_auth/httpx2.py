"""The plug for httpx2 clients: ``from payme_auth.httpx2 import PaymeAuth``.

httpx2's ``AsyncClient`` takes only an ``httpx2.Auth`` as ``auth=``, so this
:class:`PaymeAuth` is one, running the same flow as :class:`payme_auth.PaymeAuth` (same
origin check, headers, 401 replay) over the same token provider. Tokens are still fetched
with httpx, a dependency of payme_auth either way; httpx2 is needed only for this module
(``pip install "payme-auth[httpx2]"``).

One token provider can serve both an httpx and an httpx2 client::

    from payme_auth import PaymeAuth
    from payme_auth import httpx2 as payme_httpx2

    async with PaymeAuth("client-id", "client-secret") as auth:
        auth2 = payme_httpx2.PaymeAuth.from_auth(auth)  # the same token, fetches and stats
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from types import TracebackType
from typing import Any

import httpx

try:
    import httpx2
except ImportError as exc:
    raise ImportError(
        "payme_auth.httpx2 needs httpx2: install it with pip install 'payme-auth[httpx2]'"
    ) from exc

from . import _auth
from ._config import Environment, Scope
from ._errors import ConfigurationError
from ._flow import auth_flow, origin
from ._policy import RetryPolicy
from ._stats import AuthStats
from ._store import TokenStore
from ._token import AccessToken

__all__ = ["PaymeAuth"]


def _http_client(value: object) -> httpx.AsyncClient | None:
    # After httpx2.alias_httpx(), httpx is httpx2 and its clients are welcome.
    if not isinstance(value, httpx.AsyncClient) and isinstance(
        value, (httpx2.AsyncClient, httpx2.Client)
    ):
        raise ConfigurationError(
            "http_client sends token requests, which payme_auth makes with httpx: pass an "
            "httpx.AsyncClient (or nothing), not an httpx2 client"
        )
    # Anything else is checked, with the usual message, by payme_auth.PaymeAuth.
    return value  # type: ignore[return-value]


def _timeout(value: float | httpx.Timeout | httpx2.Timeout) -> float | httpx.Timeout:
    if isinstance(value, httpx2.Timeout):
        return httpx.Timeout(
            connect=value.connect, read=value.read, write=value.write, pool=value.pool
        )
    return value


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """*settings* with an httpx2 timeout turned into httpx's, and an httpx2 client refused."""
    if "http_client" in settings:
        settings["http_client"] = _http_client(settings["http_client"])
    if "timeout" in settings:
        settings["timeout"] = _timeout(settings["timeout"])
    return settings


class PaymeAuth(httpx2.Auth):
    """Access tokens for the Pay-me API, as the ``auth`` of an :class:`httpx2.AsyncClient`.

    The same settings and behaviour as :class:`payme_auth.PaymeAuth`::

        from payme_auth.httpx2 import PaymeAuth

        async with PaymeAuth("my-client-id", "my-client-secret") as auth:
            async with httpx2.AsyncClient(
                base_url="https://api.preprod.alignet.io", auth=auth
            ) as client:
                response = await client.post("/charges", json=charge)

    Differences: *timeout* may also be an :class:`httpx2.Timeout`; *http_client*, which
    sends the token requests, must be an :class:`httpx.AsyncClient` (token requests go
    through httpx), and an httpx2 client there raises :class:`ConfigurationError`. The
    synchronous :class:`httpx2.Client` is refused, as httpx's is.

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
        timeout: float | httpx.Timeout | httpx2.Timeout = 10.0,
        http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        extra_origins: Iterable[str] = (),
        assumed_expires_in: int | None = 300,
        advisory_ratio: float | None = 2 / 3,
        clock: Callable[[], float] | None = None,
        store: TokenStore | None = None,
    ) -> None:
        self._bind(
            _auth.PaymeAuth(
                client_id,
                client_secret,
                environment=environment,
                scopes=scopes,
                refresh_margin=refresh_margin,
                timeout=_timeout(timeout),
                http_client=_http_client(http_client),
                retry=retry,
                extra_origins=extra_origins,
                assumed_expires_in=assumed_expires_in,
                advisory_ratio=advisory_ratio,
                clock=clock,
                store=store,
            )
        )

    def _bind(self, auth: _auth.PaymeAuth) -> None:
        self._auth = auth
        self._provider, self._origins, self._api_version = auth._flow_parts()  # noqa: SLF001

    @classmethod
    def from_auth(cls, auth: _auth.PaymeAuth | PaymeAuth) -> PaymeAuth:
        """An httpx2 plug over the token provider of an existing :class:`payme_auth.PaymeAuth`.

        Both then share one cached token, one fetch in flight, one set of stats and one
        life cycle: closing either closes both, and only one of them may be entered with
        ``async with``.

        Raises:
            ConfigurationError: *auth* is not a PaymeAuth.
        """
        if isinstance(auth, PaymeAuth):
            auth = auth.httpx_auth
        if not isinstance(auth, _auth.PaymeAuth):
            raise ConfigurationError(f"from_auth needs a PaymeAuth, not {type(auth).__name__}")
        plug = cls.__new__(cls)
        plug._bind(auth)  # noqa: SLF001 - an instance of this very class
        return plug

    @classmethod
    def from_env(cls, **overrides: Any) -> PaymeAuth:
        """Build one from ``PAYME_*`` environment variables, as
        :meth:`payme_auth.PaymeAuth.from_env` does.

        Raises:
            ConfigurationError: a variable is missing or invalid.
        """
        return cls.from_auth(_auth.PaymeAuth.from_env(**_settings(overrides)))

    @property
    def httpx_auth(self) -> _auth.PaymeAuth:
        """The :class:`payme_auth.PaymeAuth` behind this plug, for httpx clients."""
        return self._auth

    # -- tokens, as payme_auth.PaymeAuth -------------------------------------------------

    @property
    def client_id(self) -> str:
        """The client id."""
        return self._auth.client_id

    @property
    def environment(self) -> Environment:
        """The Pay-me environment."""
        return self._auth.environment

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes requested, in order."""
        return self._auth.scopes

    async def get_token(self) -> AccessToken:
        """Return a valid access token (see :meth:`payme_auth.PaymeAuth.get_token`)."""
        return await self._auth.get_token()

    async def refresh(self) -> AccessToken:
        """Fetch a new token now (see :meth:`payme_auth.PaymeAuth.refresh`)."""
        return await self._auth.refresh()

    def invalidate(self, token: AccessToken | None = None) -> bool:
        """Drop the cached token, or only *token* if still cached; say whether one was."""
        return self._auth.invalidate(token)

    async def headers(self) -> dict[str, str]:
        """The headers a Pay-me API request needs: ``Authorization`` and ``ALG-API-VERSION``."""
        return await self._auth.headers()

    def stats(self) -> AuthStats:
        """A snapshot of the token's state and of what the provider has done."""
        return self._auth.stats()

    # -- the httpx2 plug -------------------------------------------------------------------

    def applies_to(self, url: httpx2.URL | httpx.URL) -> bool:
        """Tell whether a request to *url* gets the token (its origin is the API's)."""
        return origin(url) in self._origins

    def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """Authenticate *request* (called by :class:`httpx2.AsyncClient`)."""
        return auth_flow(
            request, self._provider, self._origins, self._api_version, httpx2.ByteStream
        )

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        """Refuse synchronous clients: tokens are fetched asynchronously."""
        raise ConfigurationError(
            "payme_auth.httpx2.PaymeAuth works with httpx2.AsyncClient, "
            "not the synchronous httpx2.Client"
        )

    # -- life cycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Forget the token and refuse further fetches (see :meth:`payme_auth.PaymeAuth.aclose`)."""
        await self._auth.aclose()

    async def __aenter__(self) -> PaymeAuth:
        await self._auth.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._auth.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"payme_auth.httpx2.{self._auth!r}"
