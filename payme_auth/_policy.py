"""When to renew a token and how patiently to retry: pure arithmetic, no I/O.

Rules:
- A token's life has three parts. Until the *advisory* point it is simply used. From
  there to the *mandatory* point one background renewal may run while every caller keeps
  getting the token at once. From the mandatory point on, callers wait for a new token
  (unless a renewal of this token already failed: then it serves until it expires).
- The mandatory margin is ``refresh_margin`` seconds before expiry, capped at half the
  lifetime (a 60 s margin on a 59 s token must not make every call fetch a new one).
- The advisory point is ``advisory_ratio`` (2/3 by default) of the way from the token's
  issue to the mandatory point: two thirds of its life for a long-lived token, one third
  for a token shorter than twice the margin, whose margin is half its life.
- A renewal that failed, or that brought back no newer token, is tried again after a
  pause of a twentieth of the token's lifetime with ±20 % jitter, kept between 0.05 and
  5 s, and never sooner than the server's ``Retry-After``.
"""

from __future__ import annotations

import math

import attrs

from ._errors import ConfigurationError
from ._token import AccessToken

__all__ = ["RetryPolicy", "Windows", "check_seconds", "effective_margin", "renewal_pause"]

MAX_RENEWAL_PAUSE = 5.0
MIN_RENEWAL_PAUSE = 0.05


def check_seconds(name: str, value: object) -> float:
    """Return *value* as seconds, or raise ConfigurationError naming *name*."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How hard to try the token endpoint within one fetch.

    Connection errors, timeouts and HTTP 408, 425, 429 and 5xx are retried; refusals never
    are. The wait before attempt *n + 1* is ``backoff * 2 ** (n - 1)``, capped at
    ``max_backoff``, times a random factor between 0.5 and 1 (jitter), and never less than
    the server's ``Retry-After``. A ``Retry-After`` longer than ``max_retry_after`` ends the
    fetch at once: nothing waits for minutes inside a request.

    Background renewals make one attempt each and are paced by the renewal pause instead.

    Attributes:
        attempts: the most requests one fetch makes (1 disables retries).
        backoff: the first wait, in seconds.
        max_backoff: the longest computed wait, in seconds.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.
    """

    attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 30.0

    def __attrs_post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(f"attempts must be an int, not {self.attempts!r}")
        if not 1 <= self.attempts <= 100:
            raise ConfigurationError(f"attempts must be between 1 and 100, not {self.attempts}")
        for name in ("backoff", "max_backoff", "max_retry_after"):
            check_seconds(name, getattr(self, name))

    def delay(self, attempt: int, *, retry_after: float | None, draw: float) -> float | None:
        """Return how long to wait after failed attempt number *attempt* (1-based).

        ``None`` means: give up now (the attempts ran out, or the server asked for a longer
        wait than :attr:`max_retry_after`). *draw* is a random number in ``[0, 1)``.
        """
        if attempt >= self.attempts:
            return None
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        computed = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        jittered = computed * (0.5 + draw / 2.0)
        return max(jittered, retry_after or 0.0)


def effective_margin(refresh_margin: float, expires_in: float) -> float:
    """The refresh margin in force for a token living *expires_in* seconds.

    The margin is honoured as given up to half the lifetime and capped at half beyond:
    a 60 s margin on a 59 s token must not make every call fetch a new one.
    """
    return min(refresh_margin, expires_in / 2.0)


@attrs.frozen(kw_only=True)
class Windows:
    """The points in a token's life, on the provider's monotonic clock.

    Attributes:
        advisory_at: from here, one background renewal may run; callers do not wait.
        mandatory_at: from here, callers wait for a new token.
        expires_at: the token's end.
    """

    advisory_at: float
    mandatory_at: float
    expires_at: float

    @classmethod
    def of(
        cls, token: AccessToken, *, refresh_margin: float, advisory_ratio: float | None
    ) -> Windows:
        """Place the windows of *token*; ``advisory_ratio=None`` has no advisory window."""
        margin = effective_margin(refresh_margin, token.expires_in)
        mandatory_at = token.expires_at - margin
        if advisory_ratio is None:
            return cls(
                advisory_at=mandatory_at, mandatory_at=mandatory_at, expires_at=token.expires_at
            )
        usable = token.expires_in - margin
        return cls(
            advisory_at=token.obtained_at + usable * advisory_ratio,
            mandatory_at=mandatory_at,
            expires_at=token.expires_at,
        )


def renewal_pause(expires_in: float, *, retry_after: float | None, draw: float) -> float:
    """How long to wait before renewing again after a failed or fruitless renewal.

    A twentieth of the lifetime times a random factor between 0.8 and 1.2 (*draw* is in
    ``[0, 1)``), kept between 0.05 and 5 seconds, and never less than *retry_after*.
    """
    jittered = expires_in / 20.0 * (0.8 + 0.4 * draw)
    return max(min(MAX_RENEWAL_PAUSE, max(MIN_RENEWAL_PAUSE, jittered)), retry_after or 0.0)
