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

from collections.abc import AsyncGenerator, Generator

import httpx

try:
    import httpx2
except ImportError as exc:
    raise ImportError(
        "payme_auth.httpx2 needs httpx2: install it with pip install 'payme-auth[httpx2]'"
    ) from exc

from . import _auth
from ._errors import ConfigurationError
from ._flow import auth_flow, origin, sync_auth_flow

__all__ = ["PaymeAuth"]


class PaymeAuth(_auth.PaymeAuthBase, httpx2.Auth):
    """Access tokens for the Pay-me API, as the ``auth`` of an ``httpx2.AsyncClient``.

    The same arguments, methods and behaviour as :class:`payme_auth.PaymeAuth`::

        from payme_auth.httpx2 import PaymeAuth

        async with PaymeAuth("my-client-id", "my-client-secret") as auth:
            async with httpx2.AsyncClient(
                base_url="https://api.preprod.alignet.io", auth=auth
            ) as client:
                response = await client.post("/charges", json=charge)

    *timeout* may be an ``httpx2.Timeout`` too. *http_client*, which sends the token
    requests, must be an :class:`httpx.AsyncClient` (token requests go through httpx).

    Raises:
        ConfigurationError: a setting is invalid.
    """

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
        plug._share(*auth._shared())  # noqa: SLF001 - the plugs' own sharing
        plug._httpx_auth = auth  # noqa: SLF001 - an instance of this very class
        return plug

    _httpx_auth: _auth.PaymeAuth | None = None

    @property
    def httpx_auth(self) -> _auth.PaymeAuth:
        """A :class:`payme_auth.PaymeAuth` over the same provider, for httpx clients."""
        if self._httpx_auth is None:
            plug = _auth.PaymeAuth.__new__(_auth.PaymeAuth)
            plug._share(*self._shared())  # noqa: SLF001 - the plugs' own sharing
            self._httpx_auth = plug
        return self._httpx_auth

    # -- the httpx2 plug -------------------------------------------------------------------

    def applies_to(self, url: httpx2.URL | httpx.URL) -> bool:
        """Tell whether a request to *url* gets the token (its origin is the API's)."""
        return origin(url) in self._origins

    def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """Authenticate *request* (called by ``httpx2.AsyncClient``)."""
        return auth_flow(
            request, self._provider, self._origins, self._api_version, httpx2.ByteStream
        )

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        """Authenticate *request* (called by ``httpx2.Client``)."""
        return sync_auth_flow(
            request, self._provider, self._origins, self._api_version, httpx2.ByteStream
        )

    def __repr__(self) -> str:
        return f"payme_auth.httpx2.{super().__repr__()}"
