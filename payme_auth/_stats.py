"""A read-only snapshot of a PaymeAuth's state, for health endpoints and metrics."""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["AuthStats", "TokenState"]

TokenState = Literal["none", "fresh", "renewing", "due", "expired", "closed"]


@attrs.frozen(kw_only=True)
class AuthStats:
    """What a :class:`~payme_auth.PaymeAuth` has done, and the state of its token.

    Holds no secret: the token appears only as its fingerprint, errors only as their
    already scrubbed text. Safe to serialize (``attrs.asdict(stats)``) on a health endpoint.

    Attributes:
        state: where the token is in its life: ``"none"`` (no token yet, or it was
            dropped), ``"fresh"`` (before the advisory window), ``"renewing"`` (in the
            advisory window, where one background renewal may run), ``"due"`` (inside the
            refresh margin, where callers wait for a new token unless a renewal already
            failed), ``"expired"``, or ``"closed"``.
        healthy: whether API calls can be authenticated now, in one word for a health
            endpoint: ``True`` while an unexpired token is cached, or while there is none
            and the last fetch (if any) did not fail; ``False`` once no valid token is left
            and the last fetch failed, and after :meth:`~payme_auth.PaymeAuth.aclose`.
        token_fingerprint: the cached token's fingerprint, or ``None``.
        token_age: seconds since the cached token was requested, or ``None``.
        time_left: seconds until the cached token expires (negative once expired), or
            ``None``.
        token_requests: HTTP requests sent to the token endpoint, retries included.
        tokens_obtained: tokens received.
        renewals: tokens received to replace a cached one, in the background or not.
        background_renewals: tokens received by a renewal no caller waited for.
        failed_fetches: fetches that failed with no unexpired token cached: their error
            reached the callers.
        failed_renewals: fetches that failed while an unexpired token was cached (the
            token stayed in use), and background renewals that brought no newer token.
        replays: API requests replayed after a 401.
        last_error: the last fetch error, as text, or ``None``.
        last_error_age: seconds since that error, or ``None``.
    """

    state: TokenState
    healthy: bool
    token_fingerprint: str | None
    token_age: float | None
    time_left: float | None
    token_requests: int
    tokens_obtained: int
    renewals: int
    background_renewals: int
    failed_fetches: int
    failed_renewals: int
    replays: int
    last_error: str | None
    last_error_age: float | None
