"""The httpx2 plug's own concerns: what httpx2 accepts, its clients and transports, sharing a
provider with the httpx plug, settings that differ, and living beside httpx.

The behaviour both plugs share (origins, headers, the 401 replay...) is tested on both in
tests/test_auth_flow.py.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import anyio
import httpx
import pytest
import respx

pytest.importorskip("httpx2", reason="httpx2 is not installed (payme-auth[httpx2])")

import httpx2

import payme_auth
from payme_auth import (
    AuthClosedError,
    ConfigurationError,
    Environment,
    InvalidCredentialsError,
)
from payme_auth.httpx2 import PaymeAuth
from payme_auth.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    EmulatorServer,
    PaymeEmulator,
    PaymeTokenMock,
    run_emulator,
)

from .conftest import API, CLIENT_ID, CLIENT_SECRET, FAST_RETRY

pytestmark = pytest.mark.anyio

# The in-process emulator's origin: ASGITransport never opens a socket.
LOCAL = "http://127.0.0.1:8000"
LOCAL_ENVIRONMENT = Environment(token_url=f"{LOCAL}/token", audience=f"{LOCAL}/")


@pytest.fixture
def token_router() -> respx.MockRouter:
    """The router of token_mock (see conftest): not started, so only token_client reaches it."""
    return respx.MockRouter(assert_all_mocked=True, assert_all_called=False)


@pytest.fixture
async def token_client(
    token_router: respx.MockRouter, token_mock: PaymeTokenMock
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient whose requests, and no other client's, token_mock answers."""
    transport = httpx.MockTransport(token_router.async_handler)
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


@pytest.fixture
async def emulated() -> AsyncIterator[tuple[PaymeEmulator, PaymeAuth]]:
    """An in-process emulator and an entered httpx2 PaymeAuth whose tokens come from it."""
    emulator = PaymeEmulator()
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as tokens,
        PaymeAuth(
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            environment=LOCAL_ENVIRONMENT,
            http_client=tokens,
            retry=FAST_RETRY,
        ) as auth,
    ):
        yield emulator, auth


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorServer]:
    """One emulator on a free loopback port for this module's network tests."""
    with run_emulator() as server:
        yield server


def api_client(emulator: PaymeEmulator, auth: PaymeAuth) -> httpx2.AsyncClient:
    """An httpx2 client to the in-process emulator's API, through httpx2's ASGI transport."""
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=emulator), base_url=LOCAL, auth=auth
    )


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"amount":'
    yield b"100}"


# -- what each client library accepts -------------------------------------------------------


async def test_each_client_takes_only_its_own_plug() -> None:
    """httpx2 refuses payme_auth.PaymeAuth and httpx refuses the httpx2 plug; each takes its own."""
    async with aclosing(PaymeAuth(CLIENT_ID, CLIENT_SECRET)) as auth:
        core = auth.httpx_auth
        assert isinstance(auth, httpx2.Auth)
        assert httpx.Auth not in type(auth).__mro__
        assert isinstance(core, httpx.Auth)
        with pytest.raises(TypeError, match="auth"):
            httpx2.AsyncClient(auth=core)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="auth"):
            httpx.AsyncClient(auth=auth)  # type: ignore[arg-type]
        async with httpx2.AsyncClient(auth=auth) as client:
            assert client.auth is auth


async def test_httpx_is_left_as_it_is() -> None:
    """httpx2 installs beside httpx under its own names: importing the plug aliases nothing."""
    assert httpx.__name__ == "httpx"
    assert sys.modules["httpx"] is httpx
    assert httpx.AsyncClient.__module__ == "httpx"
    assert httpx2.AsyncClient.__module__ == "httpx2"
    assert not issubclass(httpx2.Auth, httpx.Auth)
    assert issubclass(payme_auth.PaymeAuth, httpx.Auth)
    assert not issubclass(payme_auth.PaymeAuth, httpx2.Auth)


async def test_a_synchronous_client_gets_the_token() -> None:
    """httpx2.Client(auth=...) gets both headers, the token fetched once for every request."""
    with run_emulator() as server:
        auth = PaymeAuth(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=server.environment)

        def send_synchronously() -> list[int]:
            with httpx2.Client(auth=auth, base_url=server.url) as client:
                return [
                    client.post(
                        "/charges", json={"merchant_operation_number": f"{n:04d}"}
                    ).status_code
                    for n in range(3)
                ]

        assert await anyio.to_thread.run_sync(send_synchronously) == [200, 200, 200]
        assert server.emulator.stats.token_requests == 1
        auth.close()


# -- settings that differ -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_an_httpx2_http_client_is_refused(kind: str) -> None:
    """Token requests go through httpx: an httpx2 client as http_client is a clear error."""
    client = httpx2.AsyncClient() if kind == "async" else httpx2.Client()
    try:
        with pytest.raises(ConfigurationError, match=r"pass an httpx\.AsyncClient") as caught:
            PaymeAuth(CLIENT_ID, CLIENT_SECRET, http_client=client)  # type: ignore[arg-type]
        assert CLIENT_SECRET not in str(caught.value)
    finally:
        if isinstance(client, httpx2.AsyncClient):
            await client.aclose()
        else:
            client.close()


async def test_an_httpx_http_client_is_borrowed_for_tokens(
    token_client: httpx.AsyncClient, token_mock: PaymeTokenMock
) -> None:
    """An httpx.AsyncClient sends the token requests and is left open."""
    async with PaymeAuth(CLIENT_ID, CLIENT_SECRET, http_client=token_client) as auth:
        assert (await auth.headers())["Authorization"] == f"Bearer {token_mock.tokens[0]}"
    assert token_mock.call_count == 1
    assert token_client.is_closed is False


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (httpx2.Timeout(5.0), 20.0),
        (httpx2.Timeout(1.0, connect=2.0, pool=3.0), 7.0),
        (httpx.Timeout(4.0), 16.0),
        (2.5, 2.5),
    ],
)
async def test_an_httpx2_timeout_is_taken_phase_by_phase(
    value: float | httpx.Timeout | httpx2.Timeout, seconds: float
) -> None:
    """An httpx2.Timeout becomes the same httpx.Timeout for token requests."""
    async with aclosing(PaymeAuth(CLIENT_ID, CLIENT_SECRET, timeout=value)) as auth:
        settings = auth._settings
        expected = value if isinstance(value, (int, float)) else value.connect
        assert settings.http_timeout.connect == expected
        assert settings.attempt_timeout == pytest.approx(seconds)


async def test_an_unbounded_httpx2_timeout_is_refused() -> None:
    """An httpx2.Timeout with a phase left unbounded is refused like an httpx one."""
    with pytest.raises(ConfigurationError, match="must bound every phase"):
        PaymeAuth(CLIENT_ID, CLIENT_SECRET, timeout=httpx2.Timeout(5.0, read=None))


async def test_the_constructor_takes_the_same_arguments() -> None:
    """Every payme_auth.PaymeAuth argument is accepted, with the same kind and default."""

    def shape(cls: type) -> list[tuple[str, object, object]]:
        parameters = inspect.signature(cls).parameters.values()
        return [(p.name, p.kind, p.default) for p in parameters]

    assert shape(PaymeAuth) == shape(payme_auth.PaymeAuth)


async def test_repr_and_errors_hold_no_secret() -> None:
    """repr() names the plug and the client, never the secret."""
    async with aclosing(PaymeAuth(CLIENT_ID, CLIENT_SECRET)) as auth:
        assert repr(auth).startswith(f"payme_auth.httpx2.PaymeAuth(client_id={CLIENT_ID!r}")
        assert CLIENT_SECRET not in repr(auth)
        assert CLIENT_SECRET not in str(auth)
    with pytest.raises(ConfigurationError) as caught:
        PaymeAuth(CLIENT_ID, f"{CLIENT_SECRET} ")
    assert CLIENT_SECRET not in str(caught.value)


async def test_from_env_builds_the_httpx2_plug(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env() gives an httpx2 PaymeAuth, and refuses an httpx2 http_client like __init__."""
    for name in ("PAYME_TOKEN_URL", "PAYME_AUDIENCE", "PAYME_API_VERSION", "PAYME_SCOPES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAYME_CLIENT_ID", "env-client")
    monkeypatch.setenv("PAYME_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("PAYME_ENVIRONMENT", "production")
    async with aclosing(PaymeAuth.from_env(timeout=httpx2.Timeout(3.0))) as auth:
        assert isinstance(auth, PaymeAuth)
        assert auth.client_id == "env-client"
        assert auth.environment is Environment.PRODUCTION
        assert auth.applies_to(httpx2.URL("https://api.alignet.io/charges")) is True
    async with httpx2.AsyncClient() as wrong:
        with pytest.raises(ConfigurationError, match=r"pass an httpx\.AsyncClient"):
            PaymeAuth.from_env(http_client=wrong)


# -- httpx2 transports ----------------------------------------------------------------------


async def test_through_httpx2_mock_transport(
    token_client: httpx.AsyncClient, token_mock: PaymeTokenMock
) -> None:
    """Through httpx2.MockTransport: both headers on API requests, none elsewhere, a replay."""
    seen: list[tuple[str, str | None, str | None]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        authorization = request.headers.get("Authorization")
        seen.append((request.url.host, authorization, request.headers.get("ALG-API-VERSION")))
        if request.url.path == "/charges" and authorization == f"Bearer {token_mock.tokens[0]}":
            return httpx2.Response(401)
        return httpx2.Response(201 if request.method == "POST" else 200)

    async with (
        PaymeAuth(CLIENT_ID, CLIENT_SECRET, http_client=token_client) as auth,
        httpx2.AsyncClient(auth=auth, transport=httpx2.MockTransport(answer)) as client,
    ):
        assert (await client.get(f"{API}/refund")).status_code == 200
        assert (await client.get("https://other.example/x")).status_code == 200
        replayed = await client.post(f"{API}/charges", json={"amount": 1})
        assert replayed.status_code == 201
        assert [earlier.status_code for earlier in replayed.history] == [401]
        assert auth.stats().replays == 1
    first, second = (f"Bearer {value}" for value in token_mock.tokens)
    host = "api.preprod.alignet.io"
    assert seen == [
        (host, first, "1709847567"),
        ("other.example", None, None),
        (host, first, "1709847567"),
        (host, second, "1709847567"),
    ]


async def test_through_httpx2_asgi_transport(emulated: tuple[PaymeEmulator, PaymeAuth]) -> None:
    """Against the in-process emulator: a charge goes through; a revoked token is replaced."""
    emulator, auth = emulated
    async with api_client(emulator, auth) as api:
        assert (await api.post("/charges", json={"amount": 1})).status_code == 200
        emulator.revoke_tokens()
        response = await api.get("/charges/m/o/t")
    assert response.status_code == 200
    assert [earlier.status_code for earlier in response.history] == [401]
    stats = emulator.stats
    assert (stats.tokens_issued, stats.api_requests, stats.api_unauthorized) == (2, 3, 1)


async def test_a_streamed_body_through_asgi_is_not_replayed(
    emulated: tuple[PaymeEmulator, PaymeAuth],
) -> None:
    """An async-iterator body gets the 401 back, and the next request has a new token."""
    emulator, auth = emulated
    async with api_client(emulator, auth) as api:
        await auth.get_token()
        emulator.revoke_tokens()
        refused = await api.post("/charges", content=_chunks())
        assert refused.status_code == 401
        assert (await api.post("/charges", content=_chunks())).status_code == 200
    assert (emulator.stats.tokens_issued, emulator.stats.api_requests) == (2, 2)


async def test_refused_credentials_reach_the_httpx2_caller() -> None:
    """A token endpoint refusing the credentials raises InvalidCredentialsError from client.get."""
    emulator = PaymeEmulator()
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as tokens,
        PaymeAuth(
            DEFAULT_CLIENT_ID, "wrong-secret", environment=LOCAL_ENVIRONMENT, http_client=tokens
        ) as auth,
        api_client(emulator, auth) as api,
    ):
        with pytest.raises(InvalidCredentialsError):
            await api.get("/charges/m/o/t")
    assert emulator.stats.api_requests == 0


# -- a real socket ----------------------------------------------------------------------------


async def test_over_loopback_with_an_httpx2_client(served: EmulatorServer) -> None:
    """Over a real socket: charges go through, a 401 is replayed, a streamed body is not."""
    served.emulator.reset_stats()
    with anyio.fail_after(10):
        async with (
            PaymeAuth(
                DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=served.environment
            ) as auth,
            httpx2.AsyncClient(base_url=served.url, auth=auth) as api,
        ):
            assert (await api.post("/charges", json={"amount": 1})).status_code == 200
            served.emulator.revoke_tokens()
            assert (await api.delete("/charges/m/o")).status_code == 200  # replayed
            served.emulator.revoke_tokens()
            assert (await api.post("/charges", content=_chunks())).status_code == 401
            assert (await api.post("/charges", content=_chunks())).status_code == 200
    stats = served.emulator.stats
    assert (stats.tokens_issued, stats.api_requests, stats.api_unauthorized) == (3, 5, 2)


# -- one provider for both plugs --------------------------------------------------------------


async def test_from_auth_shares_one_provider() -> None:
    """An httpx2 plug made from an httpx one shares its token, its fetches and its stats."""
    emulator = PaymeEmulator()
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as tokens,
        payme_auth.PaymeAuth(
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            environment=LOCAL_ENVIRONMENT,
            http_client=tokens,
        ) as core,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=emulator), base_url=LOCAL, auth=core
        ) as old_api,
    ):
        plug = PaymeAuth.from_auth(core)
        assert plug.httpx_auth is core
        assert PaymeAuth.from_auth(plug).httpx_auth is core
        async with api_client(emulator, plug) as new_api:
            assert (await old_api.get("/charges/m/o/t")).status_code == 200
            assert (await new_api.get("/charges/m/o/t")).status_code == 200
            assert emulator.stats.tokens_issued == 1
            # A 401 seen by the httpx2 plug renews the token for the httpx one too.
            emulator.revoke_tokens()
            assert (await new_api.get("/charges/m/o/t")).status_code == 200
            assert (await old_api.get("/charges/m/o/t")).status_code == 200
        assert emulator.stats.tokens_issued == 2
        assert emulator.stats.api_unauthorized == 1
        shared, own = plug.stats(), core.stats()
        assert (shared.token_fingerprint, shared.token_requests, shared.replays) == (
            own.token_fingerprint,
            2,
            1,
        )
        assert (await plug.get_token()) is (await core.get_token())
        await plug.aclose()
        with pytest.raises(AuthClosedError):
            await core.get_token()


async def test_from_auth_takes_only_a_payme_auth() -> None:
    """from_auth() with anything but a PaymeAuth raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="from_auth needs a PaymeAuth, not str"):
        PaymeAuth.from_auth("not an auth")  # type: ignore[arg-type]


# -- life cycle -------------------------------------------------------------------------------


@pytest.mark.parametrize("entered", [False, True])
async def test_life_cycle(
    entered: bool, token_client: httpx.AsyncClient, token_mock: PaymeTokenMock
) -> None:
    """Bare or inside async with, the plug fetches, refreshes, invalidates, then closes."""
    auth = PaymeAuth(CLIENT_ID, CLIENT_SECRET, http_client=token_client)
    if entered:
        async with auth as same:
            assert same is auth
            first = await auth.get_token()
    else:
        first = await auth.get_token()
        await auth.aclose()
    assert first.value == token_mock.tokens[0]
    with pytest.raises(AuthClosedError):
        await auth.headers()
    await auth.aclose()  # closing twice is harmless


async def test_token_methods_act_on_the_shared_provider(
    token_client: httpx.AsyncClient, token_mock: PaymeTokenMock
) -> None:
    """get_token, refresh, invalidate and headers behave as payme_auth.PaymeAuth's."""
    async with PaymeAuth(
        CLIENT_ID, CLIENT_SECRET, http_client=token_client, scopes="post:charges"
    ) as auth:
        assert auth.scopes == ("create:token", "post:charges")
        first = await auth.get_token()
        renewed = await auth.refresh()
        assert auth.invalidate(first) is False
        assert await auth.headers() == {
            "Authorization": f"Bearer {token_mock.tokens[1]}",
            "ALG-API-VERSION": "1709847567",
        }
        assert auth.invalidate(renewed) is True
        assert auth.stats().token_requests == 2
        assert (await auth.get_token()).value == token_mock.tokens[2]


# -- importing without httpx2, or with httpx aliased to it --------------------------------------


async def test_importing_without_httpx2_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx2, importing payme_auth.httpx2 says which extra to install."""
    monkeypatch.setitem(sys.modules, "httpx2", None)
    monkeypatch.delitem(sys.modules, "payme_auth.httpx2")
    with pytest.raises(ImportError, match=r"payme-auth\[httpx2\]"):
        import payme_auth.httpx2  # noqa: F401
    assert "payme_auth.httpx2" not in sys.modules


ALIASED = """
import anyio, httpx2
httpx2.alias_httpx()
import httpx
import payme_auth
from payme_auth import Environment, httpx2 as plug2
from payme_auth.testing import PaymeEmulator, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

async def main():
    assert httpx is httpx2
    emulator = PaymeEmulator()
    environment = Environment(token_url="http://127.0.0.1:8000/token",
                              audience="http://127.0.0.1:8000/")
    for cls in (payme_auth.PaymeAuth, plug2.PaymeAuth):
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as tokens,
            cls(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=environment,
                http_client=tokens) as auth,
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=emulator),
                               base_url="http://127.0.0.1:8000", auth=auth) as api,
        ):
            assert (await api.post("/charges", json={})).status_code == 200
            emulator.revoke_tokens()
            assert (await api.post("/charges", json={})).status_code == 200
            assert auth.stats().replays == 1
    print("ok")

anyio.run(main)
"""


def test_both_plugs_work_with_httpx_aliased_to_httpx2() -> None:
    """After httpx2.alias_httpx(), both plugs work, and an httpx(2) http_client is accepted."""
    result = subprocess.run(
        [sys.executable, "-c", ALIASED], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
