"""The Pay-me emulator: its token endpoint, its API, its knobs, and serving it on a socket."""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import socket
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import attrs
import httpx
import pytest
import uvicorn

import payme_auth.testing
from payme_auth import Environment, PaymeAuth, RetryPolicy
from payme_auth.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    MAX_BODY_SIZE,
    EmulatorServer,
    EmulatorStats,
    Fault,
    PaymeEmulator,
    run_emulator,
)

from .conftest import FakeClock

pytestmark = pytest.mark.anyio

BASE_URL = "http://127.0.0.1:8000"
AUDIENCE = BASE_URL + "/"
VERSION = "1709847567"
ALL_SCOPES = "create:token post:charges get:charges delete:charges"
WRONG_SECRET = "WRONG-secret-9f8e7d"
API_HEADERS = {"ALG-API-VERSION": VERSION}


def token_body(**overrides: Any) -> dict[str, Any]:
    """A valid token request body; keyword arguments replace fields."""
    body: dict[str, Any] = {
        "action": "authorize",
        "grant_type": "client_credentials",
        "audience": AUDIENCE,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "scope": ALL_SCOPES,
    }
    body.update(overrides)
    return body


async def post_token(
    client: httpx.AsyncClient,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """POST /token with the documented headers (or *headers*) and *body* as JSON."""
    sent = {"Content-Type": "application/json", **API_HEADERS} if headers is None else headers
    if content is None:
        content = json.dumps(token_body() if body is None else body).encode()
    return await client.post("/token", content=content, headers=sent)


async def get_token(client: httpx.AsyncClient, scope: str = ALL_SCOPES) -> str:
    """Get a token for *scope* and return its value."""
    response = await post_token(client, token_body(scope=scope))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def seeded(seed: int) -> random.Random:
    """A repeatable random generator, for the emulator's rng (never for secrets)."""
    return random.Random(seed)  # noqa: S311


def bearer(token: str) -> dict[str, str]:
    """API headers carrying *token*."""
    return {**API_HEADERS, "Authorization": f"Bearer {token}"}


def assert_refused(response: httpx.Response, status: int) -> None:
    """Check a token refusal: *status*, Pay-me's envelope, code 01, and no secret echoed."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["action"] == "authorize"
    assert body["success"] is False
    status_block = body["authorization"]["meta"]["status"]
    assert status_block["code"] == "01"
    [message] = status_block["message_ilgn"]
    assert message["locale"] == "es_PE"
    assert message["value"]
    assert WRONG_SECRET not in response.text
    assert DEFAULT_CLIENT_SECRET not in response.text


@pytest.fixture
def emulator(clock: FakeClock) -> PaymeEmulator:
    """An emulator with default settings on a fake clock."""
    return PaymeEmulator(clock=clock)


@pytest.fixture
async def client(emulator: PaymeEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling the emulator in-process."""
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


async def call_app(
    app: PaymeEmulator, scope: dict[str, Any], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run *app* on a raw ASGI *scope*, feeding it *messages*; return what it sent."""
    incoming = iter(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A minimal ASGI HTTP scope."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
    }


# The token endpoint: success.


async def test_token_has_the_documented_shape(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """A valid request gets exactly the documented 200 answer, not cacheable."""
    response = await post_token(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "action",
        "success",
        "access_token",
        "scope",
        "expires_in",
        "token_type",
        "authorization",
    }
    assert body["action"] == "authorize"
    assert body["success"] is True
    assert isinstance(body["access_token"], str)
    assert len(body["access_token"]) >= 40
    assert body["scope"] == ALL_SCOPES
    assert body["expires_in"] == 8600
    assert body["token_type"] == "Bearer"
    assert body["authorization"] == {
        "meta": {
            "status": {
                "code": "00",
                "message_ilgn": [{"locale": "es_PE", "value": "Access Token creado"}],
            }
        }
    }
    assert emulator.stats == EmulatorStats(token_requests=1, tokens_issued=1)


async def test_token_grants_the_requested_scopes(client: httpx.AsyncClient) -> None:
    """The granted scope is the requested one, in order, duplicates and extra spaces dropped."""
    response = await post_token(client, token_body(scope="get:charges  create:token get:charges"))
    assert response.json()["scope"] == "get:charges create:token"


async def test_tokens_are_fresh_each_time(client: httpx.AsyncClient) -> None:
    """Every request gets a new opaque token."""
    tokens = {await get_token(client) for _ in range(5)}
    assert len(tokens) == 5


async def test_token_lifetime_is_a_knob(client: httpx.AsyncClient, emulator: PaymeEmulator) -> None:
    """Changing token_lifetime changes the expires_in of the next token."""
    emulator.token_lifetime = 5
    response = await post_token(client)
    assert response.json()["expires_in"] == 5


async def test_content_type_parameters_are_accepted(client: httpx.AsyncClient) -> None:
    """``application/json; charset=utf-8`` is JSON too."""
    headers = {"Content-Type": "Application/JSON; charset=utf-8", **API_HEADERS}
    response = await post_token(client, headers=headers)
    assert response.status_code == 200


async def test_audience_follows_the_host(emulator: PaymeEmulator) -> None:
    """With no audience set, the audience expected is the request's own origin plus "/"."""
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://LocalHost:9999") as other:
        good = await post_token(other, token_body(audience="http://localhost:9999/"))
        bad = await post_token(other, token_body(audience=AUDIENCE))
    assert good.status_code == 200
    assert_refused(bad, 400)


async def test_configured_audience_is_required_exactly(clock: FakeClock) -> None:
    """A configured audience must be sent exactly, whatever the request's host."""
    emulator = PaymeEmulator(audience="https://api.preprod.alignet.io/", clock=clock)
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        good = await post_token(client, token_body(audience="https://api.preprod.alignet.io/"))
        bad = await post_token(client, token_body(audience="https://api.preprod.alignet.io"))
    assert good.status_code == 200
    assert_refused(bad, 400)


async def test_chunked_body_is_assembled(client: httpx.AsyncClient) -> None:
    """A body that arrives in several ASGI messages is read whole."""
    raw = json.dumps(token_body()).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 16):
            yield raw[start : start + 16]

    headers = {"Content-Type": "application/json", **API_HEADERS}
    response = await client.post("/token", content=chunks(), headers=headers)
    assert response.status_code == 200


async def test_body_size_limit(client: httpx.AsyncClient, emulator: PaymeEmulator) -> None:
    """A body of exactly MAX_BODY_SIZE bytes is read; one byte more gets 413."""
    raw = json.dumps(token_body()).encode()
    exact = raw + b" " * (MAX_BODY_SIZE - len(raw))
    assert (await post_token(client, content=exact)).status_code == 200
    response = await post_token(client, content=exact + b" ")
    assert response.status_code == 413
    assert response.json() == {"message": "Request Entity Too Large"}
    assert emulator.stats.token_failures == 1


# The token endpoint: refusals.


async def test_other_methods_on_token_get_405(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """GET /token is 405 with ``Allow: POST`` and is not counted as a token request."""
    response = await client.get("/token")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {"message": "Method Not Allowed"}
    assert emulator.stats.token_requests == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"ALG-API-VERSION": VERSION},
        {"Content-Type": "text/plain", "ALG-API-VERSION": VERSION},
        {"Content-Type": "application/x-www-form-urlencoded", "ALG-API-VERSION": VERSION},
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "ALG-API-VERSION": "1618440906"},
    ],
    ids=["no-content-type", "text", "form", "no-version", "legacy-version"],
)
async def test_bad_headers_get_400(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """A Content-Type other than JSON, or a missing or other ALG-API-VERSION, is 400."""
    assert_refused(await post_token(client, headers=headers), 400)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"\xff\xfe{", b"[]", b'"authorize"', b"null"],
    ids=["empty", "text", "not-utf8", "array", "string", "null"],
)
async def test_body_that_is_not_a_json_object_gets_400(
    client: httpx.AsyncClient, content: bytes
) -> None:
    """A body that is not a JSON object is 400."""
    assert_refused(await post_token(client, content=content), 400)


@pytest.mark.parametrize("field", sorted(token_body()))
async def test_missing_field_gets_400(client: httpx.AsyncClient, field: str) -> None:
    """Each of the six fields is required."""
    body = token_body()
    del body[field]
    assert_refused(await post_token(client, body), 400)


@pytest.mark.parametrize("extra", ["username", "refresh_token", "password"])
async def test_extra_field_gets_400(client: httpx.AsyncClient, extra: str) -> None:
    """No field beyond the six is accepted (``additionalProperties: false``)."""
    assert_refused(await post_token(client, token_body(**{extra: "x"})), 400)


@pytest.mark.parametrize("field", sorted(token_body()))
@pytest.mark.parametrize("value", [None, 1, ["create:token"], True])
async def test_non_string_field_gets_400(
    client: httpx.AsyncClient, field: str, value: object
) -> None:
    """Every field must be a string."""
    assert_refused(await post_token(client, token_body(**{field: value})), 400)


@pytest.mark.parametrize(
    "overrides",
    [
        {"action": "authorise"},
        {"action": "create.nonce"},
        {"grant_type": "password"},
        {"grant_type": "refresh_token"},
        {"audience": "http://127.0.0.1:8000"},
        {"audience": "https://api.alignet.io/"},
        {"scope": "post:charges get:charges"},
        {"scope": ""},
        {"scope": "create:tokens"},
    ],
)
async def test_bad_values_get_400(client: httpx.AsyncClient, overrides: dict[str, str]) -> None:
    """Wrong action, grant_type or audience, or a scope without create:token, is 400."""
    assert_refused(await post_token(client, token_body(**overrides)), 400)


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "nobody"},
        {"client_secret": WRONG_SECRET},
        {"client_secret": DEFAULT_CLIENT_SECRET + "x"},
        {"client_secret": ""},
        {"client_secret": "sécret"},
        {"client_id": "nobody", "client_secret": WRONG_SECRET},
    ],
)
async def test_bad_credentials_get_401(
    client: httpx.AsyncClient, emulator: PaymeEmulator, overrides: dict[str, str]
) -> None:
    """An unknown client or a wrong secret is 401, and the secret is not echoed."""
    assert_refused(await post_token(client, token_body(**overrides)), 401)
    assert emulator.stats == EmulatorStats(token_requests=1, token_failures=1)


async def test_scope_not_allowed_gets_401(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """A scope the client may not have is 401 (not 403), as Pay-me documents."""
    emulator.add_client("reader", "reader-secret", scopes=("get:charges",))
    reader = token_body(client_id="reader", client_secret="reader-secret")
    assert (await post_token(client, {**reader, "scope": "create:token get:charges"})).is_success
    assert_refused(await post_token(client, {**reader, "scope": ALL_SCOPES}), 401)
    assert_refused(await post_token(client, token_body(scope="create:token admin")), 401)


# Clients and settings.


async def test_clients_can_be_added_replaced_and_removed(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """add_client accepts more clients or a new secret; remove_client forgets one."""
    emulator.add_client("other-id", "other-secret", scopes="post:charges")
    other = token_body(client_id="other-id", client_secret="other-secret")
    response = await post_token(client, {**other, "scope": "create:token post:charges"})
    assert response.status_code == 200
    emulator.add_client("other-id", "rotated-secret")
    assert_refused(await post_token(client, {**other, "scope": "create:token"}), 401)
    rotated = {**other, "client_secret": "rotated-secret"}
    assert (await post_token(client, rotated)).status_code == 200
    emulator.remove_client("other-id")
    emulator.remove_client("never-known")
    assert_refused(await post_token(client, rotated), 401)


def test_constructor_scopes_may_be_a_string() -> None:
    """Scopes given as one string are split on spaces; create:token is always allowed."""
    emulator = PaymeEmulator(scopes="get:charges")
    assert emulator.scopes == ("get:charges",)


@pytest.mark.parametrize(
    ("client_id", "secret", "scopes"),
    [("", "s", ()), ("id", "", ()), ("id", "s", ("",)), ("id", "s", (1,))],
)
def test_add_client_checks_its_arguments(client_id: str, secret: str, scopes: Any) -> None:
    """Client ids, secrets and scopes are non-empty strings."""
    with pytest.raises(ValueError, match="non-empty strings"):
        PaymeEmulator().add_client(client_id, secret, scopes=scopes)


def test_first_client_cannot_be_changed_afterwards() -> None:
    """client_id, client_secret and scopes are set once; use add_client for more."""
    emulator = PaymeEmulator()
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        emulator.client_secret = "new"


def test_repr_hides_the_secret() -> None:
    """The client secret is not in the emulator's repr."""
    emulator = PaymeEmulator(client_secret="hidden-secret-value")
    emulator.add_client("x", "another-hidden-secret")
    assert "hidden-secret-value" not in repr(emulator)
    assert "another-hidden-secret" not in repr(emulator)
    assert DEFAULT_CLIENT_ID in repr(emulator)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("token_lifetime", -1),
        ("token_lifetime", 1.5),
        ("token_lifetime", True),
        ("token_latency", -0.1),
        ("token_latency", math.nan),
        ("token_latency", math.inf),
        ("api_latency", "1"),
        ("token_failure_rate", -0.1),
        ("token_failure_rate", 1.01),
        ("token_failure_rate", math.nan),
        ("token_failure_rate", True),
        ("token_failure_rate", "0.5"),
    ],
)
def test_knobs_are_checked_when_set(knob: str, value: Any) -> None:
    """Invalid knob values are refused, at construction and when set later."""
    with pytest.raises(ValueError, match=knob):
        PaymeEmulator(**{knob: value})
    emulator = PaymeEmulator()
    with pytest.raises(ValueError, match=knob):
        setattr(emulator, knob, value)


# Faults and latency.


async def test_faults_are_served_in_order_then_tokens(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """Injected faults answer the next token requests, in FIFO order, then tokens resume."""
    emulator.inject(Fault(status=503, headers={"Retry-After": "1"}), times=2)
    emulator.inject(Fault(status=429, body=b"slow down", headers={"Content-Type": "text/plain"}))
    first, second, third, fourth = [await post_token(client) for _ in range(4)]
    for response in (first, second):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"message": "Service Unavailable"}
    assert third.status_code == 429
    assert third.headers["content-type"] == "text/plain"
    assert third.content == b"slow down"
    assert fourth.status_code == 200
    assert emulator.stats == EmulatorStats(token_requests=4, tokens_issued=1, token_failures=3)


async def test_fault_takes_precedence_over_validation(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """An injected fault answers even a request that would be refused or too large."""
    emulator.inject(Fault(status=500), times=2)
    assert (await post_token(client, headers={})).status_code == 500
    assert (await post_token(client, content=b" " * (MAX_BODY_SIZE + 1))).status_code == 500
    assert emulator.stats.token_requests == 2


async def test_fault_with_status_200_and_a_broken_body(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """A 200 fault sends its body as is, and our Content-Length, not a given one."""
    emulator.inject(Fault(status=200, body=b'{"success": true}', headers={"Content-Length": "1"}))
    response = await post_token(client)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert emulator.stats.tokens_issued == 0


def test_fault_defaults_and_checks() -> None:
    """Fault defaults to a 503 JSON answer; it is a hashable value; bad values are refused."""
    fault = Fault()
    assert (fault.status, fault.delay) == (503, 0.0)
    assert json.loads(fault.body) == {"message": "Service Unavailable"}
    assert fault.headers == {"content-type": "application/json"}
    assert fault == Fault()
    assert hash(fault) == hash(Fault())
    assert json.loads(Fault(status=299).body) == {"message": "Error"}
    for bad in ({"status": 600}, {"status": 199}, {"status": True}, {"delay": -1.0}):
        with pytest.raises(ValueError, match="must be"):
            Fault(**bad)
    with pytest.raises(UnicodeEncodeError):
        Fault(headers={"X-Note": "\u2603"})


def test_inject_checks_times_and_clear_faults_drops_them() -> None:
    """times is an int >= 1; clear_faults drops the pending faults and counts them."""
    emulator = PaymeEmulator()
    for times in (0, -1, True):
        with pytest.raises(ValueError, match="times"):
            emulator.inject(Fault(), times=times)
    emulator.inject(Fault(), times=3)
    assert emulator.clear_faults() == 3
    assert emulator.clear_faults() == 0


async def test_fault_delay_and_token_latency_are_waited(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """token_latency delays every token answer; a fault's delay comes on top of it."""
    emulator.token_latency = 0.02
    emulator.inject(Fault(delay=0.03))
    start = time.monotonic()
    assert (await post_token(client)).status_code == 503
    assert time.monotonic() - start >= 0.045
    start = time.monotonic()
    assert (await post_token(client)).status_code == 200
    assert time.monotonic() - start >= 0.015


async def test_latency_can_be_cancelled(client: httpx.AsyncClient, emulator: PaymeEmulator) -> None:
    """The emulator waits with the running loop's sleep, so a client timeout cuts it short."""
    emulator.token_latency = 10.0
    start = time.monotonic()
    with anyio.move_on_after(0.05) as scope:
        await post_token(client)
    assert scope.cancelled_caught
    assert time.monotonic() - start < 5


def test_failure_rate_accepts_zero_to_one() -> None:
    """token_failure_rate takes any int or float from 0 to 1, both ends included."""
    emulator = PaymeEmulator()
    assert emulator.token_failure_rate == 0.0
    for rate in (0, 1, 1.0, 0.25):
        emulator.token_failure_rate = rate
        assert emulator.token_failure_rate == rate


def assert_random_failure(response: httpx.Response) -> None:
    """Check the answer to a token request failed by token_failure_rate."""
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": "Service Unavailable"}


async def test_failure_rate_is_drawn_from_rng(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """Each token request fails when rng draws below token_failure_rate: seeded, repeatable."""
    emulator.rng = seeded(1234)
    emulator.token_failure_rate = 0.5
    replay = seeded(1234)
    expected = [replay.random() < 0.5 for _ in range(40)]
    assert 5 < sum(expected) < 35
    responses = [await post_token(client) for _ in range(40)]
    assert [r.status_code == 503 for r in responses] == expected
    for response, failed in zip(responses, expected, strict=True):
        if failed:
            assert_random_failure(response)
        else:
            assert response.status_code == 200
    assert emulator.stats == EmulatorStats(
        token_requests=40, tokens_issued=40 - sum(expected), token_failures=sum(expected)
    )


async def test_failure_rate_zero_and_one(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """At 1 every token request fails, even one that would be refused; at 0 none does."""
    emulator.rng = seeded(7)
    emulator.token_failure_rate = 1
    assert_random_failure(await post_token(client))
    assert_random_failure(await post_token(client, headers={}))
    emulator.token_failure_rate = 0
    state = emulator.rng.getstate()
    assert all([(await post_token(client)).status_code == 200 for _ in range(5)])
    assert emulator.rng.getstate() == state, "no draw at rate 0"
    assert emulator.stats.token_failures == 2


async def test_injected_faults_come_before_random_failures(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """A request answered by an injected fault draws nothing from rng."""
    emulator.rng = seeded(99)
    emulator.token_failure_rate = 0.5
    emulator.inject(Fault(status=429), times=2)
    statuses = [(await post_token(client)).status_code for _ in range(12)]
    replay = seeded(99)
    assert statuses == [429, 429] + [503 if replay.random() < 0.5 else 200 for _ in range(10)]


async def test_api_ignores_the_failure_rate(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """token_failure_rate applies to POST /token only."""
    token = await get_token(client)
    emulator.token_failure_rate = 1.0
    assert (await client.get("/charges/a/b/c", headers=bearer(token))).status_code == 200


async def test_reset_fault_sends_half_an_answer() -> None:
    """A reset fault declares its whole body, sends the first half and never completes."""
    emulator = PaymeEmulator()
    fault = Fault(status=502, body=b"0123456789", headers={"Retry-After": "3"}, reset=True)
    emulator.inject(fault)
    emulator.inject(Fault(body=b"x", reset=True))
    headers = [(b"content-type", b"application/json")]
    request = {"type": "http.request", "body": b"{}"}
    start, body = await call_app(emulator, http_scope("POST", "/token", headers), [request])
    assert start["status"] == 502
    assert (b"retry-after", b"3") in start["headers"]
    assert (b"content-length", b"10") in start["headers"]
    assert body == {"type": "http.response.body", "body": b"01234", "more_body": True}
    start, body = await call_app(emulator, http_scope("POST", "/token", headers), [request])
    assert (b"content-length", b"1") in start["headers"]
    assert body == {"type": "http.response.body", "body": b"", "more_body": True}
    assert emulator.stats == EmulatorStats(token_requests=2, token_failures=2)


async def test_reset_fault_in_process_raises_assertion_error(
    client: httpx.AsyncClient, emulator: PaymeEmulator
) -> None:
    """Through httpx.ASGITransport a reset fault surfaces as its AssertionError (httpx 0.28).

    ASGITransport checks that the app completed its answer with an ``assert``; it has no
    transport error to raise. Use a served emulator to see a real httpx.TransportError.
    """
    emulator.inject(Fault(reset=True))
    with pytest.raises(AssertionError):
        await post_token(client)
    assert (await post_token(client)).status_code == 200
    assert emulator.stats.token_failures == 1


def test_reset_fault_checks() -> None:
    """reset is a bool, and needs a body to cut short under a status that has one."""
    assert Fault().reset is False
    assert Fault(reset=True).reset is True
    assert Fault(reset=True) != Fault()
    for bad in (
        {"reset": 1},
        {"reset": True, "body": b""},
        {"reset": True, "status": 204},
        {"reset": True, "status": 304},
    ):
        with pytest.raises(ValueError, match="reset"):
            Fault(**bad)


# The API.


async def test_post_charges_echoes_the_operation_number(client: httpx.AsyncClient) -> None:
    """POST /charges with a valid token answers a Pay-me-like success with the order's ids."""
    token = await get_token(client)
    order = {"merchant_code": "M1", "merchant_operation_number": "000123", "amount": "10.00"}
    response = await client.post("/charges", json=order, headers=bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert body["action"] == "authorize"
    assert body["success"] is True
    transaction = body["transaction"]
    assert transaction["merchant_code"] == "M1"
    assert transaction["merchant_operation_number"] == "000123"
    assert transaction["transaction_id"]
    assert transaction["meta"]["status"]["code"] == "00"


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b""])
async def test_post_charges_tolerates_any_body(client: httpx.AsyncClient, content: bytes) -> None:
    """A body that is not a JSON object still gets a success, without echoed ids."""
    token = await get_token(client)
    response = await client.post("/charges", content=content, headers=bearer(token))
    assert response.status_code == 200
    assert "merchant_operation_number" not in response.json()["transaction"]


async def test_get_and_delete_charges(client: httpx.AsyncClient) -> None:
    """GET and DELETE on a charge answer small success bodies naming the charge."""
    token = await get_token(client)
    query = await client.get("/charges/M1/000123/tx-9", headers=bearer(token))
    assert query.status_code == 200
    assert query.json()["action"] == "query"
    [found] = query.json()["transactions"]
    assert (found["merchant_code"], found["merchant_operation_number"]) == ("M1", "000123")
    assert found["transaction_id"] == "tx-9"
    assert found["meta"]["status"]["code"] == "00"
    reverse = await client.delete("/charges/M1/000123", headers=bearer(token))
    assert reverse.status_code == 200
    assert reverse.json()["action"] == "reverse"
    assert reverse.json()["transaction"]["merchant_operation_number"] == "000123"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer not-a-token", "Basic ZGVtbzpkZW1v", "Token {token}"],
)
async def test_api_without_a_valid_bearer_token_gets_401(
    client: httpx.AsyncClient, emulator: PaymeEmulator, authorization: str | None
) -> None:
    """A missing, malformed or unknown token is 401 with a Bearer challenge."""
    token = await get_token(client)
    headers = dict(API_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=token)
    response = await client.post("/charges", json={}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert emulator.stats.api_unauthorized == 1


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    """``bearer <token>`` is accepted as well as ``Bearer <token>``."""
    token = await get_token(client)
    headers = {**API_HEADERS, "Authorization": f"bearer {token}"}
    assert (await client.post("/charges", json={}, headers=headers)).status_code == 200


async def test_tokens_expire(
    client: httpx.AsyncClient, emulator: PaymeEmulator, clock: FakeClock
) -> None:
    """A token works until expires_in seconds have passed on the emulator's clock."""
    emulator.token_lifetime = 60
    token = await get_token(client)
    clock.advance(59.9)
    assert (await client.post("/charges", json={}, headers=bearer(token))).status_code == 200
    clock.advance(0.1)
    assert (await client.post("/charges", json={}, headers=bearer(token))).status_code == 401
    fresh = await get_token(client)
    assert (await client.post("/charges", json={}, headers=bearer(fresh))).status_code == 200


async def test_revoked_tokens_get_401(
    client: httpx.AsyncClient, emulator: PaymeEmulator, clock: FakeClock
) -> None:
    """revoke_tokens makes every token issued so far fail; later ones work."""
    emulator.token_lifetime = 10
    await get_token(client)
    clock.advance(10)
    old = [await get_token(client) for _ in range(2)]
    assert emulator.revoke_tokens() == 2
    for token in old:
        assert (await client.get("/charges/a/b/c", headers=bearer(token))).status_code == 401
    new = await get_token(client)
    assert (await client.get("/charges/a/b/c", headers=bearer(new))).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("POST", "/charges", "post:charges"),
        ("GET", "/charges/m/o/t", "get:charges"),
        ("DELETE", "/charges/m/o", "delete:charges"),
    ],
)
async def test_api_needs_the_right_scope(
    client: httpx.AsyncClient, emulator: PaymeEmulator, method: str, path: str, needed: str
) -> None:
    """A valid token without the route's scope is 403; with it, 200."""
    others = " ".join(s for s in ALL_SCOPES.split() if s != needed)
    narrow, wide = await get_token(client, others), await get_token(client, ALL_SCOPES)
    response = await client.request(method, path, headers=bearer(narrow))
    assert response.status_code == 403
    assert response.json() == {"message": "Forbidden"}
    assert f'scope="{needed}"' in response.headers["www-authenticate"]
    assert (await client.request(method, path, headers=bearer(wide))).status_code == 200
    assert emulator.stats.api_forbidden == 1


@pytest.mark.parametrize("version", [None, "1618440906"])
async def test_api_needs_the_api_version(client: httpx.AsyncClient, version: str | None) -> None:
    """An authorized request without the right ALG-API-VERSION is 400."""
    token = await get_token(client)
    headers = {"Authorization": f"Bearer {token}"}
    if version is not None:
        headers["ALG-API-VERSION"] = version
    response = await client.get("/charges/a/b/c", headers=headers)
    assert response.status_code == 400
    assert "ALG-API-VERSION" in response.json()["message"]


async def test_api_body_size_limit(client: httpx.AsyncClient) -> None:
    """An API request body over MAX_BODY_SIZE is 413."""
    token = await get_token(client)
    content = b"x" * (MAX_BODY_SIZE + 1)
    response = await client.post("/charges", content=content, headers=bearer(token))
    assert response.status_code == 413


async def test_api_latency_is_waited(client: httpx.AsyncClient, emulator: PaymeEmulator) -> None:
    """api_latency delays API answers (and not token answers)."""
    token = await get_token(client)
    emulator.api_latency = 0.03
    start = time.monotonic()
    await client.get("/charges/a/b/c", headers=bearer(token))
    assert time.monotonic() - start >= 0.025


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/charges", "POST"),
        ("PUT", "/charges/m/o", "DELETE"),
        ("POST", "/charges/m/o/t", "GET"),
    ],
)
async def test_wrong_method_on_an_api_route_gets_405(
    client: httpx.AsyncClient, emulator: PaymeEmulator, method: str, path: str, allow: str
) -> None:
    """A known route with another method is 405 naming the allowed one; it is not counted."""
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert emulator.stats.api_requests == 0


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nonce",
        "/token/",
        "/charges/",
        "/charges/m",
        "/charges//o",
        "/charges/m/o/t/x",
        "/x/m/o",
    ],
)
async def test_unknown_paths_get_404(
    client: httpx.AsyncClient, emulator: PaymeEmulator, path: str
) -> None:
    """Anything else is 404 with a JSON body."""
    response = await client.post(path)
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}
    assert emulator.stats == EmulatorStats()


async def test_stats_count_and_reset(client: httpx.AsyncClient, emulator: PaymeEmulator) -> None:
    """stats is a frozen snapshot of every counter; reset_stats zeroes them."""
    token = await get_token(client)
    await post_token(client, token_body(client_secret=WRONG_SECRET))
    await client.post("/charges", json={}, headers=bearer(token))
    await client.post("/charges", json={})
    snapshot = emulator.stats
    assert snapshot == EmulatorStats(
        token_requests=2, tokens_issued=1, token_failures=1, api_requests=2, api_unauthorized=1
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snapshot.token_requests = 0  # type: ignore[misc]
    emulator.reset_stats()
    assert emulator.stats == EmulatorStats()
    assert snapshot.api_requests == 2


# Raw ASGI.


async def test_lifespan_is_acknowledged() -> None:
    """Startup and shutdown are acknowledged; other lifespan messages are ignored."""
    sent = await call_app(
        PaymeEmulator(),
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        [{"type": "lifespan.startup"}, {"type": "lifespan.other"}, {"type": "lifespan.shutdown"}],
    )
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


async def test_other_scope_types_are_ignored() -> None:
    """A websocket connection gets nothing."""
    assert await call_app(PaymeEmulator(), {"type": "websocket"}, []) == []


async def test_client_gone_before_the_body_is_read() -> None:
    """A disconnect while the body is read ends the request without an answer or a count."""
    emulator = PaymeEmulator()
    sent = await call_app(
        emulator,
        http_scope("POST", "/token", [(b"content-type", b"application/json")]),
        [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}],
    )
    assert sent == []
    assert emulator.stats == EmulatorStats()


async def test_without_a_host_header_no_derived_audience_matches() -> None:
    """With no Host header (and no audience set) there is nothing to match: 400."""
    headers = [(b"content-type", b"application/json"), (b"alg-api-version", VERSION.encode())]
    sent = await call_app(
        PaymeEmulator(),
        http_scope("POST", "/token", headers),
        [{"type": "http.request", "body": json.dumps(token_body()).encode()}],
    )
    assert sent[0]["status"] == 400
    assert b"audience" in sent[1]["body"]


def test_public_names() -> None:
    """The subpackage exports exactly its public names, sorted: constants, classes, functions."""
    exported = payme_auth.testing.__all__
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    public = {
        name
        for name, value in vars(payme_auth.testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(exported) == public - {"annotations"}


# Served on a socket.


def emulator_threads() -> list[threading.Thread]:
    """The emulator server threads still running."""
    return [t for t in threading.enumerate() if t.name == "payme-emulator"]


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    """A default emulator served on a free loopback port."""
    with run_emulator() as server:
        yield server
    assert not emulator_threads()


async def test_served_emulator_issues_tokens_over_a_socket(server: EmulatorServer) -> None:
    """Over a real socket the emulator issues tokens and guards its API, from either loop."""
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0
    assert server.token_url == server.url + "/token"
    assert server.audience == server.url + "/"
    async with httpx.AsyncClient(base_url=server.url) as client:
        body = token_body(audience=server.audience)
        response = await post_token(client, body)
        assert response.status_code == 200
        token = response.json()["access_token"]
        charge = await client.post("/charges", json={}, headers=bearer(token))
        assert charge.status_code == 200
    assert server.emulator.stats == EmulatorStats(token_requests=1, tokens_issued=1, api_requests=1)


async def test_served_emulator_knobs_work_across_threads(clock: FakeClock) -> None:
    """Faults injected and tokens revoked from the test thread affect the served app."""
    emulator = PaymeEmulator(client_id="id-1", client_secret="secret-1", clock=clock)
    with run_emulator(emulator) as server:
        assert server.emulator is emulator
        body = token_body(client_id="id-1", client_secret="secret-1", audience=server.audience)
        async with httpx.AsyncClient(base_url=server.url) as client:
            emulator.inject(Fault(status=502))
            assert (await post_token(client, body)).status_code == 502
            token = (await post_token(client, body)).json()["access_token"]
            emulator.revoke_tokens()
            assert (await client.post("/charges", headers=bearer(token))).status_code == 401


async def test_payme_auth_works_against_the_served_emulator(server: EmulatorServer) -> None:
    """PaymeAuth gets a token from the emulator, and a revoked one is replaced on a 401."""
    environment = server.environment
    async with (
        PaymeAuth(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=environment) as auth,
        httpx.AsyncClient(base_url=server.url, auth=auth) as api,
    ):
        assert (await api.post("/charges", json={})).status_code == 200
        server.emulator.revoke_tokens()
        assert (await api.get("/charges/m/o/t")).status_code == 200
    stats = server.emulator.stats
    assert (stats.tokens_issued, stats.api_requests, stats.api_unauthorized) == (2, 3, 1)


async def test_reset_fault_breaks_the_served_connection(
    server: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Served by uvicorn, a reset fault reaches httpx as RemoteProtocolError, leaking nothing."""
    server.emulator.inject(Fault(status=503, reset=True))
    body = token_body(audience=server.audience)
    async with httpx.AsyncClient(base_url=server.url) as client:
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|without sending complete"):
            await post_token(client, body)
        assert (await post_token(client, body)).status_code == 200
    gc.collect()  # an unclosed socket would warn now, and filterwarnings makes that an error
    assert server.emulator.stats == EmulatorStats(
        token_requests=2, tokens_issued=1, token_failures=1
    )
    [record] = [r for r in caplog.records if r.name == "uvicorn.error"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "ASGI callable returned without completing response."


async def test_payme_auth_rides_out_resets_and_random_failures(server: EmulatorServer) -> None:
    """PaymeAuth retries a broken connection and random 503s and then gets its token."""
    emulator = server.emulator
    emulator.rng = seeded(7)
    emulator.token_failure_rate = 0.5
    emulator.inject(Fault(reset=True))
    retry = RetryPolicy(attempts=5, backoff=0.001, max_backoff=0.002)
    async with PaymeAuth(
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=server.environment, retry=retry
    ) as auth:
        await auth.get_token()
    replay = seeded(7)
    random_failures = 0
    while replay.random() < 0.5:
        random_failures += 1
    assert random_failures == 2, "the seed is chosen to fail twice"
    assert emulator.stats == EmulatorStats(token_requests=4, tokens_issued=1, token_failures=3)


async def wait_for_connections(server: EmulatorServer, count: int) -> int:
    """Poll open_connections until it is *count*, for at most 5 seconds; return it."""
    with anyio.move_on_after(5.0):
        while server.open_connections != count:
            await anyio.sleep(0.005)
    return server.open_connections


async def test_open_connections_counts_keep_alive_clients(server: EmulatorServer) -> None:
    """A keep-alive client holds one connection across requests; closing it frees it."""
    assert server.open_connections == 0
    client = httpx.AsyncClient(base_url=server.url)
    try:
        assert (await client.get("/nope")).status_code == 404
        assert server.open_connections == 1
        assert (await client.get("/nope")).status_code == 404
        assert server.open_connections == 1
        async with httpx.AsyncClient(base_url=server.url) as other:
            await other.get("/nope")
            assert server.open_connections == 2
        assert await wait_for_connections(server, 1) == 1
    finally:
        await client.aclose()
    assert await wait_for_connections(server, 0) == 0


def test_open_connections_needs_a_running_server() -> None:
    """An EmulatorServer not made by run_emulator has no server to ask."""
    made = EmulatorServer(host="127.0.0.1", port=1, emulator=PaymeEmulator())
    with pytest.raises(RuntimeError, match="run_emulator"):
        _ = made.open_connections


def test_environment_points_at_the_server(server: EmulatorServer) -> None:
    """environment is a payme_auth.Environment for this server, named "emulator"."""
    assert server.environment == Environment(
        token_url=server.token_url, audience=server.audience, name="emulator"
    )
    server.emulator.api_version = "1618440906"
    assert server.environment.api_version == "1618440906"


def test_served_on_ipv6_loopback() -> None:
    """An IPv6 host is served, and bracketed in the URL."""
    try:
        socket.socket(socket.AF_INET6).close()
        with run_emulator(host="::1") as server:
            assert server.url == f"http://[::1]:{server.port}"
            response = httpx.post(
                server.token_url,
                json=token_body(audience=server.audience),
                headers=API_HEADERS,
            )
    except OSError as exc:  # pragma: no cover - machines without IPv6
        pytest.skip(f"no IPv6 loopback: {exc}")
    assert response.status_code == 200


def test_errors_inside_the_block_still_stop_the_server() -> None:
    """An exception in the with block propagates and the server thread is stopped."""
    with pytest.raises(KeyError), run_emulator():
        raise KeyError("boom")
    assert not emulator_threads()


def test_slow_shutdown_is_forced() -> None:
    """When the graceful stop outlasts shutdown_timeout, uvicorn is forced to exit."""
    with run_emulator(shutdown_timeout=0.0) as server:
        assert httpx.get(server.url + "/nope").status_code == 404
    assert not emulator_threads()


def test_missing_uvicorn_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvicorn, run_emulator says which extra to install."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"payme-auth\[emulator\]"), run_emulator():
        pass  # pragma: no cover


def test_startup_failure_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """If uvicorn fails to start, run_emulator raises with the cause attached."""

    async def broken(self: uvicorn.Server, sockets: object = None) -> None:
        raise OSError("cannot serve")

    monkeypatch.setattr(uvicorn.Server, "startup", broken)
    with pytest.raises(RuntimeError, match="failed to start") as info, run_emulator():
        pass  # pragma: no cover
    assert isinstance(info.value.__cause__, OSError)
    assert not emulator_threads()


def test_server_that_stops_without_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """If uvicorn returns without ever starting, run_emulator raises too."""

    async def gives_up(self: uvicorn.Server, sockets: object = None) -> None:
        self.should_exit = True

    monkeypatch.setattr(uvicorn.Server, "startup", gives_up)
    with pytest.raises(RuntimeError, match="failed to start") as info, run_emulator():
        pass  # pragma: no cover
    assert info.value.__cause__ is None


def test_startup_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that does not start in time raises TimeoutError and is stopped."""

    async def slow(self: uvicorn.Server, sockets: object = None) -> None:
        await anyio.sleep(0.3)

    monkeypatch.setattr(uvicorn.Server, "startup", slow)
    with pytest.raises(TimeoutError, match="did not start"), run_emulator(startup_timeout=0.05):
        pass  # pragma: no cover
    assert not emulator_threads()


async def test_each_request_is_logged_on_one_line_without_secrets(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request served gets one DEBUG line: method, path, status, client id; never a
    secret nor a token, and a client id that is not printable is escaped."""
    caplog.set_level(logging.DEBUG, logger="payme_auth.testing.emulator")
    token = await get_token(client)
    await client.get("/charges/M1/0001/T1", headers=bearer(token))
    await client.get("/charges/M1/0001/T1", headers=API_HEADERS)
    await post_token(client, token_body(client_secret=WRONG_SECRET))
    await post_token(client, token_body(client_id="evil\nclient"))
    await client.post("/tokn")
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "payme_auth.testing.emulator"
    ]
    assert lines == [
        f"POST /token 200 client={DEFAULT_CLIENT_ID}",
        f"GET /charges/M1/0001/T1 200 client={DEFAULT_CLIENT_ID}",
        "GET /charges/M1/0001/T1 401 client=-",
        f"POST /token 401 client={DEFAULT_CLIENT_ID}",
        "POST /token 401 client=evil\\nclient",
        "POST /tokn 404 client=-",
    ]
    text = "\n".join(lines)
    assert token not in text
    assert WRONG_SECRET not in text
    assert DEFAULT_CLIENT_SECRET not in text
