"""The renewal arithmetic: where a token's windows fall, and how long renewal pauses."""

from __future__ import annotations

import pytest

from payme_auth import AccessToken
from payme_auth._policy import (
    MAX_RENEWAL_PAUSE,
    SAFETY_MARGIN,
    Windows,
    renewal_pause,
    safety_margin,
)


def token(expires_in: int, obtained_at: float = 1000.0) -> AccessToken:
    return AccessToken(value="v", scope=(), expires_in=expires_in, obtained_at=obtained_at)


@pytest.mark.parametrize(
    ("lifetime", "margin", "renew", "wait"),
    [
        (8600, 60.0, 8540 * 2 / 3, 8595.0),  # waiting: the last 5 s only
        (86400, 60.0, 86340 * 2 / 3, 86395.0),
        (59, 60.0, 29.5 * 2 / 3, 59 - 2.95),  # margin capped at half; safety at a twentieth
        (10, 60.0, 5 * 2 / 3, 9.5),
        (100, 0.0, 100 * 2 / 3, 95.0),
    ],
)
def test_windows_fall_where_the_rules_say(
    lifetime: int, margin: float, renew: float, wait: float
) -> None:
    """Renewal 2/3 of the way to the capped margin; waiting only in the safety margin."""
    windows = Windows.of(token(lifetime), refresh_margin=margin, advisory_ratio=2 / 3)
    assert windows.renew_at == pytest.approx(1000 + renew)
    assert windows.wait_at == pytest.approx(1000 + wait)
    assert windows.expires_at == 1000 + lifetime
    assert windows.renew_at <= windows.wait_at < windows.expires_at


def test_without_an_advisory_ratio_renewal_starts_at_the_margin() -> None:
    """With advisory_ratio=None the renewal point is the refresh margin itself."""
    windows = Windows.of(token(100), refresh_margin=30, advisory_ratio=None)
    assert windows.renew_at == 1070
    assert windows.wait_at == 1095
    # A renewal point inside the safety margin is moved back to it.
    windows = Windows.of(token(100), refresh_margin=0, advisory_ratio=None)
    assert windows.renew_at == windows.wait_at == 1095


@pytest.mark.parametrize(("lifetime", "expected"), [(8600, 5.0), (100, 5.0), (60, 3.0), (4, 0.2)])
def test_safety_margin_is_five_seconds_or_a_twentieth_of_the_life(
    lifetime: int, expected: float
) -> None:
    """Callers wait for a new token only in the last SAFETY_MARGIN seconds, or 1/20 of its life."""
    assert safety_margin(lifetime) == pytest.approx(expected)
    assert SAFETY_MARGIN == 5.0


def test_held_windows_serve_the_token_until_it_expires() -> None:
    """After a failed renewal, callers stop waiting before expiry: wait_at moves to expires_at."""
    windows = Windows.of(token(100), refresh_margin=30, advisory_ratio=None).held()
    assert windows.wait_at == windows.expires_at == 1100
    assert windows.renew_at == 1070


@pytest.mark.parametrize(
    ("lifetime", "draw", "expected"),
    [
        (100, 0.5, 5.0),  # a twentieth of the life
        (100, 0.0, 4.0),  # -20 %
        (60, 0.999999, pytest.approx(3.6, abs=1e-4)),  # +20 %
        (100, 0.999999, MAX_RENEWAL_PAUSE),  # 6 s would exceed the cap
        (8600, 0.999999, MAX_RENEWAL_PAUSE),
        (8600, 0.0, MAX_RENEWAL_PAUSE),
        (1, 0.0, 0.05),  # floor
        (4, 0.5, 0.2),
    ],
)
def test_renewal_pause(lifetime: int, draw: float, expected: object) -> None:
    """The pause is lifetime/20 with ±20 % jitter, kept within 0.05 to 5 s."""
    assert renewal_pause(lifetime, retry_after=None, draw=draw) == expected


def test_renewal_pause_never_beats_retry_after() -> None:
    """A Retry-After longer than the pause wins, even past the cap."""
    assert renewal_pause(8600, retry_after=120.0, draw=0.5) == 120.0
    assert renewal_pause(8600, retry_after=1.0, draw=0.5) == MAX_RENEWAL_PAUSE
