"""One PaymeAuth under the shapes real deployments give it: several event loops one after
another, threads each running its own loop, a loop closed with a fetch in the air, a fork
with a fetch in the air, and aclose() against an endpoint that never answers.

The token endpoint is the emulator on a loopback port: the network path, threads and
event loops here are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import anyio
import pytest
import trio

from payme_auth import AccessToken, AuthClosedError, PaymeAuth
from payme_auth.testing import (
    EmulatorServer,
    PaymeEmulator,
    run_emulator,
)

from .conftest import CLIENT_ID, CLIENT_SECRET, FakeClock, emulator_auth
from .test_renewal import settle_now


def token_requests(server: EmulatorServer) -> int:
    return server.emulator.stats.token_requests


def test_threads_with_their_own_loops_never_wait_on_each_other(
    emulator_server: EmulatorServer,
) -> None:
    """Eight threads, each running asyncio.run() with its own crowd, share one PaymeAuth while
    their fetches overlap: every thread gets a token, none waits on another loop's fetch,
    and there is at most one token request per event loop."""
    emulator_server.emulator.token_latency = 0.3
    auth = emulator_auth(emulator_server)
    got: dict[int, set[str]] = {}
    start = threading.Barrier(8)

    async def crowd(index: int) -> None:
        tokens: list[AccessToken] = []

        async def one() -> None:
            tokens.append(await auth.get_token())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        got[index] = {token.value for token in tokens}

    def thread(index: int) -> None:
        start.wait()
        asyncio.run(crowd(index))

    threads = [threading.Thread(target=thread, args=(index,)) for index in range(8)]
    began = time.monotonic()
    for worker in threads:
        worker.start()
    for worker in threads:
        worker.join(timeout=15)
    assert not any(worker.is_alive() for worker in threads), "a thread never got its token"
    assert time.monotonic() - began < 10
    assert sorted(got) == list(range(8))
    assert all(len(values) == 1 for values in got.values())
    assert 1 <= token_requests(emulator_server) <= 8
    auth.close()


def test_consecutive_event_loops_share_the_token(emulator_server: EmulatorServer) -> None:
    """asyncio.run(), then trio.run(), then asyncio.run() again: one token, one request."""
    auth = emulator_auth(emulator_server)
    first = asyncio.run(auth.get_token())
    second = trio.run(auth.get_token)
    third = asyncio.run(auth.get_token())
    assert first is second is third
    assert token_requests(emulator_server) == 1
    auth.close()


def test_a_fetch_left_in_a_closed_loop_holds_nobody(emulator_server: EmulatorServer) -> None:
    """A loop closed (without cancelling its tasks) while its fetch is in the air: the next
    asyncio.run() and a trio.run() start fetches of their own and get tokens at once."""
    emulator_server.emulator.token_latency = 5.0
    auth = emulator_auth(emulator_server, timeout=8.0)
    loop = asyncio.new_event_loop()

    async def start_a_fetch() -> None:
        with anyio.move_on_after(0.2):
            await auth.get_token()

    loop.run_until_complete(start_a_fetch())
    loop.close()  # its fetch task is left pending for good
    emulator_server.emulator.token_latency = 0.0
    began = time.monotonic()
    token = asyncio.run(auth.get_token())
    assert trio.run(auth.get_token) is token
    assert time.monotonic() - began < 3
    assert token_requests(emulator_server) == 2  # the stranded request, and the one that landed
    auth.close()


def test_a_renewal_left_in_a_closed_loop_holds_back_nothing(
    emulator_server: EmulatorServer,
) -> None:
    """A background renewal stranded in a closed loop: once its token expires, callers of a
    new loop fetch their own and are not held by the stranded one."""
    emulator_server.emulator.token_lifetime = 2
    auth = emulator_auth(emulator_server, refresh_margin=0.5, timeout=2.0)
    loop = asyncio.new_event_loop()
    first = loop.run_until_complete(auth.get_token())
    emulator_server.emulator.token_latency = 30.0
    time.sleep(1.2)  # into the advisory window
    assert loop.run_until_complete(auth.get_token()) is first  # starts the renewal
    loop.close()
    emulator_server.emulator.token_latency = 0.0
    time.sleep(1.0)  # the first token has expired
    began = time.monotonic()
    token = asyncio.run(auth.get_token())
    assert token is not first
    assert time.monotonic() - began < 3
    auth.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
# Forking with a fetch in another thread is the very case under test (Python 3.12+ warns).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_during_a_fetch_fetches_its_own(emulator_server: EmulatorServer) -> None:
    """fork() while another thread's fetch is in the air: the child never waits on it; it
    fetches a token of its own and exits."""
    emulator_server.emulator.token_latency = 1.0
    auth = emulator_auth(emulator_server)
    in_air = threading.Event()

    async def fetch_slowly() -> None:
        in_air.set()
        await auth.get_token()

    parent = threading.Thread(target=asyncio.run, args=(fetch_slowly(),))
    parent.start()
    assert in_air.wait(5)
    time.sleep(0.2)  # the request is out
    emulator_server.emulator.token_latency = 0.0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's outcome is reported through the pipe
        os.close(read)
        code = 1
        try:
            token = asyncio.run(asyncio.wait_for(auth.get_token(), 5))
            os.write(write, token.fingerprint.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        with _deadline(10, pid):
            _, status = os.waitpid(pid, 0)
        answer = os.read(read, 100).decode()
    finally:
        os.close(read)
    assert os.WIFEXITED(status), "the child did not exit"
    assert os.WEXITSTATUS(status) == 0, "the child did not get a token"
    assert len(answer) == 12
    parent.join(timeout=10)
    assert not parent.is_alive()
    auth.close()


class _deadline:  # noqa: N801
    """Kill *pid* if it is still running after *seconds*."""

    def __init__(self, seconds: float, pid: int) -> None:
        self._timer = threading.Timer(seconds, self._kill, args=(pid,))

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


@pytest.mark.anyio
async def test_aclose_stops_a_fetch_against_a_hanging_endpoint(
    emulator_server: EmulatorServer,
) -> None:
    """Without async with, aclose() during a fetch to an endpoint that never answers: every
    waiter gets AuthClosedError at once, and no token request leaves after it returns."""
    emulator_server.emulator.token_latency = 60.0
    auth = emulator_auth(emulator_server, timeout=3.0)
    errors: list[float] = []

    async def call() -> None:
        with pytest.raises(AuthClosedError):
            await auth.get_token()
        errors.append(time.monotonic())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(call)
            while token_requests(emulator_server) < 1:
                await anyio.sleep(0.005)
            await auth.aclose()
            closed_at = time.monotonic()
    assert len(errors) == 100
    assert max(errors) - closed_at < 0.1
    sent = token_requests(emulator_server)
    await anyio.sleep(0.3)
    assert token_requests(emulator_server) == sent == 1


@pytest.mark.anyio
@pytest.mark.parametrize("outage", ["refused", "hanging"])
async def test_an_outage_inside_the_margin_makes_nobody_wait(outage: str) -> None:
    """Token endpoint refusing connections, or never answering, while the cached token is
    inside its refresh margin with 20 s to live: 200 concurrent calls and 200 in sequence
    get it without waiting, and the renewal goes on in the background."""
    clock = FakeClock()
    with contextlib.ExitStack() as stack:
        emulator = PaymeEmulator(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_lifetime=60
        )
        server = stack.enter_context(run_emulator(emulator))
        auth = emulator_auth(server, clock=clock, refresh_margin=25, advisory_ratio=None, timeout=3)
        first = await auth.get_token()
        if outage == "refused":
            stack.close()  # the server stops: connections are refused from now on
        else:
            server.emulator.token_latency = 60.0
        clock.advance(40)  # 20 s left: inside the 25 s margin
        tokens: list[AccessToken] = []
        began = time.monotonic()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(_append, tokens, auth)
        crowd_took = time.monotonic() - began
        tokens.extend(settle_now(auth.get_token()) for _ in range(200))  # no suspension
        assert all(token is first for token in tokens)
        assert crowd_took < 1.0  # waiting for the renewal takes >= 1 s (refused), 3 s (hanging)
        assert auth.stats().state == "renewing"
        await auth.aclose()


async def _append(tokens: list[AccessToken], auth: PaymeAuth) -> None:
    tokens.append(await auth.get_token())
