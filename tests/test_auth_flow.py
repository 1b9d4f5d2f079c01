"""The plugs: async_auth_flow, origins, the 401 replay, life cycle, settings.

Every test whose behaviour both plugs share runs on each: ``payme_auth.PaymeAuth`` with an
``httpx.AsyncClient``, and ``payme_auth.httpx2.PaymeAuth`` with an ``httpx2.AsyncClient``
(skipped when httpx2 is not installed). respx mocks httpx only, so the httpx2 client sends
through a transport that hands each request to the same respx router: the routes, their
recorded calls and the assertions on them are the same for both.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, aclosing
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import httpx
import pytest
import respx

from payme_auth import (
    API_VERSION,
    AuthClosedError,
    ConfigurationError,
    Environment,
    InvalidCredentialsError,
    PaymeAuth,
    Scope,
    TokenEndpointUnavailableError,
    TokenResponseError,
)
from payme_auth.testing import PaymeTokenMock

from .conftest import (
    API,
    CLIENT_ID,
    CLIENT_SECRET,
    FAST_RETRY,
    TOKEN_MARK,
    FakeClock,
    token_answer,
)

if TYPE_CHECKING:
    import payme_auth.httpx2

    AnyAuth = PaymeAuth | payme_auth.httpx2.PaymeAuth

pytestmark = pytest.mark.anyio

HAS_HTTPX2 = importlib.util.find_spec("httpx2") is not None

API_HOST = "api.preprod.alignet.io"
OTHER = "https://other.example"

AuthFactory = Callable[..., Awaitable["AnyAuth"]]


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """respx in front of every request: an unrouted request fails the test."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
def token_router(router: respx.MockRouter) -> respx.MockRouter:
    """The token mock's route goes on the router of the API routes (see conftest.token_mock)."""
    return router


@pytest.fixture
def api(router: respx.MockRouter) -> respx.Route:
    """Every request to https://api.preprod.alignet.io (port 443), answered 200 by default."""
    return router.route(scheme="https", host=API_HOST, port=443).respond(200, json={"ok": True})


def _flavour(name: str) -> Any:
    if name.startswith("httpx2") and not HAS_HTTPX2:
        return pytest.param(name, marks=pytest.mark.skip(reason="httpx2 is not installed"))
    return name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test on both plugs; with make_auth, the httpx one bare and inside async with.

    The httpx2 plug runs entered only: bare or entered is the shared provider's concern, and
    tests/test_httpx2.py checks the plug's own life cycle both ways.
    """
    if "make_auth" in metafunc.fixturenames:
        flavours = ["httpx-bare", "httpx-entered", "httpx2-entered"]
    elif "plug" in metafunc.fixturenames:
        flavours = ["httpx", "httpx2"]
    else:
        return
    metafunc.parametrize("flavour", [_flavour(name) for name in flavours])


@attrs.frozen
class Plug:
    """One plug under test: its client library, its PaymeAuth class and its API clients."""

    http: ModuleType
    """``httpx`` or ``httpx2``: its Request, Response, URL and Client are used as they are."""
    auth_class: Any
    """``payme_auth.PaymeAuth`` or ``payme_auth.httpx2.PaymeAuth``."""
    router: respx.MockRouter
    repr_prefix: str = ""

    def client(self, **kwargs: Any) -> Any:
        """An AsyncClient of the plug's library, whose requests all reach the respx router."""
        if self.http is not httpx:
            kwargs.setdefault("transport", respx_bridge(self.router))
        return self.http.AsyncClient(**kwargs)


def respx_bridge(router: respx.MockRouter) -> Any:
    """An httpx2 transport that sends each request, as an httpx one, to a respx router."""
    import httpx2

    class RespxBridge(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            # Iterate the body as a real transport does: request.aread() would keep it in
            # memory, turning a streamed body into a replayable one.
            assert isinstance(request.stream, httpx2.AsyncByteStream)
            body = b"".join([chunk async for chunk in request.stream])
            mirrored = httpx.Request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                stream=httpx.ByteStream(body),
            )
            mirrored.read()
            answer = await router.async_handler(mirrored)
            return httpx2.Response(
                answer.status_code,
                headers=answer.headers.multi_items(),
                content=await answer.aread(),
            )

    return RespxBridge()


@pytest.fixture
def plug(flavour: str, router: respx.MockRouter) -> Plug:
    """The plug named by the test's flavour."""
    if flavour.startswith("httpx2"):
        import httpx2

        import payme_auth.httpx2

        return Plug(httpx2, payme_auth.httpx2.PaymeAuth, router, "payme_auth.httpx2.")
    return Plug(httpx, PaymeAuth, router)


@pytest.fixture
async def make_auth(flavour: str, plug: Plug) -> AsyncIterator[AuthFactory]:
    """Build the plug's PaymeAuth objects, bare or inside ``async with``; closed at teardown."""
    async with AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> AnyAuth:
            kwargs.setdefault("retry", FAST_RETRY)
            auth: AnyAuth = plug.auth_class(CLIENT_ID, CLIENT_SECRET, **kwargs)
            if not flavour.endswith("-bare"):
                await stack.enter_async_context(auth)
            else:
                stack.push_async_callback(auth.aclose)
            return auth

        yield make


@pytest.fixture
async def auth(make_auth: AuthFactory) -> AnyAuth:
    """A PaymeAuth for Pay-me preprod (bare, and inside ``async with``)."""
    return await make_auth()


def bearer(mock: PaymeTokenMock, index: int) -> str:
    """The Authorization header value for the index-th token the mock handed out."""
    return f"Bearer {mock.tokens[index]}"


def sent(route: respx.Route, index: int = -1) -> httpx.Request:
    """The request a route received (the last one by default)."""
    request: httpx.Request = route.calls[index].request
    return request


def authorizations(route: respx.Route) -> list[str | None]:
    """The Authorization header of every request a route received, in order."""
    return [call.request.headers.get("Authorization") for call in route.calls]


def unauthorized(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"message": "Unauthorized"})


# -- the flow driven by hand -------------------------------------------------------------------


async def test_flow_adds_both_headers_and_ends_on_200(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """The flow yields the request with Bearer and ALG-API-VERSION, and ends on a 200."""
    request = plug.http.Request("GET", f"{API}/charges/m/1/2")
    flow = auth.async_auth_flow(request)
    sent_request = await flow.__anext__()
    assert sent_request is request
    assert sent_request.headers["Authorization"] == bearer(token_mock, 0)
    assert sent_request.headers["ALG-API-VERSION"] == "1709847567"
    with pytest.raises(StopAsyncIteration):
        await flow.asend(plug.http.Response(200, request=sent_request))
    assert token_mock.call_count == 1


async def test_flow_replays_a_401_once_with_a_new_token(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """A 401 yields the request again with a new token; a second 401 ends the flow."""
    request = plug.http.Request("POST", f"{API}/charges", json={"amount": 100})
    flow = auth.async_auth_flow(request)
    first = await flow.__anext__()
    assert first.headers["Authorization"] == bearer(token_mock, 0)
    replay = await flow.asend(plug.http.Response(401, request=first))
    assert replay is request
    assert token_mock.call_count == 2
    assert replay.headers["Authorization"] == bearer(token_mock, 1)
    assert bearer(token_mock, 0) != bearer(token_mock, 1)
    assert replay.headers["ALG-API-VERSION"] == "1709847567"
    with pytest.raises(StopAsyncIteration):
        await flow.asend(plug.http.Response(401, request=replay))
    assert token_mock.call_count == 2
    assert (await auth.get_token()).value == token_mock.tokens[1]


async def test_flow_ends_after_a_successful_replay(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """After the replay, a 200 ends the flow and the new token stays cached."""
    flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/refund"))
    first = await flow.__anext__()
    replay = await flow.asend(plug.http.Response(401, request=first))
    with pytest.raises(StopAsyncIteration):
        await flow.asend(plug.http.Response(200, request=replay))
    assert token_mock.call_count == 2
    assert (await auth.headers())["Authorization"] == bearer(token_mock, 1)
    assert token_mock.call_count == 2


@pytest.mark.parametrize("status", [200, 400, 403, 404, 500])
async def test_flow_ends_on_anything_but_401(
    auth: AnyAuth, token_mock: PaymeTokenMock, status: int, plug: Plug
) -> None:
    """Any answer other than 401 ends the flow at once, with no new token."""
    flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/refund"))
    first = await flow.__anext__()
    with pytest.raises(StopAsyncIteration):
        await flow.asend(plug.http.Response(status, request=first))
    assert token_mock.call_count == 1
    assert auth.invalidate(await auth.get_token()) is True
    assert token_mock.call_count == 1


async def test_flow_passes_a_foreign_request_through(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """A request to another origin is yielded untouched, and its 401 ends the flow."""
    request = plug.http.Request("GET", f"{OTHER}/api")
    flow = auth.async_auth_flow(request)
    yielded = await flow.__anext__()
    assert yielded is request
    assert "Authorization" not in yielded.headers
    assert "ALG-API-VERSION" not in yielded.headers
    with pytest.raises(StopAsyncIteration):
        await flow.asend(plug.http.Response(401, request=yielded))
    assert token_mock.call_count == 0


async def test_flow_keeps_the_request_alg_api_version(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """An ALG-API-VERSION the request already carries is kept, on the replay too."""
    request = plug.http.Request("GET", f"{API}/refund", headers={"alg-api-version": "42"})
    flow = auth.async_auth_flow(request)
    first = await flow.__anext__()
    assert first.headers.get_list("ALG-API-VERSION") == ["42"]
    replay = await flow.asend(plug.http.Response(401, request=first))
    assert replay.headers.get_list("ALG-API-VERSION") == ["42"]
    assert replay.headers["Authorization"] == bearer(token_mock, 1)
    await flow.aclose()


async def test_flow_overrides_an_authorization_already_set(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """A stale Authorization on the request is replaced by exactly one Bearer header."""
    request = plug.http.Request("GET", f"{API}/refund", headers={"Authorization": "Bearer stale"})
    flow = auth.async_auth_flow(request)
    first = await flow.__anext__()
    assert first.headers.get_list("Authorization") == [bearer(token_mock, 0)]
    await flow.aclose()


async def test_flows_that_failed_with_one_token_share_one_renewal(
    auth: AnyAuth, token_mock: PaymeTokenMock, plug: Plug
) -> None:
    """A 401 for a token already replaced reuses the newer token instead of dropping it."""
    first_flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/a"))
    second_flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/b"))
    first = await first_flow.__anext__()
    second = await second_flow.__anext__()
    assert (
        first.headers["Authorization"] == second.headers["Authorization"] == bearer(token_mock, 0)
    )
    first_replay = await first_flow.asend(plug.http.Response(401, request=first))
    second_replay = await second_flow.asend(plug.http.Response(401, request=second))
    assert first_replay.headers["Authorization"] == bearer(token_mock, 1)
    assert second_replay.headers["Authorization"] == bearer(token_mock, 1)
    assert token_mock.call_count == 2
    await first_flow.aclose()
    await second_flow.aclose()


# -- through a real httpx.AsyncClient ----------------------------------------------------------


async def test_every_api_request_carries_bearer_and_api_version(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """GET, POST and DELETE to the API all carry the Bearer token and ALG-API-VERSION."""
    async with plug.client(base_url=API, auth=auth) as client:
        responses = [
            await client.post("/charges", json={"amount": 100}),
            await client.get("/charges/m/op/tx"),
            await client.delete("/charges/m/op"),
            await client.get(f"{API}:443/refund"),
        ]
    assert [response.status_code for response in responses] == [200, 200, 200, 200]
    assert api.call_count == 4
    for call in api.calls:
        assert call.request.headers.get_list("Authorization") == [bearer(token_mock, 0)]
        assert call.request.headers.get_list("ALG-API-VERSION") == ["1709847567"]
    assert token_mock.call_count == 1


@pytest.mark.parametrize("where", ["request", "client"])
async def test_an_api_version_already_set_is_kept(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, where: str, plug: Plug
) -> None:
    """An ALG-API-VERSION set on the request or as a client default is sent as it is."""
    defaults = {"ALG-API-VERSION": "1600000000"} if where == "client" else {}
    per_request = {"ALG-API-VERSION": "1600000000"} if where == "request" else {}
    async with plug.client(base_url=API, auth=auth, headers=defaults) as client:
        response = await client.get("/refund", headers=per_request)
    assert response.status_code == 200
    assert sent(api).headers.get_list("ALG-API-VERSION") == ["1600000000"]
    assert sent(api).headers["Authorization"] == bearer(token_mock, 0)


async def test_token_is_fetched_once_for_sequential_requests(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """Fifty sequential API requests share one token request."""
    async with plug.client(base_url=API, auth=auth) as client:
        for number in range(50):
            response = await client.get(f"/charges/m/{number}/1")
            assert response.status_code == 200
    assert token_mock.call_count == 1
    assert api.call_count == 50
    assert set(authorizations(api)) == {bearer(token_mock, 0)}


async def test_token_is_fetched_once_for_200_concurrent_requests(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """Two hundred concurrent requests, all started before the token arrives, share one fetch."""
    statuses: list[int] = []
    token_mock.hold()

    async with plug.client(base_url=API, auth=auth) as client:

        async def call(number: int) -> None:
            statuses.append((await client.get(f"/charges/m/{number}/1")).status_code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for number in range(200):
                    tg.start_soon(call, number)
                while token_mock.arrived == 0:
                    await anyio.sleep(0.001)
                await anyio.sleep(0.02)
                assert api.call_count == 0
                token_mock.release()
    assert statuses == [200] * 200
    assert token_mock.call_count == 1
    assert api.call_count == 200
    assert set(authorizations(api)) == {bearer(token_mock, 0)}


async def test_a_token_inside_its_margin_is_renewed_behind_the_requests(
    make_auth: AuthFactory,
    token_mock: PaymeTokenMock,
    api: respx.Route,
    clock: FakeClock,
    plug: Plug,
) -> None:
    """Inside its refresh margin a token still goes out while its renewal runs in the
    background; the requests after the renewal carry the new one."""
    auth = await make_auth(clock=clock, refresh_margin=60, advisory_ratio=None)
    async with plug.client(base_url=API, auth=auth) as client:
        await client.get("/refund")
        clock.advance(8600 - 61)
        await client.get("/refund")
        assert token_mock.call_count == 1
        clock.advance(2)
        await client.get("/refund")
        with anyio.fail_after(5):
            while auth.stats().renewals < 1:
                await anyio.sleep(0.001)
        await client.get("/refund")
    assert token_mock.call_count == 2
    assert authorizations(api) == [bearer(token_mock, 0)] * 3 + [bearer(token_mock, 1)]


# -- which origins get the token ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"{OTHER}/charges",
        f"http://{API_HOST}/charges",
        f"https://{API_HOST}:8443/charges",
        f"https://{API_HOST}:80/charges",
        f"https://{API_HOST}.evil.example/charges",
        f"https://evil.example/{API_HOST}/charges",
        "https://api.alignet.io/charges",
        "https://auth.preprod.alignet.io/userinfo",
    ],
)
async def test_no_token_for_another_origin(
    auth: AnyAuth, token_mock: PaymeTokenMock, router: respx.MockRouter, url: str, plug: Plug
) -> None:
    """A request to any other scheme, host or port gets no headers, and no token is fetched."""
    elsewhere = router.route(url=url).respond(200)
    async with plug.client(auth=auth) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert elsewhere.call_count == 1
    assert "Authorization" not in sent(elsewhere).headers
    assert "ALG-API-VERSION" not in sent(elsewhere).headers
    assert token_mock.call_count == 0
    assert auth.applies_to(plug.http.URL(url)) is False


@pytest.mark.parametrize(
    "url",
    [f"{API}/charges", f"{API}:443/charges", "https://API.Preprod.Alignet.IO/charges"],
)
async def test_applies_to_the_api_origin(url: str, plug: Plug) -> None:
    """The API origin matches with or without its default port, in any letter case."""
    async with aclosing(plug.auth_class(CLIENT_ID, CLIENT_SECRET)) as auth:
        assert auth.applies_to(plug.http.URL(url)) is True


async def test_extra_origin_gets_the_token(
    make_auth: AuthFactory,
    token_mock: PaymeTokenMock,
    api: respx.Route,
    router: respx.MockRouter,
    plug: Plug,
) -> None:
    """An origin in extra_origins gets the token; the same host on another port does not."""
    auth = await make_auth(extra_origins=[f"{OTHER}:8443"])
    extra = router.route(host="other.example", port=8443).respond(200)
    default_port = router.route(host="other.example", port=443).respond(200)
    async with plug.client(auth=auth) as client:
        await client.get(f"{OTHER}:8443/v1/charges")
        await client.get(f"{OTHER}/v1/charges")
        await client.get(f"{API}/charges")
    assert authorizations(extra) == [bearer(token_mock, 0)]
    assert sent(extra).headers["ALG-API-VERSION"] == "1709847567"
    assert authorizations(default_port) == [None]
    assert authorizations(api) == [bearer(token_mock, 0)]
    assert token_mock.call_count == 1


async def test_extra_origins_accepts_a_single_string(plug: Plug) -> None:
    """A single origin string is one origin, not a sequence of characters."""
    async with aclosing(
        plug.auth_class(CLIENT_ID, CLIENT_SECRET, extra_origins=f"{OTHER}:8443")
    ) as auth:
        assert auth.applies_to(plug.http.URL(f"{OTHER}:8443/x")) is True
        assert auth.applies_to(plug.http.URL(f"{API}/x")) is True
        assert auth.applies_to(plug.http.URL(f"{OTHER}/x")) is False


@pytest.mark.parametrize(
    "origin",
    ["http://other.example", "https://other.example/path", "https://user:pw@other.example", ""],
)
async def test_extra_origins_are_checked(origin: str, plug: Plug) -> None:
    """A plain-http, path-carrying, credential-carrying or empty extra origin is refused."""
    with pytest.raises(ConfigurationError):
        plug.auth_class(CLIENT_ID, CLIENT_SECRET, extra_origins=[origin])


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize(
    "target",
    [f"{OTHER}/landing", f"http://{API_HOST}/landing", f"https://{API_HOST}:8443/landing"],
)
async def test_redirect_to_another_origin_carries_no_token(
    auth: AnyAuth, token_mock: PaymeTokenMock, status: int, target: str, plug: Plug
) -> None:
    """A redirect from the API to another origin arrives there without Authorization."""
    router = plug.router
    landing = router.route(url=target).respond(200, text="landed")
    start = router.get(f"{API}/charges/m/1/2").respond(status, headers={"Location": target})
    async with plug.client(auth=auth, follow_redirects=True) as client:
        response = await client.get(f"{API}/charges/m/1/2")
    assert response.status_code == 200
    assert response.text == "landed"
    assert authorizations(start) == [bearer(token_mock, 0)]
    assert landing.call_count == 1
    assert "Authorization" not in sent(landing).headers
    assert token_mock.call_count == 1


@pytest.mark.parametrize("status", [302, 307])
async def test_same_origin_redirect_keeps_the_token(
    auth: AnyAuth, token_mock: PaymeTokenMock, router: respx.MockRouter, status: int, plug: Plug
) -> None:
    """A redirect within the API origin keeps Authorization and ALG-API-VERSION."""
    start = router.get(f"{API}/old").respond(status, headers={"Location": "/new"})
    landing = router.get(f"{API}/new").respond(200)
    async with plug.client(auth=auth, follow_redirects=True) as client:
        response = await client.get(f"{API}/old")
    assert response.status_code == 200
    assert authorizations(start) == authorizations(landing) == [bearer(token_mock, 0)]
    assert sent(landing).headers["ALG-API-VERSION"] == "1709847567"
    assert token_mock.call_count == 1


async def test_loopback_environment_works_over_http(
    make_auth: AuthFactory, router: respx.MockRouter, plug: Plug
) -> None:
    """A custom loopback Environment gets its token over http and sends it to its own origin."""
    environment = Environment(token_url="http://127.0.0.1:9/token", audience="http://127.0.0.1:9/")
    loopback_tokens = PaymeTokenMock(environment, router=router, token_prefix=TOKEN_MARK)
    charges = router.post("http://127.0.0.1:9/charges").respond(201)
    other_port = router.get("http://127.0.0.1:10/charges").respond(200)
    by_name = router.get("http://localhost:9/charges").respond(200)
    auth = await make_auth(environment=environment)
    with loopback_tokens:
        async with plug.client(auth=auth) as client:
            assert (await client.post("http://127.0.0.1:9/charges", json={})).status_code == 201
            await client.get("http://127.0.0.1:10/charges")
            await client.get("http://localhost:9/charges")
    assert authorizations(charges) == [bearer(loopback_tokens, 0)]
    assert sent(charges).headers["ALG-API-VERSION"] == API_VERSION
    body = json.loads(loopback_tokens.calls[-1].request.content)
    assert body["audience"] == "http://127.0.0.1:9/"
    assert authorizations(other_port) == [None]
    assert authorizations(by_name) == [None]
    assert loopback_tokens.call_count == 1


# -- the 401 replay ----------------------------------------------------------------------------


async def test_a_401_is_replayed_once_with_a_new_token(
    auth: AnyAuth,
    token_mock: PaymeTokenMock,
    api: respx.Route,
    caplog: pytest.LogCaptureFixture,
    plug: Plug,
) -> None:
    """401 then 200: the caller gets the 200, after exactly two token requests."""
    api.side_effect = [httpx.Response(401), httpx.Response(200, json={"ok": True})]
    async with plug.client(base_url=API, auth=auth) as client:
        response = await client.get("/charges/m/1/2")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert [earlier.status_code for earlier in response.history] == [401]
    assert token_mock.call_count == 2
    assert authorizations(api) == [bearer(token_mock, 0), bearer(token_mock, 1)]
    assert [call.request.url.path for call in api.calls] == ["/charges/m/1/2"] * 2
    replays = [r for r in caplog.records if "replaying once" in r.getMessage()]
    assert len(replays) == 1
    assert replays[0].levelno == logging.INFO


async def test_a_second_401_goes_back_to_the_caller(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """401 twice: the caller gets the second 401; no third attempt, no third token."""
    api.side_effect = unauthorized
    async with plug.client(base_url=API, auth=auth) as client:
        response = await client.get("/charges/m/1/2")
        assert response.status_code == 401
        assert api.call_count == 2
        assert token_mock.call_count == 2
        assert authorizations(api) == [bearer(token_mock, 0), bearer(token_mock, 1)]
        # The next request starts with the token from the replay: it was not dropped.
        api.side_effect = None
        await client.get("/refund")
    assert sent(api).headers["Authorization"] == bearer(token_mock, 1)
    assert token_mock.call_count == 2


async def test_a_403_is_returned_as_it_is(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A 403 is the caller's answer: no replay, no new token, the token kept."""
    api.respond(403, json={"message": "Forbidden"})
    async with plug.client(base_url=API, auth=auth) as client:
        response = await client.delete("/charges/m/1")
        assert response.status_code == 403
        assert response.json() == {"message": "Forbidden"}
        await client.get("/refund")
    assert api.call_count == 2
    assert token_mock.call_count == 1
    assert set(authorizations(api)) == {bearer(token_mock, 0)}


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"amount":'
    yield b"100}"


async def test_a_streamed_body_is_not_replayed(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A request whose body is an async stream gets the 401 back: it cannot be sent twice."""
    api.side_effect = unauthorized
    async with plug.client(base_url=API, auth=auth) as client:
        response = await client.post("/charges", content=_chunks())
    assert response.status_code == 401
    assert api.call_count == 1
    assert sent(api).content == b'{"amount":100}'
    assert sent(api).headers["Authorization"] == bearer(token_mock, 0)
    assert token_mock.call_count == 1


async def test_a_401_on_a_streamed_body_still_drops_the_token(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """After a 401 on a streamed body, the next request goes out with a new token."""

    def reject_first_token(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == bearer(token_mock, 0):
            return httpx.Response(401)
        return httpx.Response(200)

    api.side_effect = reject_first_token
    async with plug.client(base_url=API, auth=auth) as client:
        first = await client.post("/charges", content=_chunks())
        assert first.status_code == 401
        second = await client.post("/charges", content=_chunks())
    assert second.status_code == 200
    assert authorizations(api) == [bearer(token_mock, 0), bearer(token_mock, 1)]
    assert token_mock.call_count == 2


@pytest.mark.parametrize(
    "body",
    [
        {"json": {"amount": 100, "currency": "PEN"}},
        {"content": b"\x00raw bytes\xff"},
        {"data": {"field": "value"}},
    ],
    ids=["json", "bytes", "form"],
)
async def test_a_replayable_body_is_replayed_unchanged(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, body: dict[str, Any], plug: Plug
) -> None:
    """A JSON, bytes or form body is sent again, byte for byte, with its headers."""
    api.side_effect = [httpx.Response(401), httpx.Response(201)]
    async with plug.client(base_url=API, auth=auth) as client:
        response = await client.post("/charges", **body)
    assert response.status_code == 201
    first, replay = sent(api, 0), sent(api, 1)
    assert first.content == replay.content != b""
    assert first.headers.get("Content-Type") == replay.headers.get("Content-Type")
    assert first.headers["Content-Length"] == replay.headers["Content-Length"]
    assert [first.headers["Authorization"], replay.headers["Authorization"]] == [
        bearer(token_mock, 0),
        bearer(token_mock, 1),
    ]
    if "json" in body:
        assert json.loads(replay.content) == body["json"]


async def test_concurrent_401s_for_one_token_cause_one_new_token(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A hundred requests refused with the same token fetch exactly one new token, then pass."""
    crowd = 100
    stale = 0
    everyone_refused = anyio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal stale
        if request.headers["Authorization"] == bearer(token_mock, 0):
            stale += 1
            if stale == crowd:
                everyone_refused.set()
            await everyone_refused.wait()
            return httpx.Response(401)
        return httpx.Response(200)

    statuses: list[int] = []
    async with plug.client(base_url=API, auth=auth) as client:
        await auth.get_token()
        api.side_effect = answer

        async def call(number: int) -> None:
            statuses.append((await client.get(f"/charges/m/{number}/1")).status_code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for number in range(crowd):
                    tg.start_soon(call, number)
    assert statuses == [200] * crowd
    assert stale == crowd
    assert token_mock.call_count == 2
    assert api.call_count == 2 * crowd
    assert authorizations(api).count(bearer(token_mock, 1)) == crowd


async def test_a_401_after_a_cross_origin_redirect_keeps_the_token(
    auth: AnyAuth, token_mock: PaymeTokenMock, router: respx.MockRouter, plug: Plug
) -> None:
    """A 401 from the host a redirect led to goes to the caller and does not drop our token."""
    landing = router.post(f"{OTHER}/3ds").respond(401)
    start = router.post(f"{API}/charges").respond(307, headers={"Location": f"{OTHER}/3ds"})
    async with plug.client(auth=auth, follow_redirects=True) as client:
        response = await client.post(f"{API}/charges", json={"amount": 1})
    assert response.status_code == 401
    assert response.url == f"{OTHER}/3ds"
    assert start.call_count == 1
    assert landing.call_count == 1
    assert token_mock.call_count == 1
    assert (await auth.get_token()).value == token_mock.tokens[0]
    assert token_mock.call_count == 1


async def test_a_401_after_a_same_origin_redirect_is_replayed(
    auth: AnyAuth, token_mock: PaymeTokenMock, router: respx.MockRouter, plug: Plug
) -> None:
    """A 401 at the end of a redirect within the API origin is replayed with a new token."""
    start = router.get(f"{API}/old").respond(307, headers={"Location": "/new"})
    landing = router.get(f"{API}/new")
    landing.side_effect = [httpx.Response(401), httpx.Response(200)]
    async with plug.client(auth=auth, follow_redirects=True) as client:
        response = await client.get(f"{API}/old")
    assert response.status_code == 200
    assert token_mock.call_count == 2
    assert authorizations(start) == [bearer(token_mock, 0), bearer(token_mock, 1)]
    assert authorizations(landing) == [bearer(token_mock, 0), bearer(token_mock, 1)]


async def test_invalidate_compares_then_drops(auth: AnyAuth, token_mock: PaymeTokenMock) -> None:
    """invalidate(token) drops only that token if still cached; invalidate() drops any."""
    assert auth.invalidate() is False
    old = await auth.get_token()
    assert auth.invalidate(old) is True
    assert auth.invalidate(old) is False
    newer = await auth.get_token()
    assert token_mock.call_count == 2
    assert newer.value == token_mock.tokens[1]
    assert auth.invalidate(old) is False
    assert await auth.get_token() is newer
    assert token_mock.call_count == 2
    newest = await auth.refresh()
    assert auth.invalidate(newer) is False
    assert (await auth.headers())["Authorization"] == newest.authorization
    assert token_mock.call_count == 3
    assert auth.invalidate() is True
    assert auth.invalidate() is False
    assert (await auth.get_token()).value == token_mock.tokens[3]
    assert token_mock.call_count == 4


# -- token endpoint failures -------------------------------------------------------------------


async def test_refused_credentials_reach_the_caller(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A 401 from the token URL raises InvalidCredentialsError from client.get; no API call."""
    token_mock.respond(httpx.Response(401, json={"error": "access_denied"}))
    async with plug.client(base_url=API, auth=auth) as client:
        with pytest.raises(InvalidCredentialsError) as caught:
            await client.get("/charges/m/1/2")
    assert caught.value.status_code == 401
    assert CLIENT_SECRET not in str(caught.value)
    assert token_mock.call_count == 1
    assert api.call_count == 0


async def test_an_unavailable_endpoint_reaches_the_caller_after_retries(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """503s from the token URL raise TokenEndpointUnavailableError after 3 attempts."""
    token_mock.respond(httpx.Response(503), times=3)
    async with plug.client(base_url=API, auth=auth) as client:
        with pytest.raises(TokenEndpointUnavailableError) as caught:
            await client.post("/charges", json={"amount": 1})
        assert caught.value.attempts == 3
        assert caught.value.status_code == 503
        assert token_mock.call_count == 3
        assert api.call_count == 0
        # Nothing failed is cached: the next request fetches afresh and goes through.
        assert (await client.get("/refund")).status_code == 200
    assert token_mock.call_count == 4
    assert authorizations(api) == [bearer(token_mock, 0)]


async def test_a_failed_renewal_after_a_401_reaches_the_caller(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """When the token for the replay cannot be had, the caller gets the typed error."""
    api.side_effect = unauthorized
    async with plug.client(base_url=API, auth=auth) as client:
        await auth.get_token()
        token_mock.respond(httpx.Response(401, json={"error": "access_denied"}))
        with pytest.raises(InvalidCredentialsError):
            await client.get("/refund")
    assert api.call_count == 1
    assert token_mock.call_count == 2


async def test_a_closed_auth_sends_nothing(
    token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """After aclose(), an API request raises AuthClosedError and nothing is sent."""
    auth = plug.auth_class(CLIENT_ID, CLIENT_SECRET)
    await auth.get_token()
    await auth.aclose()
    async with plug.client(base_url=API, auth=auth) as client:
        with pytest.raises(AuthClosedError):
            await client.get("/refund")
    with pytest.raises(AuthClosedError):
        await auth.headers()
    assert api.call_count == 0
    assert token_mock.call_count == 1


# -- headers() for other clients ---------------------------------------------------------------


async def test_headers_are_exactly_the_two(auth: AnyAuth, token_mock: PaymeTokenMock) -> None:
    """headers() gives exactly Authorization and ALG-API-VERSION, from the cached token."""
    headers = await auth.headers()
    assert headers == {"Authorization": bearer(token_mock, 0), "ALG-API-VERSION": "1709847567"}
    assert await auth.headers() == headers
    assert token_mock.call_count == 1


async def test_headers_use_the_environment_api_version(
    make_auth: AuthFactory, router: respx.MockRouter, plug: Plug
) -> None:
    """A custom api_version is the ALG-API-VERSION that headers() and the flow send."""
    environment = Environment(
        token_url="https://auth.example/token", audience="https://api.example/", api_version="7"
    )
    custom_tokens = PaymeTokenMock(environment, router=router, token_prefix=TOKEN_MARK)
    route = router.get("https://api.example/charges").respond(200)
    auth = await make_auth(environment=environment)
    with custom_tokens:
        assert await auth.headers() == {
            "Authorization": bearer(custom_tokens, 0),
            "ALG-API-VERSION": "7",
        }
        async with plug.client(auth=auth) as client:
            await client.get("https://api.example/charges")
    assert sent(route).headers["ALG-API-VERSION"] == "7"
    assert custom_tokens.call_count == 1


# -- no lock across yield, cancellation --------------------------------------------------------


async def test_flows_suspended_at_their_yields_block_nothing(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """While flows sit at their first or replay yield, other requests and renewals complete."""
    waiting = auth.async_auth_flow(plug.http.Request("GET", f"{API}/a"))
    first = await waiting.__anext__()
    replaying = auth.async_auth_flow(plug.http.Request("GET", f"{API}/b"))
    second = await replaying.__anext__()
    assert (
        first.headers["Authorization"] == second.headers["Authorization"] == bearer(token_mock, 0)
    )
    with anyio.fail_after(2):
        # The second flow's 401 renews the token while the first is suspended at its yield.
        replay = await replaying.asend(plug.http.Response(401, request=second))
        assert replay.headers["Authorization"] == bearer(token_mock, 1)
        async with plug.client(base_url=API, auth=auth) as client:
            assert (await client.get("/refund")).status_code == 200
        assert (await auth.refresh()).value == token_mock.tokens[2]
        assert (await auth.headers())["Authorization"] == bearer(token_mock, 2)
    assert authorizations(api) == [bearer(token_mock, 1)]
    await waiting.aclose()
    await replaying.aclose()


async def test_an_abandoned_flow_blocks_nothing(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A flow closed at its first yield leaves every later request free to complete."""
    flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/refund"))
    await flow.__anext__()
    await flow.aclose()
    with anyio.fail_after(2):
        async with plug.client(base_url=API, auth=auth) as client:
            assert (await client.get("/refund")).status_code == 200
        other = auth.async_auth_flow(plug.http.Request("GET", f"{API}/refund"))
        assert (await other.__anext__()).headers["Authorization"] == bearer(token_mock, 0)
        await other.aclose()
    assert token_mock.call_count == 1


async def test_a_flow_abandoned_at_the_replay_blocks_nothing(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A flow closed at its replay yield leaves the new token usable by later requests."""
    flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/refund"))
    first = await flow.__anext__()
    await flow.asend(plug.http.Response(401, request=first))
    await flow.aclose()
    with anyio.fail_after(2):
        async with plug.client(base_url=API, auth=auth) as client:
            assert (await client.get("/refund")).status_code == 200
    assert token_mock.call_count == 2
    assert authorizations(api) == [bearer(token_mock, 1)]


async def test_a_flow_closed_from_another_task_blocks_nothing(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A flow suspended at its yield and closed by another task leaves the auth usable."""
    flow = auth.async_auth_flow(plug.http.Request("GET", f"{API}/refund"))
    await flow.__anext__()
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(flow.aclose)
        async with plug.client(base_url=API, auth=auth) as client:
            assert (await client.get("/refund")).status_code == 200
    assert token_mock.call_count == 1


async def test_a_request_cancelled_at_the_api_leaves_the_auth_usable(
    auth: AnyAuth, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A client.get cancelled while the API is answering leaves the next request working."""

    arrived: list[httpx.Request] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        arrived.append(request)
        await anyio.sleep(10)
        return httpx.Response(200)  # pragma: no cover - always cancelled

    api.side_effect = hang
    await auth.get_token()  # so that the cancellation lands at the API, not the token fetch
    async with plug.client(base_url=API, auth=auth) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.get("/charges/m/1/2")
        assert scope.cancelled_caught
        assert [request.headers["Authorization"] for request in arrived] == [bearer(token_mock, 0)]
        api.side_effect = None
        with anyio.fail_after(2):
            response = await client.get("/charges/m/1/2")
    assert response.status_code == 200
    assert token_mock.call_count == 1
    assert sent(api).headers["Authorization"] == bearer(token_mock, 0)


async def test_a_request_cancelled_while_fetching_leaves_the_auth_usable(
    make_auth: AuthFactory, token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """A client.get cancelled during the token fetch leaves the next request working."""
    auth = await make_auth()
    token_mock.issue(delay=0.3)
    async with plug.client(base_url=API, auth=auth) as client:
        with anyio.move_on_after(0.05) as scope:
            await client.get("/refund")
        assert scope.cancelled_caught
        assert api.call_count == 0
        with anyio.fail_after(2):
            response = await client.get("/refund")
    assert response.status_code == 200
    assert authorizations(api) == [bearer(token_mock, 0)]
    assert len(token_mock.tokens) == 1


# -- life cycle and a borrowed http_client -----------------------------------------------------


async def test_async_with_opens_and_closes(
    token_mock: PaymeTokenMock, api: respx.Route, plug: Plug
) -> None:
    """Inside async with, requests are authenticated; after it, the auth refuses to fetch."""
    async with (
        plug.auth_class(CLIENT_ID, CLIENT_SECRET) as auth,
        plug.client(base_url=API, auth=auth) as client,
    ):
        assert (await client.get("/refund")).status_code == 200
    assert sent(api).headers["Authorization"] == bearer(token_mock, 0)
    with pytest.raises(AuthClosedError):
        await auth.get_token()
    await auth.aclose()
    assert token_mock.call_count == 1


async def test_a_borrowed_client_is_used_but_not_changed(
    make_auth: AuthFactory,
    token_mock: PaymeTokenMock,
    api: respx.Route,
    router: respx.MockRouter,
    plug: Plug,
) -> None:
    """A borrowed client sends the token request without its own auth, and is left as it was."""
    basic = httpx.BasicAuth("u", "p")
    async with httpx.AsyncClient(
        auth=basic, follow_redirects=True, headers={"X-Team": "payments"}
    ) as borrowed:
        headers_before = list(borrowed.headers.multi_items())
        auth = await make_auth(http_client=borrowed)
        async with plug.client(base_url=API, auth=auth) as client:
            assert (await client.get("/refund")).status_code == 200
        await auth.aclose()
        token_request = token_mock.calls[-1].request
        assert "Authorization" not in token_request.headers
        assert json.loads(token_request.content)["client_id"] == CLIENT_ID
        assert sent(api).headers["Authorization"] == bearer(token_mock, 0)
        assert borrowed.is_closed is False
        assert borrowed.auth is basic
        assert borrowed.follow_redirects is True
        assert list(borrowed.headers.multi_items()) == headers_before
        # Still usable, with its own auth, for its owner.
        own = router.get(f"{OTHER}/own").respond(204)
        assert (await borrowed.get(f"{OTHER}/own")).status_code == 204
        assert sent(own).headers["Authorization"] == "Basic dTpw"  # base64("u:p")
    assert token_mock.call_count == 1


async def test_a_borrowed_client_does_not_follow_token_redirects(
    make_auth: AuthFactory,
    token_mock: PaymeTokenMock,
    api: respx.Route,
    router: respx.MockRouter,
    plug: Plug,
) -> None:
    """A token URL answering 307 is an error, even if the borrowed client follows redirects."""
    elsewhere = router.post("https://elsewhere.example/token").respond(200, json=token_answer())
    token_mock.respond(httpx.Response(307, headers={"Location": "https://elsewhere.example/token"}))
    async with httpx.AsyncClient(follow_redirects=True) as borrowed:
        auth = await make_auth(http_client=borrowed)
        async with plug.client(base_url=API, auth=auth) as client:
            with pytest.raises(TokenResponseError) as caught:
                await client.get("/refund")
        assert caught.value.status_code == 307
        assert borrowed.is_closed is False
    assert elsewhere.call_count == 0
    assert api.call_count == 0
    assert token_mock.call_count == 1


async def test_the_api_client_can_be_borrowed_for_tokens(
    token_mock: PaymeTokenMock, api: respx.Route
) -> None:
    """The API client itself can send token requests: they do not go through PaymeAuth."""
    async with httpx.AsyncClient(base_url=API) as client:
        async with PaymeAuth(CLIENT_ID, CLIENT_SECRET, http_client=client) as auth:
            with anyio.fail_after(2):
                response = await client.get("/refund", auth=auth)
        assert response.status_code == 200
        assert client.is_closed is False
    assert "Authorization" not in token_mock.calls[-1].request.headers
    assert sent(api).headers["Authorization"] == bearer(token_mock, 0)
    assert token_mock.call_count == 1


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"client_id": 123}, "client_id must be a string"),
        ({"client_id": ""}, "client_id must be non-empty"),
        ({"client_id": " id"}, "client_id must be non-empty"),
        ({"client_id": "x" * 1025}, "at most 1024"),
        ({"client_id": "id\n"}, "client_id must be non-empty"),
        ({"client_id": "i\td"}, "printable"),
        ({"client_secret": None}, "client_secret must be a string"),
        ({"client_secret": f"{CLIENT_SECRET} "}, "client_secret must be non-empty"),
        ({"client_secret": f"{CLIENT_SECRET}\x00"}, "client_secret must be at most"),
        ({"environment": "preprod"}, "environment must be an Environment"),
        ({"http_client": object()}, "http_client must be an httpx.AsyncClient"),
        ({"retry": 3}, "retry must be a RetryPolicy"),
        ({"assumed_expires_in": 0}, "assumed_expires_in"),
        ({"assumed_expires_in": True}, "assumed_expires_in"),
        ({"assumed_expires_in": 1.5}, "assumed_expires_in"),
        ({"assumed_expires_in": 10**9}, "assumed_expires_in"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": httpx.Timeout(5.0, read=None)}, "must bound every phase"),
        ({"refresh_margin": -1}, "refresh_margin"),
        ({"extra_origins": 443}, "extra_origins must be a list"),
        ({"clock": 1000.0}, "clock must be a callable"),
    ],
)
async def test_invalid_settings_are_refused(kwargs: dict[str, Any], match: str, plug: Plug) -> None:
    """A bad setting raises ConfigurationError naming it, and never shows the secret."""
    arguments: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    arguments.update(kwargs)
    with pytest.raises(ConfigurationError, match=match) as caught:
        plug.auth_class(**arguments)
    assert CLIENT_SECRET not in str(caught.value)


async def test_a_synchronous_http_client_is_refused(plug: Plug) -> None:
    """A synchronous httpx.Client is not accepted as http_client."""
    with httpx.Client() as sync_client, pytest.raises(ConfigurationError, match="AsyncClient"):
        plug.auth_class(CLIENT_ID, CLIENT_SECRET, http_client=sync_client)


@pytest.mark.parametrize(
    ("value", "phases", "whole"),
    [
        (5, (5.0, 5.0, 5.0, 5.0), 5.0),
        (2.5, (2.5, 2.5, 2.5, 2.5), 2.5),
        (httpx.Timeout(5.0), (5.0, 5.0, 5.0, 5.0), 20.0),
        (httpx.Timeout(1.0, connect=2.0, pool=3.0), (2.0, 1.0, 1.0, 3.0), 7.0),
    ],
)
async def test_valid_timeouts_bound_each_phase_and_the_whole_attempt(
    value: float | httpx.Timeout, phases: tuple[float, ...], whole: float, plug: Plug
) -> None:
    """A number of seconds bounds each phase and the whole attempt; a Timeout bounds each of
    its phases, and an attempt by their sum."""
    async with aclosing(plug.auth_class(CLIENT_ID, CLIENT_SECRET, timeout=value)) as auth:
        timeout = auth._settings.http_timeout
        assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == phases
        assert auth._settings.attempt_timeout == whole


@pytest.mark.parametrize("assumed", [None, 1, 300])
async def test_valid_assumed_lifetimes_are_accepted(assumed: int | None, plug: Plug) -> None:
    """None or a positive whole number of seconds is a valid assumed_expires_in."""
    async with aclosing(
        plug.auth_class(CLIENT_ID, CLIENT_SECRET, assumed_expires_in=assumed)
    ) as auth:
        assert auth.client_id == CLIENT_ID


async def test_repr_names_the_client_but_no_secret(plug: Plug) -> None:
    """repr() shows the client id, environment and scopes, never the secret."""
    async with aclosing(
        plug.auth_class(CLIENT_ID, CLIENT_SECRET, scopes=[Scope.POST_CHARGES])
    ) as auth:
        assert repr(auth) == (
            f"{plug.repr_prefix}PaymeAuth(client_id={CLIENT_ID!r}, environment='preprod', "
            "scopes='create:token post:charges')"
        )
        assert CLIENT_SECRET not in repr(auth)
        assert auth.scopes == ("create:token", "post:charges")
        assert auth.environment is Environment.PREPROD


async def test_from_env_reads_the_variables(monkeypatch: pytest.MonkeyPatch, plug: Plug) -> None:
    """from_env() builds a PaymeAuth from PAYME_* variables; keyword arguments override them."""
    for name in ("PAYME_TOKEN_URL", "PAYME_AUDIENCE", "PAYME_API_VERSION", "PAYME_SCOPES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAYME_CLIENT_ID", "env-client")
    monkeypatch.setenv("PAYME_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("PAYME_ENVIRONMENT", "production")
    async with aclosing(plug.auth_class.from_env()) as auth:
        assert auth.client_id == "env-client"
        assert auth.environment is Environment.PRODUCTION
        assert auth.applies_to(plug.http.URL("https://api.alignet.io/charges")) is True
        assert auth.applies_to(plug.http.URL(f"{API}/charges")) is False
    overridden = plug.auth_class.from_env(client_id="other", environment=Environment.PREPROD)
    async with aclosing(overridden):
        assert overridden.client_id == "other"
        assert overridden.environment is Environment.PREPROD
    # A setting given as an argument is not read from the environment at all.
    monkeypatch.setenv("PAYME_ENVIRONMENT", "no-such-environment")
    with pytest.raises(ConfigurationError, match="no-such-environment"):
        plug.auth_class.from_env()
    async with aclosing(plug.auth_class.from_env(environment=Environment.PREPROD)) as auth:
        assert auth.environment is Environment.PREPROD


@pytest.mark.parametrize("missing", ["PAYME_CLIENT_ID", "PAYME_CLIENT_SECRET"])
async def test_from_env_names_a_missing_variable(
    monkeypatch: pytest.MonkeyPatch, missing: str, plug: Plug
) -> None:
    """from_env() without a credential variable raises ConfigurationError naming it."""
    for name in ("PAYME_TOKEN_URL", "PAYME_AUDIENCE", "PAYME_ENVIRONMENT", "PAYME_SCOPES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAYME_CLIENT_ID", "env-client")
    monkeypatch.setenv("PAYME_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigurationError, match=f"{missing} is not set"):
        plug.auth_class.from_env()
