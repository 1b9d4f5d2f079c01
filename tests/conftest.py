"""Shared fixtures: both async backends, a fake clock, canned token answers, the token
endpoint mocked, a polling helper, and a guard that no secret reaches a log record."""

from __future__ import annotations

import faulthandler
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import respx

from payme_auth import Environment, PaymeAuth, RetryPolicy
from payme_auth.testing import EmulatorServer, PaymeEmulator, PaymeTokenMock, run_emulator

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "CLIENT-SECRET-s3cr3t"
"""The client secret used in tests: it must never appear in a log record."""

TOKEN_MARK = "TOKEN-SECRET-"
"""Every token value tests hand out starts with this: it must never appear in a log record."""

TOKEN_URL = Environment.PREPROD.token_url
API = "https://api.preprod.alignet.io"

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002, max_retry_after=0.05)
"""Retries with waits short enough for tests."""

_serial = itertools.count(1)


def new_token_value() -> str:
    """A fresh token value, marked as secret."""
    return f"{TOKEN_MARK}{next(_serial):06d}.payload.signature"


def token_answer(**overrides: Any) -> dict[str, Any]:
    """A documented-shape token answer; keyword arguments replace (or, as None, drop) fields."""
    body: dict[str, Any] = {
        "action": "authorize",
        "success": True,
        "access_token": new_token_value(),
        "scope": "create:token post:charges get:charges delete:charges",
        "expires_in": 8600,
        "token_type": "Bearer",
        "authorization": {
            "meta": {
                "status": {
                    "code": "00",
                    "message_ilgn": [{"locale": "es_PE", "value": "Access Token creado"}],
                }
            }
        },
    }
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock."""
    return FakeClock()


@pytest.fixture(autouse=True)
def secrets_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture payme_auth's logs at DEBUG in every test and check no secret is in them."""
    caplog.set_level(logging.DEBUG, logger="payme_auth")
    yield
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += repr(record.exc_info[1]) + str(record.exc_info[1])
        assert CLIENT_SECRET not in text, f"client secret in log record: {record!r}"
        assert TOKEN_MARK not in text, f"token value in log record: {record!r}"


@pytest.fixture
def token_router() -> respx.MockRouter | None:
    """The respx router that token_mock adds its route to: by default none, for a router of
    its own; a module whose API routes are on a router of its own overrides this."""
    return None


@pytest.fixture
def token_mock(
    request: pytest.FixtureRequest, token_router: respx.MockRouter | None
) -> Iterator[PaymeTokenMock]:
    """Pay-me preprod's token URL answered by the public PaymeTokenMock; the tokens it makes
    up carry TOKEN_MARK. On a router of its own, it lets no other request out.

    Answers queued and never asked for fail a test that passed otherwise.
    """
    mock = PaymeTokenMock(Environment.PREPROD, router=token_router, token_prefix=TOKEN_MARK)
    failed_before = request.session.testsfailed
    mock.start()
    yield mock
    mock.stop(check=request.session.testsfailed == failed_before)


@pytest.fixture
def emulator_server() -> Iterator[EmulatorServer]:
    """The Pay-me emulator on a loopback port, knowing the test credentials.

    Stopped with a short grace: a test may leave a request hanging on purpose (its client
    gone), and waiting the default 10 s for it would only slow the suite.
    """
    emulator = PaymeEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    with run_emulator(emulator, shutdown_timeout=1.0) as server:
        yield server


EMULATOR_RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, max_retry_after=5.0)
"""Quick retries for tests against the emulator (a Retry-After up to 5 s is honoured)."""


def emulator_auth(server: EmulatorServer, **kwargs: Any) -> PaymeAuth:
    """A PaymeAuth with the test credentials for *server*, retrying quickly."""
    kwargs.setdefault("retry", EMULATOR_RETRY)
    return PaymeAuth(CLIENT_ID, CLIENT_SECRET, environment=server.environment, **kwargs)


@pytest.fixture
def payme_env(monkeypatch: pytest.MonkeyPatch, emulator_server: EmulatorServer) -> None:
    """Only the PAYME_* variables `payme-auth emulator` prints, pointing at the emulator (for
    the example apps, configured from the environment)."""
    for name in list(os.environ):
        if name.startswith("PAYME_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PAYME_TOKEN_URL", emulator_server.token_url)
    monkeypatch.setenv("PAYME_AUDIENCE", emulator_server.audience)
    monkeypatch.setenv("PAYME_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("PAYME_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("PAYME_MERCHANT_CODE", "SHOP42")


async def eventually(
    condition: Callable[[], object], what: str = "the condition", within: float = 5.0
) -> None:
    """Poll *condition* until it holds; fail, saying *what* was awaited, after *within* s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {within:g} s for {what}")
        await anyio.sleep(0.005)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Make a process that does not exit after the tests fail loudly instead of hanging.

    A thread or child left running would keep the interpreter alive for ever; after 60 s,
    every thread's stack is dumped and the process exits with an error.
    """
    faulthandler.dump_traceback_later(60, exit=True)


# A plain run deselects the slow tests and says in one line per cause what was skipped.
from ._skips import (  # noqa: E402, F401
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_terminal_summary,
    pytest_testnodedown,
)
