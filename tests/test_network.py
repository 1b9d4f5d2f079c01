"""PaymeAuth over a real network path: the emulator served by uvicorn on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from payme_auth import (
    Environment,
    InvalidCredentialsError,
    PaymeAuth,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenRefusedError,
)
from payme_auth.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    EmulatorServer,
    Fault,
    PaymeEmulator,
    run_emulator,
)

pytestmark = pytest.mark.anyio

API_TIMEOUT = 60.0
"""Bursts of hundreds of calls queue for connections: on a slow, shared machine, be patient."""

QUICK_RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.02, max_retry_after=2)


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorServer]:
    """One emulator server for the module; each test resets what it changes."""
    with run_emulator(PaymeEmulator()) as server:
        yield server


@pytest.fixture
def server(served: EmulatorServer) -> EmulatorServer:
    """The shared server, with its faults, knobs and counters back to their defaults."""
    emulator = served.emulator
    emulator.clear_faults()
    emulator.revoke_tokens()
    emulator.token_lifetime = 8600
    emulator.token_latency = 0.0
    emulator.api_latency = 0.0
    emulator.reset_stats()
    return served


def make_auth(server: EmulatorServer, **kwargs: Any) -> PaymeAuth:
    kwargs.setdefault("retry", QUICK_RETRY)
    return PaymeAuth(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        environment=server.environment,
        **kwargs,
    )


async def charge_burst(api: httpx.AsyncClient, count: int) -> list[int]:
    statuses: list[int] = []

    async def charge(number: int) -> None:
        response = await api.post("/charges", json={"merchant_operation_number": str(number)})
        statuses.append(response.status_code)

    async with anyio.create_task_group() as tg:
        for number in range(count):
            tg.start_soon(charge, number)
    return statuses


async def test_concurrent_calls_cost_one_token_request(server: EmulatorServer) -> None:
    """300 concurrent API calls through a fresh PaymeAuth cause exactly one token request."""
    server.emulator.token_latency = 0.05
    async with (
        make_auth(server) as auth,
        httpx.AsyncClient(base_url=server.url, auth=auth, timeout=API_TIMEOUT) as api,
    ):
        statuses = await charge_burst(api, 300)
    assert statuses == [200] * 300
    stats = server.emulator.stats
    assert stats.token_requests == 1
    assert stats.api_requests == 300
    assert stats.api_unauthorized == 0


async def test_one_liner_without_async_with(server: EmulatorServer) -> None:
    """httpx.AsyncClient(auth=PaymeAuth(...)) works on its own, leaving nothing open."""
    async with httpx.AsyncClient(
        base_url=server.url, auth=make_auth(server), timeout=API_TIMEOUT
    ) as api:
        statuses = await charge_burst(api, 50)
    assert statuses == [200] * 50
    assert server.emulator.stats.token_requests == 1


async def test_revoked_token_is_replaced_once(server: EmulatorServer) -> None:
    """After the server revokes the token, the next burst costs one token request, no failure."""
    async with (
        make_auth(server) as auth,
        httpx.AsyncClient(base_url=server.url, auth=auth, timeout=API_TIMEOUT) as api,
    ):
        assert await charge_burst(api, 20) == [200] * 20
        server.emulator.revoke_tokens()
        assert await charge_burst(api, 100) == [200] * 100
    assert server.emulator.stats.token_requests == 2


async def test_wrong_secret_is_refused_with_pay_me_details(server: EmulatorServer) -> None:
    """A wrong secret gives InvalidCredentialsError with status 401 and Pay-me's code."""
    auth = PaymeAuth(DEFAULT_CLIENT_ID, "not-the-secret", environment=server.environment)
    with pytest.raises(InvalidCredentialsError) as caught:
        await auth.get_token()
    assert caught.value.status_code == 401
    assert caught.value.code == "01"
    assert caught.value.detail
    assert "not-the-secret" not in str(caught.value)
    assert server.emulator.stats.token_requests == 1


async def test_scope_not_allowed_is_refused(server: EmulatorServer) -> None:
    """A scope the client may not have is refused with 401, as Pay-me documents."""
    auth = make_auth(server, scopes=["refund:everything"])
    with pytest.raises(InvalidCredentialsError):
        await auth.get_token()


async def test_wrong_audience_is_a_bad_request(server: EmulatorServer) -> None:
    """An audience that is not the server's own is refused (400) and not retried."""
    environment = Environment(token_url=server.token_url, audience="http://127.0.0.1:1/")
    auth = PaymeAuth(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=environment)
    with pytest.raises(TokenRefusedError) as caught:
        await auth.get_token()
    assert caught.value.status_code == 400
    assert server.emulator.stats.token_requests == 1


async def test_transient_faults_are_retried(server: EmulatorServer) -> None:
    """Two 503s (one with Retry-After) and then a token: three requests, and calls succeed."""
    server.emulator.inject(Fault(status=503, headers={"Retry-After": "0"}))
    server.emulator.inject(Fault(status=502, body=b"<html>Bad gateway</html>"))
    async with (
        make_auth(server) as auth,
        httpx.AsyncClient(base_url=server.url, auth=auth, timeout=API_TIMEOUT) as api,
    ):
        assert await charge_burst(api, 10) == [200] * 10
    assert server.emulator.stats.token_requests == 3


async def test_outage_fails_every_waiter_once(server: EmulatorServer) -> None:
    """A token endpoint that keeps failing gives every caller the typed error, 3 requests."""
    server.emulator.inject(Fault(status=500), times=10)
    failures: list[TokenEndpointUnavailableError] = []

    async def call(auth: PaymeAuth) -> None:
        try:
            await auth.get_token()
        except TokenEndpointUnavailableError as error:
            failures.append(error)

    async with make_auth(server) as auth, anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call, auth)
    assert len(failures) == 50
    assert server.emulator.stats.token_requests == 3


async def test_slow_endpoint_is_bounded_by_the_timeout(server: EmulatorServer) -> None:
    """A token endpoint slower than the timeout costs at most the attempts' timeouts."""
    server.emulator.token_latency = 2.0
    auth = make_auth(server, timeout=0.2, retry=RetryPolicy(attempts=2, backoff=0))
    started = time.monotonic()
    with anyio.fail_after(5), pytest.raises(TokenEndpointUnavailableError) as caught:
        await auth.get_token()
    assert time.monotonic() - started < 1.5
    assert caught.value.attempts == 2


async def test_unreachable_endpoint_is_reported(server: EmulatorServer) -> None:
    """A closed port gives TokenEndpointUnavailableError naming the connection failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environment = Environment(
        token_url=f"http://127.0.0.1:{port}/token", audience=f"http://127.0.0.1:{port}/"
    )
    auth = PaymeAuth(
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=environment, retry=QUICK_RETRY
    )
    with pytest.raises(TokenEndpointUnavailableError, match="ConnectError") as caught:
        await auth.get_token()
    assert caught.value.attempts == 3
    assert caught.value.status_code is None


async def test_short_lived_token_is_renewed_before_the_api_rejects_it(
    server: EmulatorServer,
) -> None:
    """With a 2 s token and a 60 s margin, calls over 2.5 s renew it and never get a 401."""
    server.emulator.token_lifetime = 2
    async with (
        make_auth(server) as auth,
        httpx.AsyncClient(base_url=server.url, auth=auth, timeout=API_TIMEOUT) as api,
    ):
        statuses: list[int] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            statuses.extend(await charge_burst(api, 5))
            await anyio.sleep(0.1)
    assert set(statuses) == {200}
    stats = server.emulator.stats
    assert stats.api_unauthorized == 0
    assert 2 <= stats.token_requests <= 4


async def test_headers_work_for_other_clients(server: EmulatorServer) -> None:
    """auth.headers() authenticates a request sent by a client that knows nothing of PaymeAuth."""
    async with make_auth(server) as auth, httpx.AsyncClient(base_url=server.url) as plain:
        response = await plain.post("/charges", json={}, headers=await auth.headers())
    assert response.status_code == 200
