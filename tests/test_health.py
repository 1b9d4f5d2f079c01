"""AuthStats.healthy, the one word a health route answers by, through every token state.

Public API only: a PaymeAuth on a fake clock, its token endpoint mocked by PaymeTokenMock.
Tokens live 300 s: the renewal window opens at 200 s (``refresh_margin=60``), callers wait
for a new token only in the safety margin from 295 s, and the token expires at 300 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from payme_auth import AuthStats, InvalidCredentialsError, PaymeAuth
from payme_auth.testing import PaymeTokenMock

from .conftest import CLIENT_ID, CLIENT_SECRET, FAST_RETRY, FakeClock

pytestmark = pytest.mark.anyio

LIFETIME = 300
RENEWING = 210.0  # seconds after the fetch: inside the advisory window
DUE = 296.0  # inside the safety margin (the last 5 s), where callers wait
EXPIRED = 301.0


@pytest.fixture
def mock() -> Iterator[PaymeTokenMock]:
    """The token endpoint, issuing 300 s tokens unless told otherwise."""
    with PaymeTokenMock(expires_in=LIFETIME) as mock:
        yield mock


@pytest.fixture
async def auth(mock: PaymeTokenMock, clock: FakeClock) -> AsyncIterator[PaymeAuth]:
    """A PaymeAuth on the fake clock."""
    async with PaymeAuth(CLIENT_ID, CLIENT_SECRET, clock=clock, retry=FAST_RETRY) as auth:
        yield auth


def health(auth: PaymeAuth) -> tuple[str, bool]:
    """The token's state and the one word."""
    stats = auth.stats()
    return stats.state, stats.healthy


async def wait_for_failed_renewal(auth: PaymeAuth) -> AuthStats:
    """Wait (a bounded while) until a background renewal has failed; return the stats."""
    with anyio.fail_after(10):
        while (stats := auth.stats()).failed_renewals == 0:
            await anyio.sleep(0.001)
    return stats


async def test_no_token_yet_is_healthy(auth: PaymeAuth) -> None:
    """Before anything needed a token, the PaymeAuth is healthy: nothing has failed."""
    assert health(auth) == ("none", True)


async def test_fresh_token_is_healthy(auth: PaymeAuth) -> None:
    """With a fresh token cached, the PaymeAuth is healthy."""
    await auth.get_token()
    assert health(auth) == ("fresh", True)


async def test_renewing_token_is_healthy(auth: PaymeAuth, clock: FakeClock) -> None:
    """In the advisory window the token is still good: healthy."""
    await auth.get_token()
    clock.advance(RENEWING)
    assert health(auth) == ("renewing", True)


async def test_failed_background_renewal_keeps_it_healthy(
    auth: PaymeAuth, mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """A background renewal that fails while the token is valid is no outage: healthy."""
    token = await auth.get_token()
    clock.advance(RENEWING)
    mock.refuse(401)  # never retried, however the renewal retries
    assert await auth.get_token() == token  # served at once; the renewal runs behind

    stats = await wait_for_failed_renewal(auth)
    assert stats.last_error is not None
    assert (stats.state, stats.healthy) == ("renewing", True)


async def test_failed_fetch_in_the_safety_margin_keeps_it_healthy(
    auth: PaymeAuth, mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """A renewal callers waited for that fails while the token is valid: still healthy."""
    token = await auth.get_token()
    clock.advance(DUE)
    mock.refuse(401)
    assert await auth.get_token() == token

    stats = auth.stats()
    assert stats.last_error is not None
    assert "HTTP=401" in stats.last_error
    # The token now serves until it expires, without waiting: renewal goes on.
    assert (stats.state, stats.healthy) == ("renewing", True)


async def test_expired_after_a_failed_fetch_is_unhealthy(
    auth: PaymeAuth, mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """Once the token expired and the last fetch failed, the PaymeAuth is unhealthy."""
    await auth.get_token()
    clock.advance(DUE)
    mock.refuse(401)
    await auth.get_token()
    clock.advance(EXPIRED - DUE)

    assert health(auth) == ("expired", False)


async def test_expired_idle_token_is_healthy(auth: PaymeAuth, clock: FakeClock) -> None:
    """A token that expired unused, with no fetch failed, is healthy: the next call fetches."""
    await auth.get_token()
    clock.advance(EXPIRED)
    assert health(auth) == ("expired", True)


async def test_refused_first_fetch_is_unhealthy(auth: PaymeAuth, mock: PaymeTokenMock) -> None:
    """Credentials refused on the first fetch: no token, the last fetch failed, unhealthy."""
    mock.refuse(401)
    with pytest.raises(InvalidCredentialsError):
        await auth.get_token()

    stats = auth.stats()
    assert stats.last_error is not None
    assert (stats.state, stats.healthy) == ("none", False)


async def test_success_after_a_refusal_recovers(auth: PaymeAuth, mock: PaymeTokenMock) -> None:
    """After a refused fetch, a successful one makes the PaymeAuth healthy again."""
    mock.refuse(401)
    with pytest.raises(InvalidCredentialsError):
        await auth.get_token()
    await auth.get_token()

    assert health(auth) == ("fresh", True)


async def test_success_after_expiry_recovers(
    auth: PaymeAuth, mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """An expired token whose renewal failed is replaced by a success: healthy again."""
    first = await auth.get_token()
    clock.advance(DUE)
    mock.refuse(401)
    await auth.get_token()
    clock.advance(EXPIRED - DUE)
    assert health(auth) == ("expired", False)

    assert await auth.get_token() != first
    assert health(auth) == ("fresh", True)


async def test_invalidated_after_a_401_is_healthy(auth: PaymeAuth) -> None:
    """A token dropped after an API 401 (``invalidate(token)``) leaves no failure: healthy."""
    token = await auth.get_token()
    assert auth.invalidate(token)

    stats = auth.stats()
    assert stats.last_error is None
    assert (stats.state, stats.healthy) == ("none", True)


async def test_closed_is_unhealthy(auth: PaymeAuth) -> None:
    """After aclose() the PaymeAuth serves no token: unhealthy, even with one cached before."""
    await auth.get_token()
    await auth.aclose()
    assert health(auth) == ("closed", False)
