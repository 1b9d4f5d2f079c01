"""Synchronous callers: httpx.Client(auth=PaymeAuth(...)), get_token_sync() and friends, from
real threads, against the emulator on a loopback port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from payme_auth import AccessToken, AuthClosedError, PaymeAuth, TokenError
from payme_auth.testing import (
    EmulatorServer,
)

from .conftest import CLIENT_ID, FakeClock, emulator_auth


def in_threads(count: int, work: object) -> None:
    """Run *work* in *count* threads started together; fail if any is still running at 20 s."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            work()  # type: ignore[operator]
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_64_threads_share_one_token_request(emulator_server: EmulatorServer) -> None:
    """64 threads calling the API through httpx.Client at once cause one token request."""
    emulator_server.emulator.token_latency = 0.2
    auth = emulator_auth(emulator_server)
    statuses: list[int] = []

    def work() -> None:
        with httpx.Client(base_url=emulator_server.url, auth=auth) as client:
            for n in range(3):
                response = client.post("/charges", json={"merchant_operation_number": f"{n}"})
                statuses.append(response.status_code)

    in_threads(64, work)
    assert statuses == [200] * 192
    assert emulator_server.emulator.stats.token_requests == 1
    auth.close()


def test_threads_share_a_failure_once(emulator_server: EmulatorServer) -> None:
    """Refused credentials: every waiting thread gets the one error, from one request."""
    auth = PaymeAuth(CLIENT_ID, "wrong-secret", environment=emulator_server.environment)
    emulator_server.emulator.token_latency = 0.2
    errors: list[TokenError] = []

    def work() -> None:
        try:
            auth.get_token_sync()
        except TokenError as error:
            errors.append(error)

    in_threads(32, work)
    assert len(errors) == 32
    assert len({id(error) for error in errors}) == 1
    assert emulator_server.emulator.stats.token_requests == 1
    auth.close()


def test_a_revoked_token_is_replaced_once_for_every_thread(emulator_server: EmulatorServer) -> None:
    """After revocation, every request refused with the old token is replayed once, all of
    them with one new token."""
    auth = emulator_auth(emulator_server)
    auth.get_token_sync()
    emulator_server.emulator.revoke_tokens()
    emulator_server.emulator.token_latency = 0.2
    statuses: list[int] = []

    def work() -> None:
        with httpx.Client(base_url=emulator_server.url, auth=auth) as client:
            statuses.append(client.post("/charges", json={"n": 1}).status_code)

    in_threads(16, work)
    assert statuses == [200] * 16
    stats = emulator_server.emulator.stats
    assert stats.token_requests == 2
    assert stats.api_unauthorized >= 1
    assert auth.stats().replays == stats.api_unauthorized
    auth.close()


def test_a_streamed_body_is_not_replayed(emulator_server: EmulatorServer) -> None:
    """A body sent from a generator cannot be sent again: the caller gets the 401."""
    auth = emulator_auth(emulator_server)
    auth.get_token_sync()
    emulator_server.emulator.revoke_tokens()

    def body() -> Iterator[bytes]:
        yield b'{"merchant_operation_number": "1"}'

    with httpx.Client(base_url=emulator_server.url, auth=auth) as client:
        response = client.post("/charges", content=body())
    assert response.status_code == 401
    assert auth.stats().replays == 0
    auth.close()


def test_sync_and_async_callers_share_the_token(emulator_server: EmulatorServer) -> None:
    """A token fetched by a thread is the one an event loop gets, and the other way round."""
    auth = emulator_auth(emulator_server)
    first = auth.get_token_sync()
    assert asyncio.run(auth.get_token()) is first
    assert auth.headers_sync() == {
        "Authorization": first.authorization,
        "ALG-API-VERSION": emulator_server.environment.api_version,
    }
    renewed = auth.refresh_sync()
    assert renewed is not first
    assert asyncio.run(auth.get_token()) is renewed
    assert emulator_server.emulator.stats.token_requests == 2
    auth.close()


def test_close_from_sync_code_frees_waiting_threads(emulator_server: EmulatorServer) -> None:
    """close() while threads wait on a fetch to a hanging endpoint: they get AuthClosedError
    at once, and nothing more is sent."""
    emulator_server.emulator.token_latency = 60.0
    auth = emulator_auth(emulator_server, timeout=5.0)
    done: list[float] = []

    def work() -> None:
        with pytest.raises(AuthClosedError):
            auth.get_token_sync()
        done.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while emulator_server.emulator.stats.token_requests < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    auth.close()
    closed_at = time.monotonic()
    for thread in threads:
        thread.join(timeout=5)
    assert len(done) == 8
    assert max(done) - closed_at < 1.0
    time.sleep(0.2)
    assert emulator_server.emulator.stats.token_requests == 1
    with pytest.raises(AuthClosedError):
        auth.get_token_sync()


def test_no_thread_waits_for_a_renewal_while_the_token_is_good(
    emulator_server: EmulatorServer,
) -> None:
    """Inside the refresh margin a sync caller gets the cached token at once, the renewal
    runs in a thread of its own, and the next callers get the new token."""
    clock = FakeClock()
    auth = emulator_auth(emulator_server, clock=clock, refresh_margin=60, advisory_ratio=None)
    first = auth.get_token_sync()
    emulator_server.emulator.token_latency = 0.5
    clock.advance(8600 - 30)  # inside the margin, 30 s left
    began = time.monotonic()
    tokens = [auth.get_token_sync() for _ in range(100)]
    assert time.monotonic() - began < 0.4  # nobody waited for the 0.5 s renewal
    assert all(token is first for token in tokens)
    deadline = time.monotonic() + 5
    while auth.stats().renewals < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    renewed: AccessToken = auth.get_token_sync()
    assert renewed is not first
    assert emulator_server.emulator.stats.token_requests == 2
    auth.close()
