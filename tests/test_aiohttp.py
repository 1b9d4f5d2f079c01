"""payme_auth.aiohttp.PaymeAuthMiddleware, through real aiohttp sessions on loopback.

Tokens come from the Pay-me emulator served by ``run_emulator()``; the API is either the
emulator too, or a stub aiohttp server (allowed through ``extra_origins``) that records what
it was sent and answers 401, 403 or a redirect on demand. A second stub, on another loopback
address and never allowed, stands for every other host. aiohttp runs on asyncio only, and
so do these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web

from payme_auth import ConfigurationError, InvalidCredentialsError, PaymeAuth
from payme_auth.aiohttp import PaymeAuthMiddleware
from payme_auth.testing import EmulatorServer

from .conftest import CLIENT_ID, CLIENT_SECRET, FAST_RETRY

pytestmark = pytest.mark.anyio

WAIT = 20.0  # seconds: the bound on every wait in these tests
BURST = 200
LEGACY_VERSION = "1618440906"


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


@attrs.frozen
class Seen:
    """One request as a stub server received it."""

    path: str
    authorization: str | None
    api_versions: tuple[str, ...]
    body: bytes


@attrs.define
class Stub:
    """An aiohttp server on loopback that records requests and answers as asked."""

    url: str = ""
    seen: list[Seen] = attrs.Factory(list)
    revoked: set[str] = attrs.Factory(set)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        body = await request.read()
        self.seen.append(
            Seen(
                path=request.path,
                authorization=authorization,
                api_versions=tuple(request.headers.getall("ALG-API-VERSION", ())),
                body=body,
            )
        )
        if request.path == "/redirect":
            raise web.HTTPTemporaryRedirect(request.query["to"])
        if request.path == "/always-401" or (
            request.path == "/strict" and (authorization is None or authorization in self.revoked)
        ):
            return web.json_response({"message": "Unauthorized"}, status=401)
        if request.path == "/forbidden":
            return web.json_response({"message": "Forbidden"}, status=403)
        return web.Response(body=body or b"ok")


@contextlib.asynccontextmanager
async def serving(host: str) -> AsyncIterator[Stub]:
    """Serve a new :class:`Stub` on *host*, on a free port."""
    stub = Stub()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", stub.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen()
        stub.url = f"http://{host}:{sock.getsockname()[1]}"
        try:
            await web.SockSite(runner, sock).start()
            yield stub
        finally:
            await runner.cleanup()


@pytest.fixture
async def api() -> AsyncIterator[Stub]:
    """A stub API server on 127.0.0.1, which the PaymeAuth allows."""
    async with serving("127.0.0.1") as stub:
        yield stub


@pytest.fixture
async def elsewhere() -> AsyncIterator[Stub]:
    """A stub server on another loopback address, which the PaymeAuth never allows."""
    async with serving("127.0.0.2") as stub:
        yield stub


@pytest.fixture
async def auth(emulator_server: EmulatorServer, api: Stub) -> AsyncIterator[PaymeAuth]:
    """A PaymeAuth for the emulator, also allowing the stub API's origin."""
    async with PaymeAuth(
        CLIENT_ID,
        CLIENT_SECRET,
        environment=emulator_server.environment,
        extra_origins=[api.url],
        retry=FAST_RETRY,
    ) as auth:
        yield auth


@contextlib.asynccontextmanager
async def session_for(
    auth: Any, *more: aiohttp.ClientMiddlewareType
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose first middleware is PaymeAuthMiddleware(auth), then *more*."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(
        middlewares=(PaymeAuthMiddleware(auth), *more), timeout=timeout
    ) as session:
        yield session


async def call(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, bytes]:
    """Send one request; return its status and body."""
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.read()


def charge(number: int) -> dict[str, str]:
    """A charge for the emulator's POST /charges."""
    return {"merchant_code": "SHOP42", "merchant_operation_number": f"{number:012d}"}


def gate(count: int) -> aiohttp.ClientMiddlewareType:
    """A middleware that holds every request until *count* requests have reached it."""
    arrived = 0
    everyone = asyncio.Event()

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        nonlocal arrived
        arrived += 1
        if arrived >= count:
            everyone.set()
        await everyone.wait()
        return await handler(request)

    return middleware


# -- what it accepts -----------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["a token", None, object(), PaymeAuthMiddleware])
def test_refuses_anything_but_a_payme_auth(wrong: object) -> None:
    """Anything but a PaymeAuth is refused with ConfigurationError naming its type."""
    expected = rf"^PaymeAuthMiddleware needs a payme_auth\.PaymeAuth, not {type(wrong).__name__}$"
    with pytest.raises(ConfigurationError, match=expected):
        PaymeAuthMiddleware(wrong)  # type: ignore[arg-type]


def test_import_without_aiohttp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiohttp, importing payme_auth.aiohttp raises an ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    monkeypatch.delitem(sys.modules, "payme_auth.aiohttp")
    with pytest.raises(ImportError, match=r"pip install 'payme-auth\[aiohttp\]'"):
        importlib.import_module("payme_auth.aiohttp")


async def test_repr_shows_no_secret(auth: PaymeAuth) -> None:
    """The middleware's repr names the client id, never the secret nor the token."""
    token = await auth.get_token()
    text = repr(PaymeAuthMiddleware(auth))
    assert CLIENT_ID in text
    assert CLIENT_SECRET not in text
    assert token.value not in text


async def test_accepts_the_httpx2_plug(auth: PaymeAuth, emulator_server: EmulatorServer) -> None:
    """Given the httpx2 plug, the middleware uses the same token and stats as its PaymeAuth."""
    pytest.importorskip("httpx2", reason="httpx2 is not installed (payme-auth[httpx2])")
    from payme_auth.httpx2 import PaymeAuth as Httpx2PaymeAuth

    httpx2_plug = Httpx2PaymeAuth.from_auth(auth)
    token = await auth.get_token()
    async with session_for(httpx2_plug) as session:
        status, _ = await call(session, "POST", f"{emulator_server.url}/charges", json=charge(1))

    assert status == 200
    assert emulator_server.emulator.stats.token_requests == 1
    assert auth.stats().token_fingerprint == token.fingerprint


async def test_applies_to_the_allowed_origins_only(
    auth: PaymeAuth, emulator_server: EmulatorServer, api: Stub, elsewhere: Stub
) -> None:
    """applies_to is true for the audience's and the extra origins, false for the others."""
    middleware = PaymeAuthMiddleware(auth)
    assert middleware.applies_to(f"{emulator_server.url}/charges")
    assert middleware.applies_to(f"{api.url}/anything?x=1")
    assert not middleware.applies_to(f"{elsewhere.url}/charges")
    assert not middleware.applies_to(emulator_server.url.replace("http:", "https:"))
    assert not middleware.applies_to("/charges")


# -- one token for many requests ------------------------------------------------------------


async def test_concurrent_calls_share_one_token(
    auth: PaymeAuth, emulator_server: EmulatorServer
) -> None:
    """200 concurrent calls with no token cached all succeed after one token request."""
    emulator = emulator_server.emulator
    emulator.token_latency = 0.05  # every call arrives while the one fetch is in flight
    statuses: list[int] = []
    url = f"{emulator_server.url}/charges"

    async with session_for(auth) as session:

        async def pay(number: int) -> None:
            statuses.append((await call(session, "POST", url, json=charge(number)))[0])

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for number in range(BURST):
                    tg.start_soon(pay, number)

    # The emulator answers 400 to a call without ALG-API-VERSION and 401 without a token.
    assert statuses == [200] * BURST
    stats = emulator.stats
    assert (stats.token_requests, stats.tokens_issued) == (1, 1)
    assert (stats.api_requests, stats.api_unauthorized) == (BURST, 0)
    assert auth.stats().replays == 0


async def test_revoked_token_replays_each_request_once(
    auth: PaymeAuth, emulator_server: EmulatorServer
) -> None:
    """After a revocation, every request sent with the old token is replayed once, and all
    of them share one new token; the replays are counted in stats().

    The gate holds the first attempts until all of them are in flight with the old token,
    which also checks that no lock is held across the next handler's call.
    """
    emulator = emulator_server.emulator
    url = f"{emulator_server.url}/charges"
    statuses: list[int] = []
    with anyio.fail_after(WAIT):
        async with session_for(auth) as warm:
            assert (await call(warm, "POST", url, json=charge(0)))[0] == 200
        assert emulator.revoke_tokens() == 1
        async with session_for(auth, gate(BURST)) as session:

            async def pay(number: int) -> None:
                statuses.append((await call(session, "POST", url, json=charge(number)))[0])

            async with anyio.create_task_group() as tg:
                for number in range(1, BURST + 1):
                    tg.start_soon(pay, number)

    assert statuses == [200] * BURST
    stats = emulator.stats
    assert (stats.token_requests, stats.tokens_issued) == (2, 2)
    assert stats.api_unauthorized == BURST
    assert stats.api_requests == 1 + 2 * BURST
    assert auth.stats().replays == BURST
    assert auth.stats().tokens_obtained == 2


# -- where the token goes ------------------------------------------------------------------


async def test_other_origin_gets_no_token(
    auth: PaymeAuth, emulator_server: EmulatorServer, elsewhere: Stub
) -> None:
    """A request to another origin is sent untouched, and fetches no token."""
    async with session_for(auth) as session:
        status, _ = await call(session, "POST", f"{elsewhere.url}/charges", json=charge(1))

    assert status == 200
    assert [(s.authorization, s.api_versions) for s in elsewhere.seen] == [(None, ())]
    assert emulator_server.emulator.stats.token_requests == 0


async def test_401_from_other_origin_is_left_alone(
    auth: PaymeAuth, emulator_server: EmulatorServer, elsewhere: Stub
) -> None:
    """A 401 from another origin goes back as is and drops no token."""
    token = await auth.get_token()
    async with session_for(auth) as session:
        status, _ = await call(session, "GET", f"{elsewhere.url}/always-401")

    assert status == 401
    assert len(elsewhere.seen) == 1
    assert auth.stats().token_fingerprint == token.fingerprint
    assert emulator_server.emulator.stats.token_requests == 1


async def test_redirect_to_another_host_gets_no_token(
    auth: PaymeAuth, api: Stub, elsewhere: Stub
) -> None:
    """A redirect from the API to another host reaches it without the token."""
    target = f"{elsewhere.url}/echo"
    async with session_for(auth) as session:
        status, body = await call(
            session, "POST", f"{api.url}/redirect", params={"to": target}, data=b"payload"
        )

    assert (status, body) == (200, b"payload")  # a 307 keeps the body
    assert [s.path for s in api.seen] == ["/redirect"]
    assert api.seen[0].authorization is not None
    assert [(s.path, s.authorization, s.api_versions) for s in elsewhere.seen] == [
        ("/echo", None, ())
    ]


async def test_redirect_to_the_api_gets_the_token(
    auth: PaymeAuth, api: Stub, elsewhere: Stub
) -> None:
    """aiohttp runs the middleware on every redirect hop: a hop to the API gets the token."""
    token = await auth.get_token()
    async with session_for(auth) as session:
        status, _ = await call(
            session, "GET", f"{elsewhere.url}/redirect", params={"to": f"{api.url}/echo"}
        )

    assert status == 200
    assert [(s.path, s.authorization) for s in elsewhere.seen] == [("/redirect", None)]
    assert [(s.path, s.authorization) for s in api.seen] == [("/echo", token.authorization)]


async def test_callers_api_version_is_kept(auth: PaymeAuth, api: Stub) -> None:
    """A caller's own ALG-API-VERSION is sent as is, once; the default fills in otherwise."""
    async with session_for(auth) as session:
        await call(session, "GET", f"{api.url}/echo", headers={"alg-api-version": LEGACY_VERSION})
        await call(session, "GET", f"{api.url}/echo")

    assert [s.api_versions for s in api.seen] == [
        (LEGACY_VERSION,),
        (auth.environment.api_version,),
    ]


# -- 401, 403 and replays ------------------------------------------------------------------


def _multipart() -> aiohttp.FormData:
    return aiohttp.FormData({"amount": "10.00", "currency": "PEN"}, default_to_multipart=True)


REPLAYABLE: dict[str, Callable[[], dict[str, Any]]] = {
    "none": dict,
    "bytes": lambda: {"data": b"\x00raw bytes"},
    "str": lambda: {"data": "texto con acentos: ñ"},
    "json": lambda: {"json": {"amount": "10.00"}},
    "form": lambda: {"data": {"amount": "10.00", "currency": "PEN"}},
    "multipart": lambda: {"data": _multipart()},
}


@pytest.mark.parametrize("kind", sorted(REPLAYABLE))
async def test_in_memory_body_is_replayed_whole(
    kind: str, auth: PaymeAuth, api: Stub, emulator_server: EmulatorServer
) -> None:
    """After a 401, a request whose body is in memory is replayed once with a new token,
    the same body sent again in full."""
    token = await auth.get_token()
    api.revoked.add(token.authorization)
    async with session_for(auth) as session:
        status, _ = await call(session, "POST", f"{api.url}/strict", **REPLAYABLE[kind]())

    assert status == 200
    first, second = api.seen
    assert first.authorization == token.authorization
    assert second.authorization not in (None, token.authorization)
    assert second.body == first.body
    assert (len(first.body) > 0) == (kind != "none")
    assert auth.stats().replays == 1
    assert emulator_server.emulator.stats.token_requests == 2


async def _chunks() -> AsyncIterator[bytes]:
    for chunk in (b"streamed ", b"body"):
        yield chunk


STREAMED: dict[str, Callable[[], object]] = {
    "async iterator": _chunks,
    "file": lambda: io.BytesIO(b"a file's content"),
}


@pytest.mark.parametrize("kind", sorted(STREAMED))
async def test_streamed_body_is_not_replayed(
    kind: str, auth: PaymeAuth, api: Stub, emulator_server: EmulatorServer
) -> None:
    """After a 401, a streamed body is not sent again: the caller gets the 401, the token is
    dropped, and the next request gets a new one."""
    token = await auth.get_token()
    api.revoked.add(token.authorization)
    async with session_for(auth) as session:
        status, body = await call(session, "POST", f"{api.url}/strict", data=STREAMED[kind]())
        assert (status, json.loads(body)) == (401, {"message": "Unauthorized"})
        assert len(api.seen) == 1
        assert auth.stats().state == "none"
        assert auth.stats().replays == 0
        status, _ = await call(session, "POST", f"{api.url}/strict", data=b"next")

    assert status == 200
    assert api.seen[1].authorization not in (None, token.authorization)
    assert emulator_server.emulator.stats.token_requests == 2


async def test_streamed_body_to_the_emulator_gets_its_401(
    auth: PaymeAuth, emulator_server: EmulatorServer
) -> None:
    """With a revoked token and a streamed body, the emulator's 401 reaches the caller."""
    emulator = emulator_server.emulator
    await auth.get_token()
    emulator.revoke_tokens()

    async def body() -> AsyncIterator[bytes]:
        yield json.dumps(charge(1)).encode()

    async with session_for(auth) as session:
        status, _ = await call(session, "POST", f"{emulator_server.url}/charges", data=body())

    assert status == 401
    assert (emulator.stats.api_requests, emulator.stats.api_unauthorized) == (1, 1)
    assert auth.stats().replays == 0


async def test_second_401_is_returned_as_is(
    auth: PaymeAuth, api: Stub, emulator_server: EmulatorServer
) -> None:
    """A 401 to the replay goes back to the caller, readable, with no third attempt."""
    async with session_for(auth) as session:
        status, body = await call(session, "POST", f"{api.url}/always-401", json={"a": 1})

    assert (status, json.loads(body)) == (401, {"message": "Unauthorized"})
    first, second = api.seen
    assert first.authorization != second.authorization
    assert auth.stats().replays == 1
    assert emulator_server.emulator.stats.token_requests == 2


async def test_403_is_returned_as_is(auth: PaymeAuth, api: Stub) -> None:
    """A 403 from the stub API goes back to the caller; the token stays, nothing replayed."""
    token = await auth.get_token()
    async with session_for(auth) as session:
        status, body = await call(session, "POST", f"{api.url}/forbidden", json={"a": 1})

    assert (status, json.loads(body)) == (403, {"message": "Forbidden"})
    assert len(api.seen) == 1
    assert auth.stats().token_fingerprint == token.fingerprint
    assert auth.stats().replays == 0


async def test_403_from_the_emulator_for_a_missing_scope(
    emulator_server: EmulatorServer,
) -> None:
    """A token without post:charges gets the emulator's 403, as is, and keeps its token."""
    emulator = emulator_server.emulator
    emulator.add_client(CLIENT_ID, CLIENT_SECRET, scopes="get:charges")
    async with PaymeAuth(
        CLIENT_ID, CLIENT_SECRET, environment=emulator_server.environment, scopes="get:charges"
    ) as auth:
        async with session_for(auth) as session:
            url = f"{emulator_server.url}/charges"
            status, _ = await call(session, "POST", url, json=charge(1))
        stats = auth.stats()

    assert status == 403
    assert (emulator.stats.api_requests, emulator.stats.api_forbidden) == (1, 1)
    assert (stats.state, stats.replays, stats.token_requests) == ("fresh", 0, 1)


async def test_token_error_reaches_the_caller(emulator_server: EmulatorServer, api: Stub) -> None:
    """With refused credentials the request raises InvalidCredentialsError and is not sent."""
    async with (
        PaymeAuth(
            CLIENT_ID,
            "WRONG-" + CLIENT_SECRET,
            environment=emulator_server.environment,
            extra_origins=[api.url],
        ) as auth,
        session_for(auth) as session,
    ):
        with pytest.raises(InvalidCredentialsError) as caught:
            await call(session, "GET", f"{api.url}/echo")

    assert CLIENT_SECRET not in str(caught.value)
    assert api.seen == []
