"""The token provider: caching, single flight, shared failures, cancellation, retries, expiry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from payme_auth import (
    AccessToken,
    AuthClosedError,
    InvalidCredentialsError,
    PaymeAuth,
    PaymeAuthError,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenRefusedError,
    TokenResponseError,
)
from payme_auth.testing import PaymeTokenMock

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAST_RETRY,
    FakeClock,
    eventually,
    token_answer,
)

pytestmark = pytest.mark.anyio

CROWD = 300


def make_auth(clock: FakeClock | None = None, **kwargs: Any) -> PaymeAuth:
    """A PaymeAuth with quick retries and, unless asked, no advisory window (see test_renewal)."""
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("advisory_ratio", None)
    return PaymeAuth(CLIENT_ID, CLIENT_SECRET, clock=clock, **kwargs)


async def crowd(
    token_mock: PaymeTokenMock, count: int, call: Callable[[], Awaitable[AccessToken]]
) -> list[AccessToken | PaymeAuthError]:
    """Run *count* concurrent calls while the next token request is held, then release it."""
    outcomes: list[AccessToken | PaymeAuthError] = []

    async def one() -> None:
        try:
            outcomes.append(await call())
        except PaymeAuthError as error:
            outcomes.append(error)

    before = token_mock.arrived
    token_mock.hold()
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
        await eventually(lambda: token_mock.arrived == before + 1)
        await anyio.sleep(0.01)  # let every caller reach the flight
        token_mock.release()
    assert len(outcomes) == count
    return outcomes


# -- caching ---------------------------------------------------------------------------------


async def test_token_is_fetched_once_and_cached(token_mock: PaymeTokenMock) -> None:
    """A second call returns the cached token without a new request."""
    auth = make_auth()
    first = await auth.get_token()
    second = await auth.get_token()
    assert first is second
    assert token_mock.call_count == 1
    assert first.value == token_mock.tokens[0]
    await auth.aclose()


async def test_fresh_token_is_returned_without_a_checkpoint(token_mock: PaymeTokenMock) -> None:
    """With a fresh token cached, get_token() completes without suspending even once."""
    auth = make_auth()
    token = await auth.get_token()
    coroutine = auth.get_token()
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)
    assert finished.value.value is token
    await auth.aclose()


async def test_token_request_is_the_documented_one(token_mock: PaymeTokenMock) -> None:
    """The token request is a JSON POST with the six fields and ALG-API-VERSION."""
    auth = make_auth(scopes=["post:charges", "post:charges", "get:charges"])
    await auth.get_token()
    request = token_mock.calls[-1].request
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["alg-api-version"] == "1709847567"
    assert request.headers["accept-encoding"] == "identity"
    assert "authorization" not in request.headers
    import json

    assert json.loads(request.content) == {
        "action": "authorize",
        "grant_type": "client_credentials",
        "audience": "https://api.preprod.alignet.io/",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": "create:token post:charges get:charges",
    }
    await auth.aclose()


# -- single flight ---------------------------------------------------------------------------


@pytest.mark.parametrize("entered", [False, True], ids=["bare", "async-with"])
async def test_concurrent_callers_share_one_request(
    token_mock: PaymeTokenMock, entered: bool
) -> None:
    """Hundreds of concurrent callers cause exactly one token request and get the same token."""
    auth = make_auth()
    if entered:
        await auth.__aenter__()
    results = await crowd(token_mock, CROWD, auth.get_token)
    assert token_mock.call_count == 1
    assert len({id(token) for token in results}) == 1
    assert isinstance(results[0], AccessToken)
    await auth.aclose()


@pytest.mark.parametrize("entered", [False, True], ids=["bare", "async-with"])
async def test_concurrent_callers_share_one_failure(
    token_mock: PaymeTokenMock, entered: bool
) -> None:
    """A refusal reaches every waiter, and the endpoint is asked only once."""
    auth = make_auth()
    if entered:
        await auth.__aenter__()
    token_mock.respond(httpx.Response(401, json={"error": "access_denied"}))
    errors = await crowd(token_mock, CROWD, auth.get_token)
    assert token_mock.call_count == 1
    assert {type(error) for error in errors} == {InvalidCredentialsError}
    await auth.aclose()


async def test_shared_failure_retries_once_per_flight(token_mock: PaymeTokenMock) -> None:
    """A down endpoint gets one flight's attempts, not one storm per waiter."""
    auth = make_auth()
    token_mock.respond(httpx.Response(503), times=3)
    failures: list[TokenEndpointUnavailableError] = []

    async def call() -> None:
        try:
            await auth.get_token()
        except TokenEndpointUnavailableError as error:
            failures.append(error)

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call)
    assert len(failures) == 50
    assert {error.attempts for error in failures} == {3}
    assert token_mock.call_count == 3


async def test_failure_is_not_cached(token_mock: PaymeTokenMock) -> None:
    """After a failed fetch, the next caller starts a new one and can succeed."""
    auth = make_auth()
    token_mock.respond(httpx.Response(400, json={"message": "bad"}))
    with pytest.raises(TokenRefusedError):
        await auth.get_token()
    token = await auth.get_token()
    assert token.value == token_mock.tokens[0]
    assert token_mock.call_count == 2


async def test_traceback_does_not_grow_across_waiters(token_mock: PaymeTokenMock) -> None:
    """Every waiter raises the shared error with the flight's own traceback, not a pile."""
    auth = make_auth()
    token_mock.respond(httpx.Response(401))
    depths: list[int] = []
    for error in await crowd(token_mock, 20, auth.get_token):
        assert isinstance(error, InvalidCredentialsError)
        tb, depth = error.__traceback__, 0
        while tb is not None:
            tb, depth = tb.tb_next, depth + 1
        depths.append(depth)
    assert len(depths) == 20
    assert max(depths) - min(depths) <= 3


# -- cancellation ----------------------------------------------------------------------------


@pytest.mark.parametrize("entered", [False, True], ids=["bare", "async-with"])
async def test_cancelled_waiter_does_not_disturb_the_flight(
    token_mock: PaymeTokenMock, entered: bool
) -> None:
    """Cancelling a caller that waits on a flight leaves the flight and the others intact."""
    auth = make_auth()
    if entered:
        await auth.__aenter__()
    results: list[AccessToken] = []

    async def call() -> None:
        results.append(await auth.get_token())

    token_mock.hold()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)  # the leader when bare
        await eventually(lambda: token_mock.arrived == 1)
        with anyio.move_on_after(0.01):
            await auth.get_token()  # a waiter, cancelled by its deadline
        for _ in range(10):
            tg.start_soon(call)
        await anyio.sleep(0.01)
        token_mock.release()
    assert token_mock.call_count == 1
    assert len(results) == 11
    await auth.aclose()


async def test_a_cancelled_first_caller_does_not_cancel_the_fetch(
    token_mock: PaymeTokenMock,
) -> None:
    """The caller whose need started the fetch is cancelled: the one request still lands,
    and every other caller gets its token."""
    auth = make_auth()
    results: list[AccessToken] = []

    async def call() -> None:
        results.append(await auth.get_token())

    token_mock.hold()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.01) as first:
                await auth.get_token()
            assert first.cancelled_caught
            for _ in range(CROWD):
                tg.start_soon(call)
            await anyio.sleep(0.01)
            token_mock.release()
    assert len(results) == CROWD
    assert {token.value for token in results} == set(token_mock.tokens)
    assert token_mock.arrived == token_mock.call_count == 1
    await auth.aclose()


async def test_cancelled_caller_does_not_abort_an_owned_flight(token_mock: PaymeTokenMock) -> None:
    """Inside async with, the caller that started a fetch can be cancelled without aborting it."""
    async with make_auth() as auth:
        token_mock.hold()
        async with anyio.create_task_group() as tg:
            tg.start_soon(auth.get_token)
            await eventually(lambda: token_mock.arrived == 1)
            tg.cancel_scope.cancel()
        token_mock.release()
        token = await auth.get_token()
        assert token_mock.call_count == 1
        assert token.value == token_mock.tokens[0]


async def test_random_cancellations_never_strand_anyone(token_mock: PaymeTokenMock) -> None:
    """Callers cancelled at random moments while the fetch is in the air leave every other
    caller served by that one fetch, and nothing hangs."""
    auth = make_auth()
    served: list[AccessToken] = []
    cancelled: list[int] = []
    patient = {index for index in range(CROWD) if index % 3 == 0}

    async def call(index: int) -> None:
        with anyio.move_on_after(5.0 if index in patient else 0.001 * (index % 7 + 1)) as scope:
            served.append(await auth.get_token())
        if scope.cancelled_caught:
            cancelled.append(index)

    token_mock.hold()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for index in range(CROWD):
                tg.start_soon(call, index)
            await eventually(lambda: len(cancelled) == CROWD - len(patient))
            token_mock.release()
    assert set(cancelled) == set(range(CROWD)) - patient
    assert len(served) == len(patient)
    assert {token.value for token in served} == set(token_mock.tokens)
    assert token_mock.arrived == token_mock.call_count == 1
    await auth.aclose()


# -- expiry and renewal ----------------------------------------------------------------------


async def test_token_is_renewed_in_the_background_inside_the_refresh_margin(
    token_mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """From refresh_margin seconds before expiry the token is renewed in the background:
    the caller that notices gets the cached token at once, later callers the new one."""
    token_mock.issue(expires_in=100, times=2)
    auth = make_auth(clock, refresh_margin=30)
    first = await auth.get_token()
    clock.advance(69.9)
    assert await auth.get_token() is first
    assert token_mock.call_count == 1
    clock.advance(0.2)
    assert await auth.get_token() is first  # no wait: the renewal runs in the background
    await eventually(lambda: auth.stats().renewals == 1)
    second = await auth.get_token()
    assert second is not first
    assert token_mock.call_count == 2
    await auth.aclose()


async def test_margin_is_capped_at_half_the_lifetime(
    token_mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """A 60 s margin on a 59 s token starts renewal at half its life, not on every call."""
    token_mock.issue(expires_in=59, times=2)
    auth = make_auth(clock, refresh_margin=60)
    first = await auth.get_token()
    for _ in range(10):
        clock.advance(2.9)
        assert await auth.get_token() is first
    assert token_mock.call_count == 1
    clock.advance(0.6)  # 29.6 s into a 59 s life
    assert await auth.get_token() is first
    await eventually(lambda: token_mock.call_count == 2)
    await auth.aclose()


async def test_callers_wait_only_inside_the_safety_margin(
    token_mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """With refresh_margin=0 the token serves until its safety margin (a twentieth of a
    10 s life); from there callers wait for the new token."""
    token_mock.issue(expires_in=10, times=2)
    auth = make_auth(clock, refresh_margin=0)
    first = await auth.get_token()
    clock.advance(9.49)
    assert await auth.get_token() is first
    assert token_mock.call_count == 1
    clock.advance(0.01)
    second = await auth.get_token()
    assert second is not first
    assert second.obtained_at == clock.now
    await auth.aclose()


async def test_missing_expires_in_assumes_a_short_lifetime(
    token_mock: PaymeTokenMock, clock: FakeClock
) -> None:
    """An answer without expires_in gives a token assumed to live assumed_expires_in seconds."""
    token_mock.issue(expires_in=None)
    auth = make_auth(clock, assumed_expires_in=120, refresh_margin=0)
    token = await auth.get_token()
    assert token.expires_in == 120


async def test_refresh_forces_a_new_token_and_is_shared(token_mock: PaymeTokenMock) -> None:
    """refresh() replaces a fresh token; concurrent refreshes share one request."""
    auth = make_auth()
    first = await auth.get_token()
    results = await crowd(token_mock, 20, auth.refresh)
    assert token_mock.call_count == 2
    tokens = [token for token in results if isinstance(token, AccessToken)]
    assert len(tokens) == 20
    assert {token.value for token in tokens} == {token_mock.tokens[1]}
    assert results[0] is not first
    assert await auth.get_token() is results[0]


async def test_invalidate_compares_before_dropping(token_mock: PaymeTokenMock) -> None:
    """invalidate(token) drops only that token; invalidate() drops whatever is cached."""
    auth = make_auth()
    first = await auth.get_token()
    assert auth.invalidate(first) is True
    assert auth.invalidate(first) is False
    second = await auth.get_token()
    assert auth.invalidate(first) is False
    assert await auth.get_token() is second
    assert auth.invalidate() is True
    assert auth.invalidate() is False
    assert (await auth.get_token()).value == token_mock.tokens[2]


# -- retries ---------------------------------------------------------------------------------


async def test_transient_failures_are_retried(token_mock: PaymeTokenMock) -> None:
    """503, a connection error, then a token: three requests, one token."""
    token_mock.respond(httpx.Response(503)).disconnect()
    auth = make_auth()
    token = await auth.get_token()
    assert token_mock.call_count == 3
    assert token.value == token_mock.tokens[0]


async def test_attempts_are_bounded(token_mock: PaymeTokenMock) -> None:
    """After RetryPolicy.attempts transient failures the typed error carries the last status."""
    token_mock.respond(httpx.Response(500)).respond(httpx.Response(502))
    token_mock.respond(httpx.Response(429))
    auth = make_auth()
    with pytest.raises(TokenEndpointUnavailableError) as caught:
        await auth.get_token()
    assert caught.value.attempts == 3
    assert caught.value.status_code == 429
    assert token_mock.call_count == 3


async def test_retry_after_beyond_the_policy_ends_the_fetch(token_mock: PaymeTokenMock) -> None:
    """A Retry-After longer than max_retry_after is not waited for: the error says it."""
    token_mock.respond(httpx.Response(503, headers={"Retry-After": "120"}))
    auth = make_auth()
    with anyio.fail_after(2):
        with pytest.raises(TokenEndpointUnavailableError) as caught:
            await auth.get_token()
    assert caught.value.retry_after == 120
    assert caught.value.attempts == 1
    assert token_mock.call_count == 1


async def test_retry_after_is_honoured(token_mock: PaymeTokenMock) -> None:
    """A short Retry-After is waited for before the next attempt."""
    token_mock.respond(httpx.Response(429, headers={"Retry-After": "0"}))
    auth = make_auth(retry=RetryPolicy(attempts=2, backoff=0, max_retry_after=1))
    await auth.get_token()
    assert token_mock.call_count == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_refusals_are_not_retried(token_mock: PaymeTokenMock, status: int) -> None:
    """A 4xx refusal ends the fetch after one request."""
    token_mock.respond(httpx.Response(status))
    auth = make_auth()
    with pytest.raises(TokenRefusedError) as caught:
        await auth.get_token()
    assert caught.value.status_code == status
    assert token_mock.call_count == 1


async def test_unusable_answer_is_not_retried(token_mock: PaymeTokenMock) -> None:
    """A 200 that carries no usable token ends the fetch with TokenResponseError."""
    token_mock.respond(httpx.Response(200, json={"success": False}))
    auth = make_auth()
    with pytest.raises(TokenResponseError):
        await auth.get_token()
    assert token_mock.call_count == 1


async def test_hanging_endpoint_is_bounded_by_the_timeout(token_mock: PaymeTokenMock) -> None:
    """An endpoint that never answers costs at most timeout per attempt, then a typed error."""
    auth = make_auth(timeout=0.05, retry=RetryPolicy(attempts=2, backoff=0))
    token_mock.hold()
    with anyio.fail_after(3):
        with pytest.raises(TokenEndpointUnavailableError) as caught:
            await auth.get_token()
    assert "within 0.05 s" in str(caught.value)
    assert token_mock.arrived == 2


async def test_huge_answer_is_refused(token_mock: PaymeTokenMock) -> None:
    """A token answer declared larger than the limit is refused with TokenResponseError."""
    token_mock.respond(httpx.Response(200, content=b"{" + b" " * 300_000 + b"}"))
    auth = make_auth()
    with pytest.raises(TokenResponseError, match="larger than"):
        await auth.get_token()


async def test_huge_streamed_answer_is_refused(token_mock: PaymeTokenMock) -> None:
    """A chunked answer that grows past the limit is refused, and only the limit is kept."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"access_token": "'
        for _ in range(100):
            yield b"x" * 10_000
        yield b'"}'

    token_mock.respond(lambda request: httpx.Response(200, content=chunks()))
    auth = make_auth()
    with pytest.raises(TokenResponseError, match="larger than"):
        await auth.get_token()


async def test_transport_error_is_not_chained(token_mock: PaymeTokenMock) -> None:
    """The HTTP stack's exception (which references the request body) is not kept."""
    token_mock.disconnect()
    auth = make_auth(retry=RetryPolicy(attempts=1))
    with pytest.raises(TokenEndpointUnavailableError) as caught:
        await auth.get_token()
    assert "ConnectError" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


# -- life cycle ------------------------------------------------------------------------------


async def test_closed_auth_refuses_to_fetch(token_mock: PaymeTokenMock) -> None:
    """After aclose() the token is forgotten and get_token() raises AuthClosedError."""
    auth = make_auth()
    await auth.get_token()
    await auth.aclose()
    await auth.aclose()
    with pytest.raises(AuthClosedError):
        await auth.get_token()
    with pytest.raises(AuthClosedError):
        async with auth:
            pass


async def test_closing_cancels_a_flight_and_frees_its_waiters(token_mock: PaymeTokenMock) -> None:
    """Leaving async with during a fetch ends it, and its waiters get AuthClosedError."""
    errors: list[BaseException] = []

    async def call(auth: PaymeAuth) -> None:
        try:
            await auth.get_token()
        except AuthClosedError as error:
            errors.append(error)

    token_mock.hold()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, make_auth() as auth:
            for _ in range(10):
                tg.start_soon(call, auth)
            await eventually(lambda: token_mock.arrived == 1)
    assert len(errors) == 10
    assert token_mock.arrived == 1


async def test_closing_during_a_bare_flight_caches_nothing(token_mock: PaymeTokenMock) -> None:
    """A token that lands after aclose() is not cached; its callers get AuthClosedError."""
    auth = make_auth()
    token_mock.hold()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                with pytest.raises(AuthClosedError):
                    await auth.get_token()

            tg.start_soon(call)
            await eventually(lambda: token_mock.arrived == 1)
            await auth.aclose()
            token_mock.release()
    assert auth._provider.cached() is None
    assert auth.stats().tokens_obtained == 0


async def test_entering_twice_is_refused(token_mock: PaymeTokenMock) -> None:
    """A PaymeAuth can be entered once at a time."""
    async with make_auth() as auth:
        with pytest.raises(RuntimeError, match="already entered"):
            await auth.__aenter__()


async def test_borrowed_client_is_used_and_left_open(token_mock: PaymeTokenMock) -> None:
    """A borrowed http_client sends the token requests and is not closed by aclose()."""
    async with httpx.AsyncClient() as borrowed:
        async with make_auth(http_client=borrowed) as auth:
            await auth.get_token()
        assert not borrowed.is_closed
    assert token_mock.call_count == 1


def test_provider_has_no_token_before_the_first_fetch() -> None:
    """A new PaymeAuth holds no token and has sent nothing."""
    auth = make_auth()
    assert auth._provider.cached() is None
    stats = auth.stats()
    assert stats.token_requests == 0
    assert stats.state == "none"
    assert stats.token_fingerprint is None


async def test_closing_from_another_task_is_safe(token_mock: PaymeTokenMock) -> None:
    """aclose() from a task other than the one inside async with stops fetches at once."""
    async with make_auth() as auth:
        await auth.get_token()
        async with anyio.create_task_group() as tg:
            tg.start_soon(auth.aclose)
        with pytest.raises(AuthClosedError):
            await auth.get_token()
    assert token_mock.call_count == 1


async def test_closing_inside_async_with_leaves_the_body_running(
    token_mock: PaymeTokenMock,
) -> None:
    """An explicit aclose() inside async with (even in a nested scope) cancels nothing else."""
    reached = False
    async with make_auth() as auth:
        with anyio.move_on_after(5):
            token_mock.hold()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_expect_closed, auth)
                await eventually(lambda: token_mock.arrived == 1)
                await auth.aclose()
            await anyio.lowlevel.checkpoint()
            reached = True
    assert reached


async def test_fetch_started_just_before_closing_does_not_go_out(
    token_mock: PaymeTokenMock,
) -> None:
    """A background fetch scheduled right before aclose() sends nothing."""
    async with make_auth() as auth, anyio.create_task_group() as tg:
        tg.start_soon(_expect_closed, auth)
        await anyio.lowlevel.checkpoint()
        await auth.aclose()
    assert token_mock.arrived == 0


async def _expect_closed(auth: PaymeAuth) -> None:
    with pytest.raises(AuthClosedError):
        await auth.get_token()


async def test_undecodable_answer_is_a_response_error(token_mock: PaymeTokenMock) -> None:
    """A body that claims gzip but is not gives TokenResponseError, not a raw httpx error."""

    async def not_gzip() -> AsyncIterator[bytes]:
        yield b"not gzip at all"

    token_mock.respond(
        lambda request: httpx.Response(
            200, content=not_gzip(), headers={"Content-Encoding": "gzip"}
        )
    )
    auth = make_auth()
    with pytest.raises(TokenResponseError, match="could not be read"):
        await auth.get_token()
    assert token_mock.call_count == 1


async def test_renewals_and_refreshes_are_logged(
    token_mock: PaymeTokenMock, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal names the old token's fingerprint and time left; a refresh says it was asked."""
    token_mock.issue(expires_in=100, times=2)
    auth = make_auth(clock, refresh_margin=30)
    first = await auth.get_token()
    clock.advance(80)
    await auth.get_token()
    await eventually(lambda: auth.stats().renewals == 1)
    await auth.refresh()
    messages = [record.getMessage() for record in caplog.records if record.levelname == "INFO"]
    assert f"renewing token {first.fingerprint} in the background (20 s of its life left)" in (
        messages
    )
    assert "refreshing the token on request" in messages


async def test_answer_from_a_mock_transport_is_read() -> None:
    """A borrowed client on httpx.MockTransport (answers already in memory) works."""

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=token_answer())

    async with httpx.AsyncClient(transport=httpx.MockTransport(token_endpoint)) as client:
        auth = make_auth(http_client=client)
        token = await auth.get_token()
    assert token.expires_in == 8600


async def test_oversized_answer_from_a_mock_transport_is_refused() -> None:
    """An in-memory answer over the size limit is refused like a streamed one."""

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * 300_000)

    async with httpx.AsyncClient(transport=httpx.MockTransport(token_endpoint)) as client:
        with pytest.raises(TokenResponseError, match="larger than"):
            await make_auth(http_client=client).get_token()
