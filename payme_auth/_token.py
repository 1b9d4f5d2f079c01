"""The access token value object.

Rules:
- The token value is a secret: it is never part of ``repr()``, ``str()`` or equality
  output meant for people; :attr:`AccessToken.fingerprint` identifies it in logs instead.
- Times are readings of the provider's monotonic clock, passed in: nothing here reads a
  clock, so expiry arithmetic is exact under a fake clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import attrs

__all__ = ["AccessToken", "fingerprint"]


def _scopes(scopes: Iterable[str]) -> frozenset[str]:
    return frozenset(scopes)


def fingerprint(value: str) -> str:
    """Return a short, one-way identifier of a token value, safe to log."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


@attrs.frozen(kw_only=True, repr=False)
class AccessToken:
    """An access token issued by Pay-me.

    Attributes:
        value: the token itself (secret: never logged, never in ``repr``).
        token_type: always ``"Bearer"``.
        scope: the scopes the server granted. When the answer did not say, the requested
            scopes (as OAuth 2.0 prescribes).
        expires_in: the lifetime the server gave, in whole seconds.
        obtained_at: the provider's monotonic clock when the request for this token was sent
            (the earliest moment it can have been issued, so expiry is never overestimated).
        authorization: ``"Bearer <token>"``, the ``Authorization`` header value (secret too).
    """

    value: str = attrs.field(repr=False)
    token_type: str = "Bearer"
    scope: frozenset[str] = attrs.field(converter=_scopes)
    expires_in: int
    obtained_at: float
    authorization: str = attrs.field(init=False, repr=False, eq=False)  # made once, sent often

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "authorization", f"Bearer {self.value}")

    @property
    def expires_at(self) -> float:
        """When the token expires, on the same clock as :attr:`obtained_at`."""
        return self.obtained_at + self.expires_in

    @property
    def fingerprint(self) -> str:
        """A short one-way hash of :attr:`value`, to tell tokens apart in logs."""
        return fingerprint(self.value)

    def remaining(self, now: float) -> float:
        """Seconds of life left at clock reading *now* (negative once expired)."""
        return self.expires_at - now

    def is_expired(self, now: float) -> bool:
        """Tell whether the token has expired at clock reading *now*."""
        return now >= self.expires_at

    def __repr__(self) -> str:
        scope = " ".join(sorted(self.scope))
        return (
            f"AccessToken(token_type={self.token_type!r}, scope={scope!r}, "
            f"expires_in={self.expires_in}, fingerprint={self.fingerprint!r})"
        )

    __str__ = __repr__
