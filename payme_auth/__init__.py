"""Async access tokens for the Pay-me (Alignet) payments API.

One :class:`PaymeAuth` fetches a token with OAuth 2.0 ``client_credentials``, caches it,
renews it before it expires, shares a single fetch between all concurrent callers, and plugs
into :class:`httpx.AsyncClient` so that every API request carries it::

    import httpx
    from payme_auth import Environment, PaymeAuth

    async with PaymeAuth("client-id", "client-secret", environment=Environment.PREPROD) as auth:
        async with httpx.AsyncClient(base_url="https://api.preprod.alignet.io", auth=auth) as api:
            response = await api.post("/charges", json=charge)
"""

from __future__ import annotations

from ._auth import PaymeAuth
from ._config import API_VERSION, Environment, Scope
from ._errors import (
    AuthClosedError,
    ConfigurationError,
    InsufficientScopeError,
    InvalidCredentialsError,
    PaymeAuthError,
    TokenEndpointUnavailableError,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from ._policy import RetryPolicy
from ._stats import AuthStats
from ._store import MemoryTokenStore, SharedToken, TokenStore
from ._token import AccessToken

__version__ = "0.1.0"
"""The version of payme_auth (a literal: reading the package metadata costs ~10 ms at
import; a test checks that the two agree)."""

__all__ = [
    "API_VERSION",
    "AccessToken",
    "AuthClosedError",
    "AuthStats",
    "ConfigurationError",
    "Environment",
    "InsufficientScopeError",
    "InvalidCredentialsError",
    "MemoryTokenStore",
    "PaymeAuth",
    "PaymeAuthError",
    "RetryPolicy",
    "Scope",
    "SharedToken",
    "TokenEndpointUnavailableError",
    "TokenError",
    "TokenRefusedError",
    "TokenResponseError",
    "TokenStore",
    "__version__",
]
