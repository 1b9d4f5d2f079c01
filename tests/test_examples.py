"""The example apps in examples/, end to end over real loopback sockets.

Each app is served for real (FastAPI by uvicorn, aiohttp by its own web runner), each in a
thread with its own asyncio loop, configured only through ``PAYME_*`` variables that point
at the Pay-me emulator, itself served by ``run_emulator()``. The tests call the apps with
httpx, on asyncio and on trio, and count what reached the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from payme_auth.testing import EmulatorServer

from .conftest import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BURST = 40
WAIT = 20.0  # seconds: the bound on every wait in these tests


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py (examples/ is not a package), once."""
    module_name = f"payme_examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@contextlib.contextmanager
def _serving(
    main: Callable[[socket.socket, threading.Event, threading.Event], Coroutine[Any, Any, None]],
) -> Iterator[str]:
    """Run ``main(sock, started, stop)`` in a thread with its own asyncio loop; yield its URL.

    *main* sets *started* once it serves, and returns after *stop* is set.
    """
    errors: list[BaseException] = []
    started, stop = threading.Event(), threading.Event()
    with _listening_socket() as sock:

        def run() -> None:
            try:
                asyncio.run(main(sock, started, stop))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="example-app", daemon=True)
        thread.start()
        deadline = time.monotonic() + WAIT
        while not started.wait(0.01):
            if not thread.is_alive():
                raise RuntimeError("the example app failed to start") from (
                    errors[0] if errors else None
                )
            if time.monotonic() > deadline:
                raise TimeoutError("the example app did not start in time")
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            stop.set()
            thread.join(WAIT)
    assert not thread.is_alive(), "the example app did not stop in time"
    if errors:
        raise errors[0]


async def _wait_for(stop: threading.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def serve_fastapi() -> Iterator[str]:
    """Serve examples/fastapi_app.py with uvicorn, lifespan included."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    app = load_example("fastapi_app").app

    async def main(sock: socket.socket, started: threading.Event, stop: threading.Event) -> None:
        config = uvicorn.Config(
            app, lifespan="on", log_config=None, log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)

        async def watch() -> None:
            while not server.started:
                await asyncio.sleep(0.005)
            started.set()
            await _wait_for(stop)
            server.should_exit = True

        # If the lifespan fails, uvicorn logs why and raises SystemExit from serve().
        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    with _serving(main) as url:
        yield url


@contextlib.contextmanager
def serve_aiohttp() -> Iterator[str]:
    """Serve examples/aiohttp_app.py with aiohttp's web runner, cleanup context included."""
    web = pytest.importorskip("aiohttp.web")
    module = load_example("aiohttp_app")

    async def main(sock: socket.socket, started: threading.Event, stop: threading.Event) -> None:
        # Setup and cleanup in one task, as web.run_app does: the app's cleanup context
        # holds `async with PaymeAuth(...)` open between the two.
        runner = web.AppRunner(module.create_app(), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            started.set()
            await _wait_for(stop)
        finally:
            await runner.cleanup()

    with _serving(main) as url:
        yield url


SERVERS = {"fastapi": serve_fastapi, "aiohttp": serve_aiohttp}


@pytest.fixture(params=sorted(SERVERS))
def app_name(request: pytest.FixtureRequest) -> str:
    """Which example app the test runs against."""
    return str(request.param)


async def _pay_many(url: str, count: int) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    async def pay(client: httpx.AsyncClient, number: int) -> None:
        amount = f"{number + 1}.50"
        responses.append(await client.post("/pay", json={"amount": amount, "currency": "PEN"}))

    async with (
        httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
        anyio.create_task_group() as tg,
    ):
        for number in range(count):
            tg.start_soon(pay, client, number)
    return responses


def _health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health/payme", timeout=WAIT)


async def test_concurrent_payments_share_one_token(
    app_name: str, payme_env: None, emulator_server: EmulatorServer
) -> None:
    """A burst of concurrent payments all succeed, at the cost of one token request."""
    emulator = emulator_server.emulator
    with SERVERS[app_name]() as url:
        with anyio.fail_after(WAIT):
            before = await anyio.to_thread.run_sync(_health, url)
            responses = await _pay_many(url, BURST)
            after = await anyio.to_thread.run_sync(_health, url)

    assert before.status_code == 200
    assert (before.json()["state"], before.json()["healthy"]) == ("none", True)
    assert [r.status_code for r in responses] == [200] * BURST, responses[0].text
    bodies = [r.json() for r in responses]
    assert {body["state"] for body in bodies} == {"AUTORIZADO"}
    assert len({body["merchant_operation_number"] for body in bodies}) == BURST
    assert len({body["transaction_id"] for body in bodies}) == BURST
    stats = emulator.stats
    assert (stats.token_requests, stats.tokens_issued) == (1, 1)
    assert (stats.api_requests, stats.api_unauthorized) == (BURST, 0)
    assert after.status_code == 200
    health = after.json()
    assert (health["state"], health["healthy"]) == ("fresh", True)
    assert (health["token_requests"], health["tokens_obtained"]) == (1, 1)
    assert CLIENT_SECRET not in after.text


async def test_revoked_token_costs_one_more_request(
    app_name: str, payme_env: None, emulator_server: EmulatorServer
) -> None:
    """After the server revokes the token, the next burst recovers with one new token."""
    emulator = emulator_server.emulator
    with SERVERS[app_name]() as url:
        with anyio.fail_after(WAIT):
            first = await _pay_many(url, 1)
            assert emulator.revoke_tokens() == 1
            responses = await _pay_many(url, BURST)
            health = (await anyio.to_thread.run_sync(_health, url)).json()

    assert [r.status_code for r in first + responses] == [200] * (BURST + 1)
    stats = emulator.stats
    assert (stats.token_requests, stats.tokens_issued) == (2, 2)
    # Every request answered 401 was replayed once with the new token, and only those.
    assert 1 <= stats.api_unauthorized <= BURST
    assert stats.api_requests == 1 + BURST + stats.api_unauthorized
    assert health["tokens_obtained"] == 2
    assert health["failed_fetches"] == 0
    # Both plugs, httpx's and aiohttp's middleware, count their replays.
    assert health["replays"] == stats.api_unauthorized
    assert health["healthy"] is True


async def test_refused_credentials_make_payments_unavailable(
    app_name: str,
    payme_env: None,
    emulator_server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a wrong secret, /pay answers 503 (no secret in it) and the health check fails."""
    wrong = "WRONG-" + CLIENT_SECRET
    monkeypatch.setenv("PAYME_CLIENT_SECRET", wrong)
    with SERVERS[app_name]() as url:
        with anyio.fail_after(WAIT):
            responses = [*await _pay_many(url, 1), *await _pay_many(url, 1)]
            health = await anyio.to_thread.run_sync(_health, url)

    assert [r.status_code for r in responses] == [503, 503]
    assert all(wrong not in r.text and CLIENT_SECRET not in r.text for r in responses)
    stats = emulator_server.emulator.stats
    # A refusal is never retried nor cached: one token request per payment, no API call.
    assert (stats.token_requests, stats.tokens_issued, stats.api_requests) == (2, 0, 0)
    assert health.status_code == 503
    assert (health.json()["state"], health.json()["healthy"]) == ("none", False)
    assert "HTTP=401" in health.json()["last_error"]
    assert CLIENT_SECRET not in health.text


async def test_health_follows_withdrawn_and_restored_credentials(
    app_name: str, payme_env: None, emulator_server: EmulatorServer
) -> None:
    """Once the token is revoked and the credentials refused, /pay and the health route both
    answer 503; once the credentials are accepted again, both recover."""
    emulator = emulator_server.emulator
    with SERVERS[app_name]() as url:
        with anyio.fail_after(WAIT):
            first = await _pay_many(url, 1)
            emulator.revoke_tokens()
            emulator.remove_client(CLIENT_ID)
            refused = await _pay_many(url, 1)
            down = await anyio.to_thread.run_sync(_health, url)
            emulator.add_client(CLIENT_ID, CLIENT_SECRET)
            again = await _pay_many(url, 1)
            up = await anyio.to_thread.run_sync(_health, url)

    assert [r.status_code for r in first + refused + again] == [200, 503, 200]
    assert down.status_code == 503
    assert down.json()["healthy"] is False
    assert "HTTP=401" in down.json()["last_error"]
    assert up.status_code == 200
    assert (up.json()["state"], up.json()["healthy"]) == ("fresh", True)
    # The refused payment was not replayed: there was no new token to replay it with.
    assert up.json()["replays"] == 0
    assert CLIENT_SECRET not in down.text + up.text


async def test_invalid_payment_is_rejected_before_pay_me(
    app_name: str, payme_env: None, emulator_server: EmulatorServer
) -> None:
    """A malformed amount is refused by the app itself: no token, no charge."""
    with SERVERS[app_name]() as url:
        with anyio.fail_after(WAIT):
            async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
                response = await client.post("/pay", json={"amount": "ten soles"})

    assert response.status_code in (400, 422)
    stats = emulator_server.emulator.stats
    assert (stats.token_requests, stats.api_requests) == (0, 0)


def test_missing_configuration_stops_startup(
    app_name: str,
    payme_env: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without PAYME_CLIENT_ID the app refuses to start, and says which variable is missing."""
    monkeypatch.delenv("PAYME_CLIENT_ID")
    with pytest.raises(RuntimeError, match="failed to start") as caught, SERVERS[app_name]():
        pass  # pragma: no cover - never reached
    # aiohttp's runner raises the error; uvicorn logs its traceback and exits.
    said = [record.getMessage() for record in caplog.records]
    cause: BaseException | None = caught.value.__cause__
    while cause is not None:
        said.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__
    assert any("ConfigurationError: PAYME_CLIENT_ID is not set" in text for text in said), said
