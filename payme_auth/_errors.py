"""The exceptions payme_auth raises.

Every error is a :class:`PaymeAuthError`; the tree is shallow on purpose::

    PaymeAuthError
    ├── ConfigurationError            bad settings (also a ValueError)
    ├── AuthClosedError               the PaymeAuth was closed (also a RuntimeError)
    └── TokenError                    no token could be had from the token endpoint
        ├── TokenRefusedError         it refused the request (HTTP 4xx): never retried
        │   ├── InvalidCredentialsError   401: wrong client id or secret, or a scope not allowed
        │   └── InsufficientScopeError    403
        ├── TokenResponseError        it answered, but not with a usable token
        └── TokenEndpointUnavailableError   unreachable, timing out, 429 or 5xx after retries

A :class:`TokenError` carries what a person needs to act on it (the HTTP status, Pay-me's
``meta.status`` code and message, the OAuth ``error`` code) and never a secret: messages
that come from the server are cut short, stripped of control characters and scrubbed of the
client secret before they are stored.
"""

from __future__ import annotations

__all__ = [
    "AuthClosedError",
    "ConfigurationError",
    "InsufficientScopeError",
    "InvalidCredentialsError",
    "PaymeAuthError",
    "TokenEndpointUnavailableError",
    "TokenError",
    "TokenRefusedError",
    "TokenResponseError",
]


class PaymeAuthError(Exception):
    """The base class of every error payme_auth raises."""


class ConfigurationError(PaymeAuthError, ValueError):
    """A setting is missing or invalid: nothing was sent anywhere."""


class AuthClosedError(PaymeAuthError, RuntimeError):
    """The :class:`~payme_auth.PaymeAuth` was closed with ``aclose()`` and cannot fetch tokens."""


class TokenError(PaymeAuthError):
    """No access token could be obtained from the token endpoint.

    Attributes:
        status_code: the HTTP status of the last answer, or ``None`` when none came.
        code: Pay-me's ``meta.status.code`` (for example ``"01"``), when the answer had one.
        error: the OAuth-style ``error`` field of the answer, when it had one.
        detail: the server's human-readable message, shortened and with secrets removed.
    """

    status_code: int | None
    code: str | None
    error: str | None
    detail: str | None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.error = error
        self.detail = detail

    def __str__(self) -> str:
        parts = [str(self.args[0]) if self.args else type(self).__name__]
        extra = [
            f"{name}={value}"
            for name, value in (
                ("HTTP", self.status_code),
                ("code", self.code),
                ("error", self.error),
            )
            if value is not None
        ]
        if extra:
            parts.append(f"({', '.join(extra)})")
        if self.detail:
            parts.append(f"- {self.detail}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # The details are keyword-only, which the default pickling of exceptions loses:
        # keep them when an error crosses a process boundary (or is copied).
        return (_rebuild, (type(self), self.args, dict(vars(self))))


def _rebuild(
    cls: type[TokenError], args: tuple[object, ...], state: dict[str, object]
) -> TokenError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    vars(error).update(state)
    return error


class TokenRefusedError(TokenError):
    """The token endpoint refused the request (an HTTP 4xx other than 408, 425 and 429).

    Retrying the same request cannot succeed, so payme_auth does not retry it.
    """


class InvalidCredentialsError(TokenRefusedError):
    """HTTP 401 from the token endpoint.

    Pay-me answers 401 both for a wrong ``client_id``/``client_secret`` and for a requested
    scope the client may not have: check both.
    """


class InsufficientScopeError(TokenRefusedError):
    """HTTP 403 from the token endpoint: the client may not obtain the requested scopes."""


class TokenResponseError(TokenError):
    """The token endpoint answered, but not with a usable token.

    For example: a body that is not JSON, ``success`` false, a missing or malformed
    ``access_token``, an invalid ``expires_in``, a token type other than Bearer, or a redirect.
    """


class TokenEndpointUnavailableError(TokenError):
    """The token endpoint stayed unreachable or overloaded through every allowed attempt.

    Connection errors, timeouts, HTTP 408, 429 and 5xx are retried with backoff; this is
    raised when the attempts run out, or when the server asks to wait longer (``Retry-After``)
    than the retry policy allows.

    Attributes:
        attempts: how many requests were made.
        retry_after: the server's ``Retry-After`` in seconds, when it sent one.
    """

    attempts: int
    retry_after: float | None

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        retry_after: float | None = None,
        status_code: int | None = None,
        code: str | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code, error=error, detail=detail)
        self.attempts = attempts
        self.retry_after = retry_after
