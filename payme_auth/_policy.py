"""When to renew a token and how patiently to retry: pure arithmetic, no I/O.

Rules:
- A token's life has three parts. Until its *renewal point* it is simply used. From there
  one background renewal runs (with the full retry policy) while every caller keeps
  getting the token at once. Only in the last *safety margin* before expiry do callers
  wait for a new token, and not even then once a renewal of this token has failed: a
  token that is still valid is served until it expires.
- The renewal point is ``advisory_ratio`` (2/3 by default) of the way from the token's
  issue to ``refresh_margin`` seconds before its expiry; with ``advisory_ratio=None`` it is
  that margin itself. The margin is capped at half the lifetime (a 60 s margin on a 59 s
  token must not renew it at every call).
- The safety margin is :data:`SAFETY_MARGIN` (5 s), or a twentieth of the lifetime if that
  is shorter: a token about to expire may expire on its way to the API, so callers wait
  for its successor rather than use it. A renewal point later than that is moved to it.
- A renewal that failed, or that brought back no newer token, is tried again after a
  pause of a twentieth of the token's lifetime with ±20 % jitter, kept between 0.05 and
  5 s, and never sooner than the server's ``Retry-After``.
"""

from __future__ import annotations

import math

import attrs

from ._errors import ConfigurationError
from ._token import AccessToken

__all__ = [
    "SAFETY_MARGIN",
    "RetryPolicy",
    "Windows",
    "check_seconds",
    "effective_margin",
    "renewal_pause",
    "safety_margin",
]

MAX_RENEWAL_PAUSE = 5.0
MIN_RENEWAL_PAUSE = 0.05
SAFETY_MARGIN = 5.0
"""Seconds before expiry from which callers wait for a new token (at most 1/20 of its life)."""


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

    Background renewals follow it too; after a renewal failed, the next one waits for the
    renewal pause (see the rules of this module).

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

    def longest_fetch(self, attempt_timeout: float) -> float:
        """The longest one fetch takes with attempts of at most *attempt_timeout* seconds:
        every attempt running to its timeout, and the longest backoff between them.

        A ``Retry-After`` (up to :attr:`max_retry_after`) can make a fetch longer still.
        """
        waits = sum(
            min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
            for attempt in range(1, self.attempts)
        )
        return self.attempts * attempt_timeout + waits

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


def safety_margin(expires_in: float) -> float:
    """The last seconds of a token living *expires_in* seconds in which callers wait."""
    return min(SAFETY_MARGIN, expires_in / 20.0)


@attrs.frozen(kw_only=True)
class Windows:
    """The points in a token's life, on the provider's monotonic clock.

    Attributes:
        renew_at: from here, one background renewal runs; callers do not wait.
        wait_at: from here, callers wait for a new token (see :func:`safety_margin`).
        expires_at: the token's end.
    """

    renew_at: float
    wait_at: float
    expires_at: float

    @classmethod
    def of(
        cls, token: AccessToken, *, refresh_margin: float, advisory_ratio: float | None
    ) -> Windows:
        """Place the windows of *token*; ``advisory_ratio=None`` renews at the margin."""
        margin = effective_margin(refresh_margin, token.expires_in)
        renew_at = token.expires_at - margin
        if advisory_ratio is not None:
            renew_at = token.obtained_at + (token.expires_in - margin) * advisory_ratio
        wait_at = token.expires_at - safety_margin(token.expires_in)
        return cls(renew_at=min(renew_at, wait_at), wait_at=wait_at, expires_at=token.expires_at)

    def held(self) -> Windows:
        """These windows once a renewal failed: callers use the token until it expires."""
        return attrs.evolve(self, wait_at=self.expires_at)


def renewal_pause(expires_in: float, *, retry_after: float | None, draw: float) -> float:
    """How long to wait before renewing again after a failed or fruitless renewal.

    A twentieth of the lifetime times a random factor between 0.8 and 1.2 (*draw* is in
    ``[0, 1)``), kept between 0.05 and 5 seconds, and never less than *retry_after*.
    """
    jittered = expires_in / 20.0 * (0.8 + 0.4 * draw)
    return max(min(MAX_RENEWAL_PAUSE, max(MIN_RENEWAL_PAUSE, jittered)), retry_after or 0.0)
