"""The renewal arithmetic: where a token's windows fall, and how long renewal pauses."""

from __future__ import annotations

import pytest

from payme_auth import AccessToken
from payme_auth._policy import MAX_RENEWAL_PAUSE, Windows, renewal_pause


def token(expires_in: int, obtained_at: float = 1000.0) -> AccessToken:
    return AccessToken(value="v", scope=(), expires_in=expires_in, obtained_at=obtained_at)


@pytest.mark.parametrize(
    ("lifetime", "margin", "advisory", "mandatory"),
    [
        (8600, 60.0, 8540 * 2 / 3, 8540.0),
        (86400, 60.0, 86340 * 2 / 3, 86340.0),
        (59, 60.0, 29.5 * 2 / 3, 29.5),  # the margin is capped at half the life
        (10, 60.0, 5 * 2 / 3, 5.0),
        (100, 0.0, 100 * 2 / 3, 100.0),
    ],
)
def test_windows_fall_where_the_rules_say(
    lifetime: int, margin: float, advisory: float, mandatory: float
) -> None:
    """Mandatory at expiry minus the capped margin; advisory 2/3 of the way there."""
    windows = Windows.of(token(lifetime), refresh_margin=margin, advisory_ratio=2 / 3)
    assert windows.advisory_at == pytest.approx(1000 + advisory)
    assert windows.mandatory_at == pytest.approx(1000 + mandatory)
    assert windows.expires_at == 1000 + lifetime
    assert windows.advisory_at < windows.mandatory_at <= windows.expires_at


def test_no_advisory_window() -> None:
    """With advisory_ratio=None the advisory point is the mandatory point."""
    windows = Windows.of(token(100), refresh_margin=30, advisory_ratio=None)
    assert windows.advisory_at == windows.mandatory_at == 1070


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
