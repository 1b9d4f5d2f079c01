"""Fault injection over a real loopback server: the emulator served by uvicorn, broken on purpose.

Every scenario runs on asyncio and trio and checks, besides its own outcome:

- the exact error type (or success), and that every caller of one flight got the same error;
- that nothing hangs (each scenario runs under ``anyio.fail_after``);
- how many token requests reached the server (exact where the retry policy makes it so);
- that no exception, nor anything it chains, shows the client secret or a token value;
- that no task outlives the scenario, and the server holds no connection afterwards.

The outage scenarios use real time with tokens living a few seconds.
"""

from __future__ import annotations

import base64
import gc
import importlib.util
import json
import logging
import math
import random
import time
import traceback
import tracemalloc
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
import attrs
import httpx
import pytest

from payme_auth import (
    AccessToken,
    ConfigurationError,
    Environment,
    InsufficientScopeError,
    InvalidCredentialsError,
    PaymeAuth,
    PaymeAuthError,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from payme_auth._cli_check import exit_code_of, run_check
from payme_auth._cli_settings import Settings
from payme_auth.testing import EmulatorServer, Fault, PaymeEmulator, run_emulator

from . import hostile_server as hostile
from .conftest import CLIENT_ID, CLIENT_SECRET, TOKEN_MARK, eventually, token_answer

pytestmark = pytest.mark.anyio

E = TypeVar("E", bound=PaymeAuthError)
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SCENARIO_LIMIT = 20.0
"""No scenario may take longer than this (they take well under a few seconds)."""

SETTLE_LIMIT = 5.0
"""How long closed connections and finished tasks may take to disappear."""

API_TIMEOUT = 30.0
QUICK_RETRY = RetryPolicy(backoff=0.01, max_backoff=0.05, max_retry_after=2.0)
"""The default three attempts, with short waits."""

ATTEMPTS = QUICK_RETRY.attempts
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
HTML = {"content-type": "text/html; charset=utf-8"}
ONE_MIB = 1024 * 1024
API_TLS = httpx.create_ssl_context()
"""Loaded once: the API clients talk plain HTTP to loopback, but httpx builds one regardless."""


# -- the server --------------------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False)
class RecordingEmulator(PaymeEmulator):
    """The emulator, noting every access token value its token endpoint sends."""

    issued: list[str] = attrs.field(factory=list, repr=False)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """Serve as the emulator does, reading the token answers on their way out."""
        if scope["type"] != "http" or scope["path"] != "/token":
            await super().__call__(scope, receive, send)
            return

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.body":
                self._note(bytes(message.get("body", b"")))
            await send(message)

        await super().__call__(scope, receive, noting)

    def _note(self, body: bytes) -> None:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return
        if isinstance(data, dict) and isinstance(data.get("access_token"), str):
            self.issued.append(data["access_token"])


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorServer]:
    """One emulator server for the module, knowing the client whose secret the log guard watches."""
    emulator = RecordingEmulator()
    emulator.add_client(CLIENT_ID, CLIENT_SECRET)
    with run_emulator(emulator) as server:
        yield server


@pytest.fixture
def live(served: EmulatorServer) -> EmulatorServer:
    """The shared server with its faults, knobs, tokens and counters back to their defaults."""
    emulator = served.emulator
    emulator.clear_faults()
    emulator.revoke_tokens()
    emulator.add_client(CLIENT_ID, CLIENT_SECRET)
    emulator.token_lifetime = 8600
    emulator.token_latency = 0.0
    emulator.api_latency = 0.0
    emulator.token_failure_rate = 0.0
    emulator.rng = random.Random(0)  # noqa: S311 - repeatable failures, not cryptography
    emulator.reset_stats()
    issued(served).clear()
    return served


def issued(server: EmulatorServer) -> list[str]:
    """The token values the server has handed out (or been made to send)."""
    emulator = server.emulator
    assert isinstance(emulator, RecordingEmulator)
    return emulator.issued


def token_requests(server: EmulatorServer) -> int:
    return server.emulator.stats.token_requests


def make_auth(server: EmulatorServer, **kwargs: Any) -> PaymeAuth:
    kwargs.setdefault("retry", QUICK_RETRY)
    return PaymeAuth(CLIENT_ID, CLIENT_SECRET, environment=server.environment, **kwargs)


def api_client(server: EmulatorServer, auth: PaymeAuth) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, auth=auth, timeout=API_TIMEOUT, verify=API_TLS)


async def charge(api: httpx.AsyncClient, number: int = 0) -> int:
    response = await api.post("/charges", json={"merchant_operation_number": str(number)})
    return response.status_code


def json_fault(status: int, payload: object, **kwargs: Any) -> Fault:
    return Fault(status=status, body=json.dumps(payload).encode(), **kwargs)


# -- the checks every scenario makes -----------------------------------------------------------


@asynccontextmanager
async def guarded(server: EmulatorServer, limit: float = SCENARIO_LIMIT) -> AsyncIterator[None]:
    """Bound a scenario in time; afterwards, require its tasks and connections to be gone.

    Whatever the scenario opens (PaymeAuth, clients) must be closed inside the block.
    """
    with anyio.fail_after(limit):
        await eventually(lambda: server.open_connections == 0, "a clean server", SETTLE_LIMIT)
        tasks = len(anyio.get_running_tasks())
        yield
        await eventually(
            lambda: len(anyio.get_running_tasks()) <= tasks, "the tasks to end", SETTLE_LIMIT
        )
        assert len(anyio.get_running_tasks()) == tasks
        await eventually(
            lambda: server.open_connections == 0, "the connections to close", SETTLE_LIMIT
        )


def assert_no_secret(error: BaseException, server: EmulatorServer) -> None:
    """Neither *error* nor any exception it chains shows the secret or a token value."""
    secrets = [CLIENT_SECRET, TOKEN_MARK, *issued(server)]
    texts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current)]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret shows in {type(error).__name__}: {text!r}"


def assert_no_token_logged(caplog: pytest.LogCaptureFixture, server: EmulatorServer) -> None:
    """No log record holds a token value the server issued (the conftest guard cannot know them)."""
    tokens = issued(server)
    for record in caplog.records:
        text = record.getMessage()
        assert not any(token in text for token in tokens), f"a token in {record!r}"


async def one_flight_fails(
    server: EmulatorServer,
    expected: type[E],
    *,
    via: str = "api",
    callers: int = 8,
    **auth_kwargs: Any,
) -> E:
    """Send *callers* concurrent calls that must all fail with one *expected* error; return it.

    ``via="api"``: API calls through httpx, with the PaymeAuth entered (``async with``);
    ``via="direct"``: ``get_token()`` on a PaymeAuth never entered, closed with ``aclose()``.
    """
    outcomes: list[object] = []
    async with guarded(server):
        auth = make_auth(server, **auth_kwargs)
        async with AsyncExitStack() as stack:
            if via == "api":
                await stack.enter_async_context(auth)
                api = await stack.enter_async_context(api_client(server, auth))
            else:
                stack.push_async_callback(auth.aclose)

            async def call() -> None:
                try:
                    outcomes.append(await charge(api) if via == "api" else await auth.get_token())
                except PaymeAuthError as error:
                    outcomes.append(error)

            async with anyio.create_task_group() as tg:
                for _ in range(callers):
                    tg.start_soon(call)
    assert len(outcomes) == callers
    first = outcomes[0]
    assert type(first) is expected, f"expected {expected.__name__}, got {first!r}"
    assert all(outcome is first for outcome in outcomes), "one flight, one shared error"
    assert isinstance(first, expected)
    assert_no_secret(first, server)
    return first


async def one_flight_succeeds(server: EmulatorServer, **auth_kwargs: Any) -> AccessToken:
    """Concurrent API calls all succeed on one token; return it."""
    statuses: list[int] = []
    async with (
        guarded(server),
        make_auth(server, **auth_kwargs) as auth,
        api_client(server, auth) as api,
    ):
        async with anyio.create_task_group() as tg:
            for number in range(8):
                tg.start_soon(_charge_into, statuses, api, number)
        token = await auth.get_token()
    assert statuses == [200] * 8
    return token


async def one_token(server: EmulatorServer, **auth_kwargs: Any) -> AccessToken:
    """get_token() on a PaymeAuth never entered, then closed."""
    async with guarded(server):
        auth = make_auth(server, **auth_kwargs)
        try:
            return await auth.get_token()
        finally:
            await auth.aclose()


async def _charge_into(statuses: list[int], api: httpx.AsyncClient, number: int) -> None:
    statuses.append(await charge(api, number))


# -- 5xx, 429, 408: retried, then given up on --------------------------------------------------

ERROR_BODIES = {
    "json": (b'{"message":"Service Unavailable"}', {}),
    "html": (HTML_PAGE, HTML),
    "empty": (b"", {}),
}


@pytest.mark.parametrize("body", list(ERROR_BODIES))
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_persistent_5xx_fails_after_every_attempt(
    live: EmulatorServer, status: int, body: str
) -> None:
    """A token endpoint answering 5xx every time costs exactly `attempts` requests, one error."""
    content, headers = ERROR_BODIES[body]
    live.emulator.inject(Fault(status=status, body=content, headers=headers), times=10)
    error = await one_flight_fails(live, TokenEndpointUnavailableError)
    assert error.attempts == ATTEMPTS
    assert error.status_code == status
    assert error.retry_after is None
    assert error.detail == ("Service Unavailable" if body == "json" else None)
    assert token_requests(live) == ATTEMPTS
    assert live.emulator.clear_faults() == 10 - ATTEMPTS


RECOVERABLE = [
    Fault(status=500),
    Fault(status=502, body=HTML_PAGE, headers=HTML),
    Fault(status=503, body=b"", headers={"Retry-After": "0"}),
    Fault(status=504, body=b"upstream timed out", headers={"content-type": "text/plain"}),
    Fault(status=408),
    Fault(status=429, headers={"Retry-After": "0"}),
]


@pytest.mark.parametrize("failures", [0, 1, 2])
async def test_endpoint_recovering_after_n_failures(live: EmulatorServer, failures: int) -> None:
    """N transient failures (N < attempts) and then a token: success after exactly N+1 requests."""
    reset = Fault(status=503, body=b'{"message":"Service Unavailable"}', reset=True)
    for fault in [reset, RECOVERABLE[1]][:failures]:
        live.emulator.inject(fault)
    token = await one_flight_succeeds(live)
    assert token.value in issued(live)
    assert token_requests(live) == failures + 1


@pytest.mark.parametrize("fault", RECOVERABLE, ids=lambda fault: str(fault.status))
async def test_each_transient_failure_is_retried(live: EmulatorServer, fault: Fault) -> None:
    """Each transient answer (408, 429, 5xx; any body) once, then a token: two requests."""
    live.emulator.inject(fault)
    await one_flight_succeeds(live)
    assert token_requests(live) == 2


async def test_failure_is_not_cached_and_the_next_call_recovers(live: EmulatorServer) -> None:
    """Three failures end one fetch with the error; the next call starts afresh and succeeds."""
    for fault in RECOVERABLE[:ATTEMPTS]:
        live.emulator.inject(fault)
    async with guarded(live), make_auth(live) as auth, api_client(live, auth) as api:
        with pytest.raises(TokenEndpointUnavailableError) as caught:
            await charge(api)
        assert token_requests(live) == ATTEMPTS
        assert await charge(api) == 200
        stats = auth.stats()
    assert_no_secret(caught.value, live)
    assert token_requests(live) == ATTEMPTS + 1
    assert (stats.failed_fetches, stats.tokens_obtained) == (1, 1)


@pytest.mark.parametrize("status", [408, 429])
async def test_persistent_408_and_429_fail_after_every_attempt(
    live: EmulatorServer, status: int
) -> None:
    """408 and 429 (Retry-After: 0) are retried like 5xx: `attempts` requests, then one error."""
    live.emulator.inject(Fault(status=status, headers={"Retry-After": "0"}), times=10)
    error = await one_flight_fails(live, TokenEndpointUnavailableError)
    assert (error.attempts, error.status_code, error.retry_after) == (ATTEMPTS, status, 0.0)
    assert token_requests(live) == ATTEMPTS


async def test_429_retry_after_is_honoured(live: EmulatorServer) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than a second later, then succeeds."""
    live.emulator.inject(Fault(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    await one_flight_succeeds(live)
    assert time.monotonic() - started >= 0.95
    assert token_requests(live) == 2


async def test_retry_after_beyond_the_policy_gives_up_at_once(live: EmulatorServer) -> None:
    """A Retry-After longer than max_retry_after ends the fetch after one request, no waiting."""
    live.emulator.inject(Fault(status=429, headers={"Retry-After": "120"}), times=5)
    started = time.monotonic()
    error = await one_flight_fails(live, TokenEndpointUnavailableError, via="direct")
    assert time.monotonic() - started < 5
    assert (error.attempts, error.status_code, error.retry_after) == (1, 429, 120.0)
    assert token_requests(live) == 1


# -- hanging, slow, cut short --------------------------------------------------------------------

TIMEOUTS: dict[str, float | httpx.Timeout] = {
    "seconds": 0.25,
    "httpx.Timeout": httpx.Timeout(0.1),  # four phases: an attempt is bounded by 0.4 s
}


@pytest.mark.parametrize("kind", list(TIMEOUTS))
async def test_hanging_endpoint_is_bounded_by_the_timeout(live: EmulatorServer, kind: str) -> None:
    """An endpoint that never answers in time costs `attempts` bounded attempts and one error."""
    live.emulator.inject(Fault(status=200, delay=3.0), times=ATTEMPTS)
    started = time.monotonic()
    error = await one_flight_fails(live, TokenEndpointUnavailableError, timeout=TIMEOUTS[kind])
    elapsed = time.monotonic() - started
    assert error.attempts == ATTEMPTS
    assert error.status_code is None
    assert "timeout" in str(error).lower() or "no complete answer" in str(error)
    assert elapsed < 2.5, f"three attempts of at most 0.4 s took {elapsed:.2f} s"
    assert token_requests(live) == ATTEMPTS


async def test_one_hang_then_a_token(live: EmulatorServer) -> None:
    """One answer that hangs past the timeout is abandoned; the retry gets the token."""
    live.emulator.inject(Fault(status=503, delay=3.0))
    started = time.monotonic()
    await one_flight_succeeds(live, timeout=0.3)
    assert time.monotonic() - started < 2.5
    assert token_requests(live) == 2


async def test_slow_endpoint_within_the_timeout_is_waited_for(live: EmulatorServer) -> None:
    """An endpoint slower than usual but within the timeout is not retried: one request."""
    live.emulator.token_latency = 0.3
    await one_flight_succeeds(live, timeout=3.0)
    assert token_requests(live) == 1


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(live: EmulatorServer) -> None:
    """A caller giving up on a slow fetch leaves it flying: the next caller gets its token."""
    live.emulator.token_latency = 0.5
    async with guarded(live), make_auth(live) as auth, api_client(live, auth) as api:
        with anyio.move_on_after(0.1) as scope:
            await charge(api)
        assert scope.cancelled_caught
        assert await charge(api) == 200
    assert token_requests(live) == 1


RESETS = {
    "200-token": Fault(status=200, body=json.dumps(token_answer()).encode(), reset=True),
    "503-json": Fault(status=503, body=b'{"message":"Service Unavailable"}', reset=True),
}


@pytest.mark.parametrize("fault", list(RESETS))
async def test_connection_reset_mid_answer_is_retried(live: EmulatorServer, fault: str) -> None:
    """A connection dropped mid-answer is a transport error: retried `attempts` times, one error."""
    live.emulator.inject(RESETS[fault], times=10)
    error = await one_flight_fails(live, TokenEndpointUnavailableError)
    assert "RemoteProtocolError" in str(error)
    assert (error.attempts, error.status_code) == (ATTEMPTS, None)
    assert token_requests(live) == ATTEMPTS


async def test_one_reset_then_a_token(live: EmulatorServer) -> None:
    """One connection reset mid-answer, then a token: two requests, every call succeeds."""
    live.emulator.inject(RESETS["200-token"])
    await one_flight_succeeds(live)
    assert token_requests(live) == 2


# -- answers that are not a token ------------------------------------------------------------------

_WHOLE_ANSWER = json.dumps(token_answer()).encode()
BAD_200_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "truncated-json": (_WHOLE_ANSWER[: len(_WHOLE_ANSWER) // 2], {}),
    "one-brace": (b"{", {}),
    "not-json": (b"this is not json", {}),
    "empty": (b"", {}),
    "json-array": (b"[]", {}),
    "json-null": (b"null", {}),
    "json-string": (json.dumps(TOKEN_MARK + "bare-string").encode(), {}),
    "json-number": (b"8600", {}),
    "not-utf8": (b'\xff\xfe{"access_token":', {}),
    "deeply-nested": (b"[" * 100_000, {}),
    "html-page": (HTML_PAGE, HTML),
}


@pytest.mark.parametrize("body", list(BAD_200_BODIES))
async def test_malformed_200_is_a_response_error(live: EmulatorServer, body: str) -> None:
    """A 200 whose body is not a JSON object of a token fails at once: one request, no retry."""
    content, headers = BAD_200_BODIES[body]
    live.emulator.inject(Fault(status=200, body=content, headers=headers), times=5)
    error = await one_flight_fails(live, TokenResponseError)
    assert error.status_code in (200, None)
    assert token_requests(live) == 1


async def test_undecodable_200_is_a_response_error(live: EmulatorServer) -> None:
    """A 200 claiming gzip but not gzip fails at once, leaving no iterator to the GC."""
    headers = {"content-encoding": "gzip"}
    live.emulator.inject(Fault(status=200, body=b"this is not gzip", headers=headers), times=5)
    error = await one_flight_fails(live, TokenResponseError)
    assert "DecodingError" in str(error)
    assert token_requests(live) == 1


@pytest.mark.parametrize(("status", "expected"), [(200, 1), (503, ATTEMPTS)])
async def test_huge_body_is_not_read(live: EmulatorServer, status: int, expected: int) -> None:
    """A 1 MiB answer is not read: a 200 fails at once, a 503 is retried like any 503."""
    payload = token_answer(padding="x" * ONE_MIB)
    live.emulator.inject(json_fault(status, payload), times=5)
    kind = TokenResponseError if status == 200 else TokenEndpointUnavailableError
    error: TokenError = await one_flight_fails(live, kind)
    assert error.status_code == status
    if status == 200:
        assert "larger than" in str(error)
    assert token_requests(live) == expected


# Each field of the 200 answer, replaced by a value of a wrong type. None means JSON null.
WRONG_VALUES: dict[str, object] = {
    "int": 12345,
    "float": 8600.5,
    "list": [TOKEN_MARK + "in-a-list"],
    "object": {"value": TOKEN_MARK + "in-an-object"},
    "null": None,
    "bool": True,
    "false": False,
}
FIELDS = {
    "access_token": ("int", "list", "object", "null", "bool"),
    "expires_in": ("float", "list", "object", "null", "bool"),
    "token_type": ("int", "list", "object", "null", "bool"),
    "scope": ("int", "list", "object", "null", "bool"),
    "success": ("int", "list", "object", "null"),
    "code": ("int", "list", "object", "null", "bool", "false"),
}
# A null is read as an absent field, which the protocol tolerates for these.
TOLERATED = {("expires_in", "null"), ("token_type", "null"), ("scope", "null"), ("code", "null")}


def _wrong_type_cases() -> Iterator[Any]:
    for field, kinds in FIELDS.items():
        for kind in kinds:
            yield pytest.param(field, kind, id=f"{field}-{kind}")


@pytest.mark.parametrize(("field", "kind"), list(_wrong_type_cases()))
async def test_wrong_type_in_a_200_field(live: EmulatorServer, field: str, kind: str) -> None:
    """A 200 answer with one field of a wrong type is refused (one request), or read as absent."""
    body = token_answer()
    value = WRONG_VALUES[kind]
    if field == "code":
        body["authorization"]["meta"]["status"]["code"] = value
    else:
        body[field] = value
    live.emulator.inject(json_fault(200, body))
    if (field, kind) in TOLERATED:
        # Not through the API: the emulator does not know a token it did not issue.
        token = await one_token(live)
        assert token.value == body["access_token"]
        if field == "expires_in":
            assert token.expires_in == 300  # assumed_expires_in
    else:
        await one_flight_fails(live, TokenResponseError)
    assert token_requests(live) == 1


async def test_null_expires_in_is_refused_without_an_assumed_lifetime(
    live: EmulatorServer,
) -> None:
    """With assumed_expires_in=None, an expires_in of null is an error, not a guess."""
    live.emulator.inject(json_fault(200, {**token_answer(), "expires_in": None}))
    await one_flight_fails(live, TokenResponseError, assumed_expires_in=None)
    assert token_requests(live) == 1


def _envelope(code: str, text: str) -> dict[str, Any]:
    return {
        "meta": {"status": {"code": code, "message_ilgn": [{"locale": "es_PE", "value": text}]}}
    }


SUCCESS_FALSE = {
    "bool-false": {
        "action": "authorize",
        "success": False,
        "authorization": _envelope("01", "Denegado"),
    },
    "string-false": {
        "action": "authorize",
        "success": "false",
        "authorization": _envelope("01", "Denegado"),
    },
    "false-with-a-token": {
        **token_answer(success=False),
        "authorization": _envelope("01", "Denegado"),
    },
    "true-with-code-01": {**token_answer(), "authorization": _envelope("01", "Denegado")},
}


@pytest.mark.parametrize("body", list(SUCCESS_FALSE))
async def test_success_false_envelope_is_a_response_error(live: EmulatorServer, body: str) -> None:
    """A 200 saying success=false (or a non-00 code) is refused with Pay-me's code and message."""
    live.emulator.inject(json_fault(200, SUCCESS_FALSE[body]), times=5)
    error = await one_flight_fails(live, TokenResponseError)
    assert (error.status_code, error.code, error.detail) == (200, "01", "Denegado")
    assert token_requests(live) == 1


async def test_redirect_is_not_followed_and_its_location_is_scrubbed(
    live: EmulatorServer,
) -> None:
    """A 302 from the token endpoint is not followed; a secret in its Location is not shown."""
    location = f"https://evil.example/steal?client_secret={CLIENT_SECRET}"
    live.emulator.inject(Fault(status=302, body=b"", headers={"Location": location}), times=5)
    error = await one_flight_fails(live, TokenResponseError)
    assert error.status_code == 302
    assert "***" in str(error)
    assert token_requests(live) == 1


# -- refusals ------------------------------------------------------------------------------------

REFUSAL_BODIES: dict[str, tuple[bytes, dict[str, str], dict[str, str | None]]] = {
    "pay-me-envelope": (
        json.dumps(
            {
                "action": "authorize",
                "success": False,
                "authorization": _envelope("01", "Credenciales no válidas"),
            }
        ).encode(),
        {},
        {"code": "01", "error": None, "detail": "Credenciales no válidas"},
    ),
    "auth0": (
        b'{"error":"access_denied","error_description":"Unauthorized"}',
        {},
        {"code": None, "error": "access_denied", "detail": "Unauthorized"},
    ),
    "api-gateway": (
        b'{"message":"Forbidden"}',
        {},
        {"code": None, "error": None, "detail": "Forbidden"},
    ),
    "empty": (b"", {}, {"code": None, "error": None, "detail": None}),
    "not-json": (HTML_PAGE, HTML, {"code": None, "error": None, "detail": None}),
    "echoes-the-secret": (
        json.dumps({"message": f"bad client_secret {CLIENT_SECRET}\n{CLIENT_SECRET}"}).encode(),
        {},
        {"code": None, "error": None, "detail": "bad client_secret *** ***"},
    ),
}
REFUSALS: dict[int, type[TokenRefusedError]] = {
    400: TokenRefusedError,
    401: InvalidCredentialsError,
    403: InsufficientScopeError,
}


@pytest.mark.parametrize("body", list(REFUSAL_BODIES))
@pytest.mark.parametrize("status", list(REFUSALS))
async def test_refusal_fails_at_once_with_its_details(
    live: EmulatorServer, status: int, body: str
) -> None:
    """A 400/401/403 in any documented body shape is one request and one typed error."""
    content, headers, details = REFUSAL_BODIES[body]
    live.emulator.inject(Fault(status=status, body=content, headers=headers), times=5)
    error = await one_flight_fails(live, REFUSALS[status], via="direct")
    assert error.status_code == status
    assert {"code": error.code, "error": error.error, "detail": error.detail} == details
    assert token_requests(live) == 1


@pytest.mark.parametrize(
    ("secret", "scopes"),
    [(CLIENT_SECRET + "-rotated", None), (CLIENT_SECRET, ["refund:everything"])],
    ids=["wrong-secret", "scope-not-allowed"],
)
async def test_emulator_refusal_is_invalid_credentials(
    live: EmulatorServer, secret: str, scopes: list[str] | None
) -> None:
    """The server's own 401 (wrong secret, scope not allowed): InvalidCredentialsError, once."""
    outcomes: list[BaseException] = []
    async with guarded(live):
        auth = PaymeAuth(CLIENT_ID, secret, environment=live.environment, scopes=scopes)
        try:
            await auth.get_token()
        except PaymeAuthError as error:
            outcomes.append(error)
        finally:
            await auth.aclose()
    [refused] = outcomes
    assert type(refused) is InvalidCredentialsError
    assert (refused.status_code, refused.code) == (401, "01")
    assert_no_secret(refused, live)
    assert secret not in str(refused) + repr(refused)
    assert token_requests(live) == 1


# -- revocation and cancellation under load ---------------------------------------------------


async def test_tokens_revoked_while_calls_are_in_flight(live: EmulatorServer) -> None:
    """Calls in flight when the token is revoked: each 401 replayed once, on one new token."""
    live.emulator.api_latency = 0.3
    statuses: list[int] = []
    async with guarded(live), make_auth(live) as auth, api_client(live, auth) as api:
        assert await charge(api) == 200
        async with anyio.create_task_group() as tg:
            for number in range(100):
                tg.start_soon(_charge_into, statuses, api, number)
            await eventually(
                lambda: live.emulator.stats.api_requests >= 101, "the calls to arrive", 10
            )
            assert live.emulator.revoke_tokens() == 1
        stats = auth.stats()
    assert statuses == [200] * 100
    emulated = live.emulator.stats
    assert emulated.token_requests == 2
    # On a busy machine the first calls may be answered before the last one arrives.
    assert 1 <= emulated.api_unauthorized <= 100
    assert stats.replays == emulated.api_unauthorized
    assert stats.tokens_obtained == 2


# httpx and httpcore leave their stream iterators to the garbage collector when a request is
# cancelled half-way (plain httpx does the same without PaymeAuth); trio warns about each one.
@pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._[^']*' was garbage:ResourceWarning"
)
@pytest.mark.parametrize("entered", [True, False], ids=["async-with", "one-liner"])
async def test_random_cancellation_while_endpoint_is_slow_and_flaky(
    live: EmulatorServer, entered: bool
) -> None:
    """300 callers with random deadlines on a slow, flaky endpoint: no hang, no poisoned state."""
    latency = 0.1
    live.emulator.token_latency = latency
    live.emulator.token_failure_rate = 0.6
    live.emulator.rng = random.Random(20240611)  # noqa: S311 - repeatable, not cryptography
    draw = random.Random(4242)  # noqa: S311
    deadlines = [draw.uniform(0.0, 0.8) for _ in range(300)]
    outcomes: list[object] = []
    async with guarded(live):
        auth = make_auth(live)
        async with AsyncExitStack() as stack:
            if entered:
                await stack.enter_async_context(auth)
            else:
                stack.push_async_callback(auth.aclose)
            api = await stack.enter_async_context(api_client(live, auth))

            async def caller(deadline: float, number: int) -> None:
                with anyio.move_on_after(deadline):
                    try:
                        outcomes.append(await charge(api, number))
                    except PaymeAuthError as error:
                        outcomes.append(error)
                    return
                outcomes.append("cancelled")

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for number, deadline in enumerate(deadlines):
                    tg.start_soon(caller, deadline, number)
                    if number % 10 == 9:
                        await anyio.sleep(0.01)  # a stream of callers, not one burst
            storm = time.monotonic() - started
            storm_requests = token_requests(live)
            live.emulator.token_failure_rate = 0.0
            assert await charge(api) == 200  # nothing failed or abandoned was kept
            client_side = auth.stats().token_requests
        gc.collect()  # finalize the abandoned iterators now, under this test's warning filter
    assert len(outcomes) == len(deadlines)
    cancelled = outcomes.count("cancelled")
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert cancelled > 0
    for outcome in outcomes:
        assert outcome in (200, "cancelled") or type(outcome) is TokenEndpointUnavailableError
    for error in errors:
        assert_no_secret(error, live)
    # Flights never overlap, and each request takes at least the latency, unless the caller
    # leading it (without async with) was cancelled and someone else led the next one.
    bound = storm / latency + 2 + (0 if entered else cancelled)
    assert 1 <= storm_requests <= bound
    assert token_requests(live) <= client_side


# -- outage tolerance: the token is still valid, the endpoint is down ------------------------------


@attrs.frozen
class Life:
    """Where a token's life splits, for advisory_ratio 2/3 and the given refresh margin."""

    advisory_at: float
    mandatory_at: float
    expires_at: float
    pause: float  # the renewal pause before jitter

    @classmethod
    def of(cls, token: AccessToken, refresh_margin: float) -> Life:
        margin = min(refresh_margin, token.expires_in / 2)
        mandatory_at = token.expires_at - margin
        usable = token.expires_in - margin
        return cls(
            advisory_at=token.obtained_at + usable * 2 / 3,
            mandatory_at=mandatory_at,
            expires_at=token.expires_at,
            pause=min(5.0, max(0.05, token.expires_in / 20)),
        )

    def max_tries(self, seconds: float) -> float:
        """The most renewal requests in *seconds*: one renewal (its retry policy's attempts)
        per jittered pause, with headroom."""
        return QUICK_RETRY.attempts * (seconds / (0.8 * self.pause) + 2)


@attrs.define
class Calls:
    """The outcomes of a steady stream of API calls: (sent at, done at, status or error)."""

    log: list[tuple[float, float, object]] = attrs.Factory(list)
    stop: anyio.Event = attrs.Factory(anyio.Event)

    async def stream(self, api: httpx.AsyncClient, workers: int = 3, gap: float = 0.02) -> None:
        async def worker(offset: int) -> None:
            number = offset
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    outcome: object = await charge(api, number)
                except PaymeAuthError as error:
                    outcome = error
                self.log.append((sent, time.monotonic(), outcome))
                number += workers
                await anyio.sleep(gap)

        async with anyio.create_task_group() as tg:
            for offset in range(workers):
                tg.start_soon(worker, offset)

    def failed(self, before: float) -> list[object]:
        """The outcomes other than 200 of calls done before *before*."""
        return [o for _, done, o in self.log if done < before and o != 200]

    def between(self, start: float, end: float) -> int:
        return sum(start <= sent <= end for sent, _, _ in self.log)


async def sleep_until(moment: float) -> None:
    await anyio.sleep(max(0.0, moment - time.monotonic()))


def renewal_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "payme_auth" and r.levelno == level and "renewal failed" in r.getMessage()
    ]


def start_outage(emulator: PaymeEmulator, how: str) -> None:
    if how == "failure-rate":
        emulator.token_failure_rate = 1.0
    elif how == "injected-503":
        emulator.inject(Fault(status=503), times=1000)
    else:
        emulator.remove_client(CLIENT_ID)


def end_outage(emulator: PaymeEmulator) -> None:
    emulator.token_failure_rate = 0.0
    emulator.clear_faults()
    emulator.add_client(CLIENT_ID, CLIENT_SECRET)


@pytest.mark.parametrize(
    ("how", "level"),
    [
        ("failure-rate", logging.WARNING),
        ("injected-503", logging.WARNING),
        ("credentials-refused", logging.ERROR),
    ],
)
async def test_outage_in_the_advisory_window_is_ridden_out(
    live: EmulatorServer, caplog: pytest.LogCaptureFixture, how: str, level: int
) -> None:
    """An endpoint failing from the advisory window on: zero failed calls, paced tries, renewal."""
    # A 3 s token with a 0.25 s margin: its advisory window runs from 1.83 s to 2.75 s.
    margin = 0.25
    live.emulator.token_lifetime = 3
    calls = Calls()
    async with (
        guarded(live),
        make_auth(live, refresh_margin=margin) as auth,
        api_client(live, auth) as api,
        anyio.create_task_group() as tg,
    ):
        first = await auth.get_token()
        life = Life.of(first, margin)
        start_outage(live.emulator, how)
        tg.start_soon(calls.stream, api)
        await eventually(lambda: auth.stats().failed_renewals >= 1, "a failed renewal", 4)
        assert time.monotonic() >= life.advisory_at
        await sleep_until(life.advisory_at + 0.4)
        outage = time.monotonic() - life.advisory_at
        tries = token_requests(live) - 1
        failing = auth.stats()
        end_outage(live.emulator)
        await eventually(lambda: auth.stats().background_renewals >= 1, "the renewal", 3)
        renewed_at = time.monotonic()
        calls.stop.set()
        stats = auth.stats()
    assert renewed_at < life.expires_at
    assert stats.token_fingerprint != first.fingerprint
    assert calls.failed(before=math.inf) == []
    assert calls.between(life.advisory_at, life.advisory_at + outage) >= 5
    assert failing.state == "renewing"
    assert 1 <= tries <= life.max_tries(outage), f"{tries} tries in {outage:.2f} s"
    assert stats.failed_renewals >= 1
    assert stats.failed_fetches == 0
    # Past the first token: each failed renewal made one request (a refusal) or up to the
    # policy's attempts, and so may the renewal that succeeded.
    assert 2 + stats.failed_renewals <= token_requests(live)
    assert token_requests(live) <= 1 + QUICK_RETRY.attempts * (stats.failed_renewals + 1)
    assert renewal_logs(caplog, level)
    other = logging.ERROR if level == logging.WARNING else logging.WARNING
    assert not renewal_logs(caplog, other)
    assert_no_token_logged(caplog, live)


async def test_outage_into_the_refresh_margin_keeps_the_valid_token(
    live: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With default settings, an outage into the refresh margin fails no call while valid."""
    live.emulator.token_lifetime = 3
    calls = Calls()
    async with (
        guarded(live),
        make_auth(live) as auth,
        api_client(live, auth) as api,
        anyio.create_task_group() as tg,
    ):
        first = await auth.get_token()
        life = Life.of(first, 60.0)
        live.emulator.token_failure_rate = 1.0
        tg.start_soon(calls.stream, api)
        await sleep_until(life.mandatory_at + 0.5)
        outage = time.monotonic() - life.advisory_at
        tries = token_requests(live) - 1
        live.emulator.token_failure_rate = 0.0
        await eventually(lambda: auth.stats().renewals >= 1, "the renewal", 2)
        calls.stop.set()
        stats = auth.stats()
    assert stats.token_fingerprint != first.fingerprint
    assert calls.failed(before=life.expires_at) == []
    assert 1 <= tries <= life.max_tries(outage), f"{tries} tries in {outage:.2f} s"
    assert renewal_logs(caplog, logging.WARNING)


async def test_renewal_bringing_no_newer_token_does_not_spin(
    live: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals that bring back shorter-lived tokens keep the better one and pause between tries."""
    live.emulator.token_lifetime = 3
    calls = Calls()
    async with (
        guarded(live),
        make_auth(live) as auth,
        api_client(live, auth) as api,
        anyio.create_task_group() as tg,
    ):
        first = await auth.get_token()
        life = Life.of(first, 60.0)
        # From now on every token lives 1 s: until 2 s into the first one's life, each
        # expires no later than it, so none is newer.
        live.emulator.token_lifetime = 1
        tg.start_soon(calls.stream, api)
        window_end = first.obtained_at + 1.85
        await sleep_until(window_end)
        window = window_end - life.advisory_at
        tries = token_requests(live) - 1
        calls.stop.set()
        stats = auth.stats()
    assert calls.failed(before=math.inf) == []
    assert stats.token_fingerprint == first.fingerprint
    assert calls.between(life.mandatory_at, window_end) >= 5  # also inside the refresh margin
    assert 2 <= tries <= life.max_tries(window), f"{tries} tries in {window:.2f} s"
    assert stats.failed_fetches == 0
    assert stats.renewals == 0
    assert any("no newer token" in r.getMessage() for r in caplog.records)
    assert_no_token_logged(caplog, live)


# -- a hostile endpoint on a raw socket: echoes, bombs, endless bodies -------------------------

HOSTILE_SECRET = 'acc-SECRET-contraseña-ü-"quote"-back\\slash-/+=&-91c2'
"""A secret whose every spelling differs: non-ASCII, quotes, a backslash, URL specials."""

HOSTILE_TOKEN = TOKEN_MARK + "hostile/+=value.sig"
SECRET_SPELLINGS = hostile.spellings(HOSTILE_SECRET, CLIENT_ID)
TOKEN_SPELLINGS = hostile.spellings(HOSTILE_TOKEN, CLIENT_ID)
TEXT = {"Content-Type": "text/plain; charset=utf-8"}
MEMORY_BOUND = 16 * ONE_MIB
"""What reading any one answer may allocate at its peak (the cap is 256 KiB)."""

QUICK_LIMIT = 10.0
"""An answer that is not retried ends well within this (in milliseconds, in fact)."""


def _as_json(payload: object) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


def _pay_me_status(code: str, message: str) -> dict[str, Any]:
    return {
        "meta": {"status": {"code": code, "message_ilgn": [{"locale": "es_PE", "value": message}]}}
    }


Body = Callable[[str], tuple[bytes, dict[str, str]]]
# Each way of failing: the status, the answer built from an echo, the error, the requests made.
ECHO_MODES: dict[str, tuple[int, Body, type[PaymeAuthError], int]] = {
    "500 message": (500, lambda t: _as_json({"message": t}), TokenEndpointUnavailableError, 3),
    "503 text": (503, lambda t: (t.encode(), TEXT), TokenEndpointUnavailableError, 3),
    "400 message": (400, lambda t: _as_json({"message": t}), TokenRefusedError, 1),
    "401 description": (
        401,
        lambda t: _as_json({"error": "invalid_client", "error_description": t}),
        InvalidCredentialsError,
        1,
    ),
    "403 error": (403, lambda t: _as_json({"error": t}), InsufficientScopeError, 1),
    "302 location": (
        302,
        lambda t: (b"", {"Location": f"http://127.0.0.1:9/next?{t}"}),
        TokenResponseError,
        1,
    ),
    "200 success false": (
        200,
        lambda t: _as_json({"success": False, "authorization": _pay_me_status("01", t)}),
        TokenResponseError,
        1,
    ),
    "200 text": (200, lambda t: (t.encode(), TEXT), TokenResponseError, 1),
    "200 bad token_type": (
        200,
        lambda t: _as_json(token_answer(access_token=HOSTILE_TOKEN, token_type=t)),
        TokenResponseError,
        1,
    ),
    "200 bad status code": (
        200,
        lambda t: _as_json(
            token_answer(access_token=HOSTILE_TOKEN, authorization=_pay_me_status(t, t))
        ),
        TokenResponseError,
        1,
    ),
}


def _echo_cases() -> Iterator[Any]:
    for mode in ECHO_MODES:
        for echo in ("as sent", "unicode", "form"):
            yield pytest.param(mode, echo, id=f"{mode}-{echo}")
    for mode in ("401 description", "200 success false"):
        for echo in [e for e in hostile.ECHOES if e not in {"as sent", "unicode", "form"}]:
            yield pytest.param(mode, echo, id=f"{mode}-{echo}")


@attrs.frozen(kw_only=True)
class Outcome:
    """What one token request against a hostile endpoint came to."""

    error: PaymeAuthError
    requests: int
    elapsed: float
    peak: int


async def against(
    handler: hostile.Handler, *, secret: str = HOSTILE_SECRET, **kwargs: Any
) -> Outcome:
    """Ask *handler* for a token once, on a PaymeAuth of its own; it must fail."""
    kwargs.setdefault("retry", QUICK_RETRY)
    with anyio.fail_after(SCENARIO_LIMIT):
        async with hostile.hostile_server(handler) as server:
            auth = PaymeAuth(CLIENT_ID, secret, environment=server.environment, **kwargs)
            tracemalloc.start()
            started = time.monotonic()
            try:
                with pytest.raises(PaymeAuthError) as caught:
                    await auth.get_token()
            finally:
                elapsed = time.monotonic() - started
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                await auth.aclose()
    return Outcome(error=caught.value, requests=server.requests, elapsed=elapsed, peak=peak)


def assert_nothing_shown(outcome: Outcome, caplog: pytest.LogCaptureFixture) -> None:
    """No spelling of the secret or the token in any str, repr, traceback, local or log record."""
    texts = hostile.texts_of(outcome.error, caplog.records)
    hostile.assert_never_shown(SECRET_SPELLINGS | TOKEN_SPELLINGS, texts)


@pytest.mark.parametrize(("mode", "echo"), list(_echo_cases()))
async def test_an_echoed_secret_shows_in_no_spelling(
    mode: str, echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint echoing the request, however encoded, leaks the secret nowhere.

    Not in the error's str or repr, its formatted traceback, the locals of payme_auth's
    frames in that traceback (what an error tracker records), nor any log record.
    """
    status, body, kind, requests = ECHO_MODES[mode]
    encode = hostile.ECHOES[echo]
    handler = hostile.echoing(status, lambda request: body(encode(request.body, CLIENT_ID)))
    outcome = await against(handler)
    assert type(outcome.error) is kind
    assert outcome.requests == requests
    assert outcome.elapsed < QUICK_LIMIT
    assert outcome.peak < MEMORY_BOUND
    assert_nothing_shown(outcome, caplog)
    assert any("could not get a token" in r.getMessage() for r in caplog.records)


TOKEN_ECHOES: dict[str, Callable[[str], str]] = {
    "as it is": lambda token: token,
    "json": lambda token: json.dumps(token)[1:-1].replace("/", "\\/"),
    "percent": lambda token: urllib.parse.quote(token, safe=""),
    "form": urllib.parse.quote_plus,
    "base64": lambda token: base64.b64encode(token.encode()).decode(),
}


@pytest.mark.parametrize("echo", list(TOKEN_ECHOES))
@pytest.mark.parametrize("field", ["message", "token_type"])
async def test_a_rejected_answer_shows_its_token_in_no_spelling(
    field: str, echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 answer refused for a bad field shows its own token nowhere, however spelled."""
    text = f"issued {TOKEN_ECHOES[echo](HOSTILE_TOKEN)}"
    if field == "message":
        payload = token_answer(
            access_token=HOSTILE_TOKEN, success=False, authorization=_pay_me_status("01", text)
        )
    else:
        payload = token_answer(access_token=HOSTILE_TOKEN, token_type=text)
    outcome = await against(hostile.answer(200, payload))
    assert type(outcome.error) is TokenResponseError
    assert outcome.requests == 1
    assert_nothing_shown(outcome, caplog)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compression_bomb_is_inflated_no_further_than_the_cap(
    encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    """250 MB packed into 250 KB: read up to the cap only, a TokenResponseError, not retried."""
    bomb = hostile.bomb(encoding)
    assert len(bomb) < 300_000
    outcome = await against(hostile.compressed(200, encoding, bomb))
    assert type(outcome.error) is TokenResponseError
    assert "larger than 262144 bytes" in str(outcome.error)
    assert outcome.requests == 1
    assert outcome.peak < MEMORY_BOUND, f"{outcome.peak / ONE_MIB:.1f} MiB at the peak"
    assert outcome.elapsed < QUICK_LIMIT
    assert_nothing_shown(outcome, caplog)


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br", "compress"])
async def test_an_answer_in_an_unbounded_encoding_is_not_read(
    encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    """br, zstd and the like (not asked for) are refused unread: a TokenResponseError at once."""
    outcome = await against(hostile.compressed(200, encoding, hostile.bomb("gzip")))
    assert type(outcome.error) is TokenResponseError
    assert "could not be read" in str(outcome.error)
    assert encoding in str(outcome.error)
    assert outcome.requests == 1
    assert outcome.peak < MEMORY_BOUND
    assert_nothing_shown(outcome, caplog)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
async def test_a_small_compressed_token_answer_is_accepted(encoding: str) -> None:
    """A server that compresses despite ``identity`` still gives a usable token."""
    body = json.dumps(token_answer(access_token=HOSTILE_TOKEN)).encode()
    if encoding != "identity":
        packer = zlib.compressobj(6, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        body = packer.compress(body) + packer.flush()
    with anyio.fail_after(SCENARIO_LIMIT):
        async with (
            hostile.hostile_server(hostile.compressed(200, encoding, body)) as server,
            PaymeAuth(CLIENT_ID, HOSTILE_SECRET, environment=server.environment) as auth,
        ):
            token = await auth.get_token()
    assert token.value == HOSTILE_TOKEN
    assert server.requests == 1


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(hostile.endless(), id="chunked"),
        pytest.param(hostile.endless(chunked=False), id="until-close"),
        pytest.param(hostile.endless(encoding="gzip"), id="gzip-label"),
    ],
)
async def test_an_endless_answer_stops_at_the_cap_at_once(
    handler: hostile.Handler, caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 body that never ends is read to the cap and no further: a TokenResponseError,
    one request, long before the attempt's deadline (30 s here)."""
    outcome = await against(handler, timeout=30.0)
    assert type(outcome.error) is TokenResponseError
    assert outcome.requests == 1
    assert outcome.elapsed < QUICK_LIMIT
    assert outcome.peak < MEMORY_BOUND
    assert_nothing_shown(outcome, caplog)


async def test_an_endless_503_is_retried_as_a_503(caplog: pytest.LogCaptureFixture) -> None:
    """An endless error answer is classified by its status, without waiting for its end."""
    outcome = await against(hostile.endless(503), timeout=30.0)
    assert type(outcome.error) is TokenEndpointUnavailableError
    assert outcome.error.status_code == 503
    assert outcome.requests == ATTEMPTS
    assert outcome.elapsed < QUICK_LIMIT
    assert_nothing_shown(outcome, caplog)


# -- proxies from the environment --------------------------------------------------------------

socksio_installed = importlib.util.find_spec("socksio") is not None


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        pytest.param(
            "ALL_PROXY",
            "socks5://user:pw-SECRET@127.0.0.1:1080",
            "socksio",
            marks=pytest.mark.skipif(socksio_installed, reason="socksio is installed"),
            id="socks-without-socksio",
        ),
        pytest.param(
            "HTTPS_PROXY", "ftp://user:pw-SECRET@127.0.0.1:21", "'ftp'", id="unknown-scheme"
        ),
        pytest.param("http_proxy", "gopher://127.0.0.1:70", "'gopher'", id="lower-case"),
    ],
)
async def test_an_unusable_proxy_variable_is_a_configuration_error(
    name: str, value: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy variable httpx cannot use is a ConfigurationError naming it, even under NO_PROXY;
    nothing is sent, nothing retried, and the proxy's password is not shown."""
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    outcome = await against(hostile.answer(200, token_answer()))
    assert type(outcome.error) is ConfigurationError
    assert name in str(outcome.error)
    assert said in str(outcome.error)
    assert "pw-SECRET" not in "".join(hostile.texts_of(outcome.error, []))
    assert outcome.requests == 0


async def test_check_reports_an_unusable_proxy_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``payme-auth check`` names the unusable proxy variable as a problem and sends nothing."""
    monkeypatch.setenv("HTTPS_PROXY", "ftp://user:pw-SECRET@127.0.0.1:21")
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=token_answer())

    settings = Settings(
        client_id=CLIENT_ID,
        client_secret=HOSTILE_SECRET,
        environment=Environment.PREPROD,
        scopes=("create:token",),
    )
    findings = await run_check(settings, transport=httpx.MockTransport(record))
    assert [finding.is_problem for finding in findings] == [True]
    assert "HTTPS_PROXY" in findings[0].line()
    assert "pw-SECRET" not in findings[0].line()
    assert exit_code_of(findings) != 0
    assert sent == []
