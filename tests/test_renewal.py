"""Zero-wait renewal: the advisory window, outage tolerance, no spinning, and stats()."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from payme_auth import (
    AccessToken,
    InvalidCredentialsError,
    PaymeAuth,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenRefusedError,
)
from payme_auth.testing import PaymeTokenMock

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAST_RETRY,
    FakeClock,
    eventually,
    new_token_value,
)

pytestmark = pytest.mark.anyio

LIFETIME = 100
# With a 30 s margin on a 100 s token: the margin starts at 70 s, the renewal point is 2/3 of
# the way there (46.67 s), and callers wait only in the safety margin, the last 5 s.
MARGIN = 30.0
ADVISORY = 70 * 2 / 3
MANDATORY = 70.0
SAFETY = LIFETIME - 5.0


@pytest.fixture(params=[False, True], ids=["bare", "async-with"])
async def auth(
    request: pytest.FixtureRequest, clock: FakeClock, token_mock: PaymeTokenMock
) -> AsyncIterator[PaymeAuth]:
    """A PaymeAuth on the fake clock, used bare or inside async with."""
    instance = PaymeAuth(
        CLIENT_ID, CLIENT_SECRET, clock=clock, retry=FAST_RETRY, refresh_margin=MARGIN
    )
    if request.param:
        async with instance:
            yield instance
    else:
        yield instance
        await instance.aclose()


def settle_now(coroutine: Any) -> AccessToken:
    """Run *coroutine* to its end without letting it suspend; fail if it would wait."""
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)
    value = finished.value.value
    assert isinstance(value, AccessToken)
    return value


async def let_background_run(token_mock: PaymeTokenMock, calls: int) -> None:
    """Yield to the event loop until the token endpoint has answered *calls* times."""
    await eventually(
        lambda: token_mock.call_count >= calls and not token_mock.held, f"{calls} answers"
    )
    await anyio.sleep(0.01)  # let the flight land after its answer


async def test_fresh_token_starts_no_renewal(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """Before the advisory point the token is served and nothing is sent."""
    first = await auth.get_token()
    clock.advance(ADVISORY - 0.01)
    assert settle_now(auth.get_token()) is first
    await anyio.sleep(0.02)
    assert token_mock.call_count == 1
    assert auth.stats().state == "fresh"


async def test_advisory_window_renews_in_the_background(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """In the advisory window the caller gets the token at once and one renewal runs."""
    token_mock.issue(expires_in=LIFETIME, times=2)
    first = await auth.get_token()
    clock.advance(ADVISORY + 0.01)
    assert auth.stats().state == "renewing"
    token_mock.hold()
    for _ in range(50):  # many callers, none waits, one renewal
        assert settle_now(auth.get_token()) is first
    token_mock.release()
    await let_background_run(token_mock, 2)
    second = settle_now(auth.get_token())
    assert second is not first
    assert token_mock.call_count == 2
    stats = auth.stats()
    assert (stats.renewals, stats.background_renewals, stats.failed_renewals) == (1, 1, 0)
    assert stats.state == "fresh"


async def test_http_requests_never_wait_for_a_background_renewal(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """Through httpx, requests in the advisory window go out while the renewal is held."""
    token_mock.issue(expires_in=LIFETIME, times=2)
    sent: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["authorization"])
        return httpx.Response(200)

    async with (
        PaymeAuth(CLIENT_ID, CLIENT_SECRET, clock=clock, refresh_margin=MARGIN) as auth,
        httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as client,
    ):
        first = await auth.get_token()
        clock.advance(ADVISORY + 1)
        token_mock.hold()
        with anyio.fail_after(2):
            for _ in range(20):
                assert (await client.get("https://api.preprod.alignet.io/charges")).is_success
        assert set(sent) == {first.authorization}
        token_mock.release()
        await let_background_run(token_mock, 2)
        await client.get("https://api.preprod.alignet.io/charges")
        assert sent[-1] != first.authorization


async def test_failed_renewal_keeps_the_token_and_pauses(
    auth: PaymeAuth,
    clock: FakeClock,
    token_mock: PaymeTokenMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A background renewal that fails leaves the token in use and is retried after a pause."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(503), times=3)
    token_mock.issue(expires_in=LIFETIME)
    first = await auth.get_token()
    clock.advance(ADVISORY + 1)
    assert settle_now(auth.get_token()) is first
    await let_background_run(token_mock, 4)
    assert token_mock.call_count == 4  # one renewal: the retry policy's three attempts
    for _ in range(10):  # within the pause (100 s / 20 = 5 s, -20 %): no new request
        assert settle_now(auth.get_token()) is first
    await anyio.sleep(0.02)
    assert token_mock.call_count == 4
    stats = auth.stats()
    assert stats.failed_renewals == 1
    assert stats.failed_fetches == 0
    assert stats.last_error is not None
    assert "503" in stats.last_error
    assert any(
        record.levelno == logging.WARNING and "renewal failed" in record.getMessage()
        for record in caplog.records
    )
    clock.advance(6.01)  # past the longest pause
    assert settle_now(auth.get_token()) is first
    await let_background_run(token_mock, 5)
    assert settle_now(auth.get_token()) is not first


async def test_retry_after_lengthens_the_pause(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A Retry-After longer than the pause is honoured before the next renewal."""
    token_mock.issue(expires_in=LIFETIME)
    token_mock.respond(httpx.Response(503, headers={"Retry-After": "12"}))
    await auth.get_token()
    clock.advance(ADVISORY + 1)
    await auth.get_token()
    await let_background_run(token_mock, 2)
    clock.advance(11.9)
    await auth.get_token()
    await anyio.sleep(0.02)
    assert token_mock.call_count == 2
    clock.advance(0.2)
    await auth.get_token()
    await let_background_run(token_mock, 3)
    assert token_mock.call_count == 3


async def test_refusal_during_renewal_is_reported_but_the_token_stays(
    auth: PaymeAuth,
    clock: FakeClock,
    token_mock: PaymeTokenMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 during a background renewal is logged at ERROR; the valid token stays in use."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(401))
    first = await auth.get_token()
    clock.advance(ADVISORY + 1)
    await auth.get_token()
    await let_background_run(token_mock, 2)
    assert settle_now(auth.get_token()) is first
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "refused" in errors[0].getMessage()


async def test_inside_the_margin_nobody_waits_for_a_failing_renewal(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """Inside the refresh margin callers get the valid token at once while the renewal, with
    its retries, fails in the background."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(503), times=3)
    first = await auth.get_token()
    clock.advance(MANDATORY + 1)
    assert auth.stats().state == "renewing"
    assert settle_now(auth.get_token()) is first
    await let_background_run(token_mock, 4)  # one renewal: three attempts
    for _ in range(10):  # no storm: the next renewal waits its pause
        assert settle_now(auth.get_token()) is first
    await anyio.sleep(0.02)
    assert token_mock.call_count == 4
    stats = auth.stats()
    assert (stats.failed_fetches, stats.failed_renewals) == (0, 1)


async def test_inside_the_safety_margin_a_failed_fetch_falls_back_to_the_valid_token(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """In the last seconds callers wait; if that fetch fails they get the still-valid token,
    and wait no more."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(503), times=3)
    first = await auth.get_token()
    clock.advance(SAFETY + 1)
    assert auth.stats().state == "due"
    assert await auth.get_token() is first
    assert token_mock.call_count == 4  # one waited-on fetch: three attempts
    for _ in range(10):  # no more waiting, no storm: renewal goes on in the background
        assert settle_now(auth.get_token()) is first
    await anyio.sleep(0.02)
    assert token_mock.call_count == 4
    stats = auth.stats()
    assert (stats.failed_fetches, stats.failed_renewals) == (0, 1)


async def test_failure_reaches_callers_once_the_token_expired(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """With the token expired, a failed fetch is the callers' error."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(503), times=3)
    await auth.get_token()
    clock.advance(LIFETIME)
    with pytest.raises(TokenEndpointUnavailableError) as caught:
        await auth.get_token()
    assert caught.value.attempts == 3
    assert auth.stats().failed_fetches == 1


async def test_refresh_raises_even_with_a_valid_token(
    auth: PaymeAuth, token_mock: PaymeTokenMock
) -> None:
    """refresh() asks for a new token: its failure is raised, the valid token kept."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(401))
    first = await auth.get_token()
    with pytest.raises(InvalidCredentialsError):
        await auth.refresh()
    assert settle_now(auth.get_token()) is first


async def test_waiter_on_a_failed_background_renewal_gets_the_valid_token(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A caller that must wait, and joins a background renewal that fails, gets the token."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(503), times=3)
    token_mock.issue(expires_in=LIFETIME)
    first = await auth.get_token()
    clock.advance(ADVISORY + 1)
    token_mock.hold()
    await auth.get_token()  # starts the background renewal, held at the gate
    clock.advance(SAFETY - ADVISORY)  # now inside the safety margin: callers must wait

    async def release_soon() -> None:
        await anyio.sleep(0.02)
        token_mock.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_soon)
        with anyio.fail_after(5):
            token = await auth.get_token()
    assert token is first
    assert token_mock.call_count == 4
    assert auth.stats().failed_fetches == 0
    clock.advance(3)  # the token serves until it expires, without waiting
    assert settle_now(auth.get_token()) is first
    clock.advance(2)  # expired: the next caller waits for a new token
    assert await auth.get_token() is not first
    assert token_mock.call_count == 5


async def test_same_token_again_does_not_spin(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A fetch that returns the same token, expiring no later, is not repeated at once."""
    same = new_token_value()
    token_mock.issue(token=same, expires_in=LIFETIME)
    # What a caching server says 96 s later: the same token, 3 s left (1 s lost).
    token_mock.issue(token=same, expires_in=LIFETIME - 97)
    first = await auth.get_token()
    clock.advance(SAFETY + 1)  # inside the safety margin: this caller waits for the fetch
    assert await auth.get_token() is first
    for _ in range(20):  # the token is kept through the pause, even in the safety margin
        assert settle_now(auth.get_token()) is first
    assert token_mock.call_count == 2
    assert auth.stats().failed_fetches == 0


async def test_same_token_with_a_later_expiry_gets_new_windows(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """The same token with a later expiry is taken as renewed, its windows placed anew."""
    same = new_token_value()
    token_mock.issue(token=same, expires_in=LIFETIME).issue(token=same, expires_in=50)
    first = await auth.get_token()
    clock.advance(MANDATORY + 1)
    assert settle_now(auth.get_token()) is first
    await let_background_run(token_mock, 2)
    renewed = settle_now(auth.get_token())
    assert renewed.expires_at == clock.now + 50
    assert auth.stats().state == "fresh"
    for _ in range(20):
        assert settle_now(auth.get_token()) is renewed
    assert token_mock.call_count == 2


async def test_expired_token_is_never_served(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """Once the token has expired, callers wait for a new one whatever the pauses say."""
    token_mock.issue(expires_in=LIFETIME, times=2)
    first = await auth.get_token()
    clock.advance(LIFETIME + 1)
    assert auth.stats().state == "expired"
    assert await auth.get_token() is not first


async def test_advisory_window_can_be_turned_off(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """With advisory_ratio=None nothing is renewed before the refresh margin."""
    auth = PaymeAuth(
        CLIENT_ID, CLIENT_SECRET, clock=clock, refresh_margin=MARGIN, advisory_ratio=None
    )
    first = await auth.get_token()
    clock.advance(MANDATORY - 0.1)
    assert settle_now(auth.get_token()) is first
    await anyio.sleep(0.02)
    assert token_mock.call_count == 1
    await auth.aclose()


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, True, "0.5", float("nan")])
def test_advisory_ratio_is_validated(ratio: object) -> None:
    """advisory_ratio must be a number in (0, 1] or None."""
    from payme_auth import ConfigurationError

    with pytest.raises(ConfigurationError, match="advisory_ratio"):
        PaymeAuth(CLIENT_ID, CLIENT_SECRET, advisory_ratio=ratio)  # type: ignore[arg-type]


async def test_closing_cancels_a_background_renewal(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """aclose() during a background renewal ends it and leaves no task behind."""
    token_mock.issue(expires_in=LIFETIME)
    await auth.get_token()
    tasks_before = len(anyio.get_running_tasks())
    clock.advance(ADVISORY + 1)
    token_mock.hold()
    await auth.get_token()
    with anyio.fail_after(5):
        while token_mock.arrived < 2:
            await anyio.sleep(0.001)
    assert len(anyio.get_running_tasks()) > tasks_before
    await auth.aclose()
    with anyio.fail_after(5):
        while len(anyio.get_running_tasks()) > tasks_before:
            await anyio.sleep(0.001)
    assert auth.stats().state == "closed"


async def test_stats_follow_the_token_through_its_life(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """stats() reports state, age, time left and counters, and holds no secret."""
    auth = PaymeAuth(
        CLIENT_ID,
        CLIENT_SECRET,
        clock=clock,
        refresh_margin=MARGIN,
        retry=RetryPolicy(attempts=1),
    )
    assert auth.stats().state == "none"
    token_mock.respond(httpx.Response(400, json={"error_description": CLIENT_SECRET}))
    with pytest.raises(TokenRefusedError):
        await auth.get_token()
    token = await auth.get_token()
    clock.advance(10)
    stats = auth.stats()
    assert stats.state == "fresh"
    assert stats.token_fingerprint == token.fingerprint
    assert stats.token_age == 10
    assert stats.time_left == 8590
    assert stats.token_requests == 2
    assert stats.tokens_obtained == 1
    assert stats.failed_fetches == 1
    assert stats.last_error_age == 10
    text = repr(stats)
    assert CLIENT_SECRET not in text
    assert token.value not in text
    await auth.aclose()
    assert auth.stats().state == "closed"


async def test_replays_are_counted(token_mock: PaymeTokenMock) -> None:
    """Each request replayed after a 401 counts in stats().replays."""
    answers = iter([401, 200])

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers))

    async with (
        PaymeAuth(CLIENT_ID, CLIENT_SECRET) as auth,
        httpx.AsyncClient(transport=httpx.MockTransport(api), auth=auth) as client,
    ):
        response = await client.get("https://api.preprod.alignet.io/charges")
    assert response.status_code == 200
    assert auth.stats().replays == 1
    assert auth.stats().token_requests == 2


async def test_revoked_credentials_serve_the_token_until_it_expires(
    auth: PaymeAuth, clock: FakeClock, token_mock: PaymeTokenMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Revoked credentials: the token serves until it expires, then callers get the refusal."""
    token_mock.issue(expires_in=LIFETIME).respond(httpx.Response(401), times=2)
    first = await auth.get_token()
    clock.advance(ADVISORY + 1)
    assert settle_now(auth.get_token()) is first
    await let_background_run(token_mock, 2)
    clock.advance(MANDATORY - ADVISORY)
    assert settle_now(auth.get_token()) is first  # inside the margin, still valid
    assert all(
        "refused" in record.getMessage()
        for record in caplog.records
        if record.levelno == logging.ERROR
    )
    clock.advance(LIFETIME - MANDATORY)
    with pytest.raises(InvalidCredentialsError):
        await auth.get_token()
