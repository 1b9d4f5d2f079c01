"""Shared fixtures: both async backends, a fake clock, canned token answers, a scripted token
endpoint, and a guard that no secret reaches a log record."""

from __future__ import annotations

import faulthandler
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import respx

from payme_auth import Environment, RetryPolicy

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


class TokenServer:
    """A scripted token endpoint: answers in order, optionally held at a gate."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.route = router.post(TOKEN_URL)
        self.route.side_effect = self._answer
        self.answers: list[Callable[[], httpx.Response] | httpx.Response | Exception] = []
        self.gate: anyio.Event | None = None
        self.arrived = 0
        self.issued: list[str] = []

    @property
    def calls(self) -> int:
        return self.route.call_count

    def hold(self) -> None:
        """Make the next requests wait until release() is called."""
        self.gate = anyio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    async def _answer(self, request: httpx.Request) -> httpx.Response:
        self.arrived += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        if answer is not None:
            return answer()
        body = token_answer()
        self.issued.append(body["access_token"])
        return httpx.Response(200, json=body)


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    with respx.mock(assert_all_called=False) as router:
        yield TokenServer(router)


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
