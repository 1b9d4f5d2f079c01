"""The pytest plugin (run on small user-style suites through pytester) and PaymeTokenMock."""

from __future__ import annotations

import importlib.metadata
import json
import random
import sys
import textwrap
from typing import Any

import anyio
import httpx
import pytest
import respx

from payme_auth import (
    ConfigurationError,
    Environment,
    InsufficientScopeError,
    InvalidCredentialsError,
    PaymeAuth,
    TokenEndpointUnavailableError,
    TokenRefusedError,
    TokenResponseError,
)
from payme_auth.testing import (
    Credentials,
    EmulatorStats,
    Fault,
    PaymeEmulator,
    PaymeTokenMock,
    TokenCall,
)

from .conftest import CLIENT_ID, CLIENT_SECRET, FAST_RETRY, TOKEN_MARK, new_token_value

pytest_plugins = ["pytester"]

API = "https://api.preprod.alignet.io"
PLUGIN = "payme_auth.testing.pytest_plugin"

# -- user suites, run in-process by pytester ---------------------------------------------------

USER_CONFTEST = f"""
import pytest

pytest_plugins = ["{PLUGIN}"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

# The user's suite is as strict as ours: any warning (an unawaited coroutine, an unclosed
# resource, a task destroyed while pending) fails it.
USER_INI = """
[pytest]
filterwarnings = error
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory for a user's suite that enables the plugin in its conftest.py."""
    pytester.makeconftest(USER_CONFTEST)
    pytester.makeini(USER_INI)
    return pytester


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Write *source* as the user's test module and run pytest on it, in this process."""
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider", *args)


def test_emulator_fixtures_on_both_backends(suite: pytest.Pytester) -> None:
    """payme_emulator, payme_environment, payme_credentials and payme_auth work together."""
    result = run(
        suite,
        """
        import anyio
        import httpx
        import pytest
        from payme_auth import PaymeAuth

        pytestmark = pytest.mark.anyio


        async def test_charge(payme_auth, payme_emulator):
            with anyio.fail_after(10):
                async with httpx.AsyncClient(base_url=payme_emulator.url, auth=payme_auth) as api:
                    response = await api.post("/charges", json={"merchant_operation_number": "1"})
            assert response.status_code == 200
            assert payme_emulator.emulator.stats.token_requests == 1


        async def test_own_auth(payme_environment, payme_credentials, payme_emulator):
            assert payme_environment == payme_emulator.environment
            assert payme_credentials.client_id == payme_emulator.emulator.client_id
            assert payme_emulator.emulator.client_secret not in repr(payme_credentials)
            with anyio.fail_after(10):
                async with PaymeAuth(
                    **payme_credentials.as_kwargs(), environment=payme_environment
                ) as auth:
                    token = await auth.get_token()
            assert token.expires_in == 8600
        """,
        "-v",
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_charge?asyncio? PASSED*", "*test_charge?trio? PASSED*"])


def test_plugin_enabled_on_the_command_line(pytester: pytest.Pytester) -> None:
    """``-p payme_auth.testing.pytest_plugin`` enables it without a conftest.py line."""
    pytester.makeini(USER_INI)
    source = """
        def test_fixtures(payme_emulator, payme_token_mock):
            assert payme_emulator.url.startswith("http://127.0.0.1:")
            assert payme_token_mock.active
        """
    run(pytester, source, "-p", PLUGIN).assert_outcomes(passed=1)
    without = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider")
    without.assert_outcomes(errors=1)
    without.stdout.fnmatch_lines(["*fixture 'payme_emulator' not found*"])


def test_plugin_is_opt_in() -> None:
    """No pytest11 entry point registers the plugin: a project enables it explicitly."""
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert not [entry for entry in plugins if entry.value.startswith("payme_auth")]


def test_emulator_is_reset_between_tests(suite: pytest.Pytester) -> None:
    """One server for the session, with knobs, clients, faults, tokens and counters reset."""
    result = run(
        suite,
        """
        import anyio
        import pytest
        from payme_auth import InvalidCredentialsError, PaymeAuth
        from payme_auth.testing import EmulatorStats, Fault

        pytestmark = pytest.mark.anyio
        URLS = set()


        async def test_first_changes_everything(payme_emulator, payme_auth):
            URLS.add(payme_emulator.url)
            emulator = payme_emulator.emulator
            with anyio.fail_after(10):
                await payme_auth.get_token()
            emulator.token_lifetime = 5
            emulator.token_latency = emulator.api_latency = 0.5
            emulator.token_failure_rate = 1.0
            emulator.add_client("other", "other-secret")
            emulator.inject(Fault(status=500), times=3)


        async def test_second_sees_it_new(payme_emulator, payme_auth):
            URLS.add(payme_emulator.url)
            emulator = payme_emulator.emulator
            assert emulator.stats == EmulatorStats()
            assert emulator.token_lifetime == 8600
            assert emulator.token_latency == emulator.api_latency == 0.0
            assert emulator.token_failure_rate == 0.0
            assert emulator.clear_faults() == 0
            assert emulator.revoke_tokens() == 0
            other = PaymeAuth("other", "other-secret", environment=payme_emulator.environment)
            with anyio.fail_after(10):
                assert (await payme_auth.get_token()).expires_in == 8600
                with pytest.raises(InvalidCredentialsError):
                    await other.get_token()


        def test_one_server(payme_emulator, payme_emulator_session):
            assert payme_emulator is payme_emulator_session
            assert URLS == {payme_emulator.url}
        """,
    )
    result.assert_outcomes(passed=5)


def test_factory_settings_and_closing(suite: pytest.Pytester) -> None:
    """payme_auth_factory takes overrides; what it built is closed after the test."""
    result = run(
        suite,
        """
        import anyio
        import httpx
        import pytest
        from payme_auth import AuthClosedError
        from payme_auth.testing.pytest_plugin import TEST_RETRY

        pytestmark = pytest.mark.anyio
        KEPT = []


        async def test_overrides(payme_auth_factory, payme_emulator, payme_auth):
            auth = payme_auth_factory(scopes=["get:charges"])
            KEPT.extend([auth, payme_auth])
            assert auth is not payme_auth
            with anyio.fail_after(10):
                assert (await auth.get_token()).scope == {"create:token", "get:charges"}
                async with httpx.AsyncClient(base_url=payme_emulator.url, auth=auth) as api:
                    assert (await api.post("/charges", json={})).status_code == 403


        async def test_kept_instances_are_closed():
            assert len(KEPT) >= 2
            for auth in KEPT:
                assert auth.stats().state == "closed"
                with pytest.raises(AuthClosedError):
                    await auth.get_token()


        def test_retry_is_quick():
            assert TEST_RETRY.attempts == 3
            assert TEST_RETRY.max_backoff <= 0.1
        """,
    )
    result.assert_outcomes(passed=5)


def test_refusals_and_outages_reach_the_user_test(suite: pytest.Pytester) -> None:
    """A user test sees the typed errors; one that expected a token fails with the error."""
    result = run(
        suite,
        """
        import anyio
        import pytest
        from payme_auth import InvalidCredentialsError, PaymeAuth, TokenEndpointUnavailableError
        from payme_auth.testing import Fault

        pytestmark = pytest.mark.anyio


        async def test_wrong_secret(payme_auth_factory):
            auth = payme_auth_factory(client_secret="not-the-secret")
            with anyio.fail_after(10), pytest.raises(InvalidCredentialsError) as caught:
                await auth.get_token()
            assert caught.value.status_code == 401


        async def test_outage(payme_auth, payme_emulator):
            payme_emulator.emulator.inject(Fault(status=503, headers={"Retry-After": "0"}), times=3)
            with anyio.fail_after(10), pytest.raises(TokenEndpointUnavailableError) as caught:
                await payme_auth.get_token()
            assert caught.value.attempts == 3


        async def test_expects_a_token_but_is_refused(payme_token_mock):
            payme_token_mock.refuse(401)
            with anyio.fail_after(10):
                await PaymeAuth("client-id", "client-secret").get_token()
        """,
    )
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*: InvalidCredentialsError",
            "FAILED *test_expects_a_token_but_is_refused?asyncio?*",
            "FAILED *test_expects_a_token_but_is_refused?trio?*",
        ]
    )


def test_token_mock_fixture_with_the_users_respx_routes(suite: pytest.Pytester) -> None:
    """payme_token_mock answers the token URLs; respx_mock answers the API; one token."""
    result = run(
        suite,
        """
        import anyio
        import httpx
        import pytest
        from payme_auth import Environment, PaymeAuth

        pytestmark = pytest.mark.anyio
        API = "https://api.preprod.alignet.io"


        async def test_concurrent_charges(payme_token_mock, respx_mock):
            route = respx_mock.post(f"{API}/charges").respond(200, json={"success": True})
            statuses = []

            async def charge(api):
                statuses.append((await api.post("/charges", json={})).status_code)

            with anyio.fail_after(10):
                async with (
                    PaymeAuth("client-id", "client-secret") as auth,
                    httpx.AsyncClient(base_url=API, auth=auth) as api,
                    anyio.create_task_group() as tg,
                ):
                    for _ in range(20):
                        tg.start_soon(charge, api)
            assert statuses == [200] * 20
            assert payme_token_mock.call_count == 1
            token = payme_token_mock.tokens[0]
            assert route.calls.last.request.headers["Authorization"] == f"Bearer {token}"
            assert payme_token_mock.requests[0]["client_secret"] == "client-secret"


        async def test_production_too(payme_token_mock):
            auth = PaymeAuth("client-id", "client-secret", environment=Environment.PRODUCTION)
            with anyio.fail_after(10):
                await auth.get_token()
            assert payme_token_mock.calls[0].url == Environment.PRODUCTION.token_url


        async def test_unmocked_api_is_an_error(payme_token_mock):
            with anyio.fail_after(10):
                async with (
                    PaymeAuth("client-id", "client-secret") as auth,
                    httpx.AsyncClient(base_url=API, auth=auth) as api,
                ):
                    with pytest.raises(AssertionError, match="not mocked"):
                        await api.post("/charges", json={})
            assert payme_token_mock.call_count == 1
        """,
    )
    result.assert_outcomes(passed=6)


def test_unused_answers_fail_only_a_passing_test(suite: pytest.Pytester) -> None:
    """Queued answers never asked for are an error at teardown, unless the test failed."""
    result = run(
        suite,
        """
        def test_leaves_a_token_unused(payme_token_mock):
            payme_token_mock.issue()


        def test_fails_on_its_own(payme_token_mock):
            payme_token_mock.refuse(403)
            assert False, "the test's own failure"
        """,
    )
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 queued answer(s) never asked for: token*"])
    assert "never asked for: refusal" not in result.stdout.str()


def test_renewal_in_flight_at_teardown(suite: pytest.Pytester) -> None:
    """A background renewal still running when the test ends leaves no error or warning.

    An async fixture set up first keeps the test's event loop alive, idle, while the
    PaymeAuth is closed; the instance ends up closed all the same.
    """
    result = run(
        suite,
        """
        import anyio
        import pytest

        pytestmark = pytest.mark.anyio
        KEPT = []


        class Clock:
            now = 1000.0

            def __call__(self):
                return self.now


        @pytest.fixture
        async def loop_holder(anyio_backend):
            yield


        async def test_leaves_a_renewal_running(loop_holder, payme_auth_factory, payme_emulator):
            clock = Clock()
            auth = payme_auth_factory(clock=clock)
            KEPT.append(auth)
            with anyio.fail_after(10):
                await auth.get_token()
                payme_emulator.emulator.token_latency = 1.0
                clock.now += 8000  # into the advisory window: a background renewal starts
                await auth.get_token()
                await anyio.sleep(0.05)
            assert auth.stats().state == "renewing"


        def test_it_was_closed():
            assert [auth.stats().state for auth in KEPT] == ["closed", "closed"]
        """,
    )
    result.assert_outcomes(passed=3)


# -- PaymeTokenMock, directly ------------------------------------------------------------------


def make_auth(**settings: Any) -> PaymeAuth:
    settings.setdefault("retry", FAST_RETRY)
    return PaymeAuth(CLIENT_ID, CLIENT_SECRET, **settings)


@pytest.mark.anyio
async def test_default_answer_is_a_documented_token() -> None:
    """With nothing queued, a token of the documented shape is issued for the scope asked."""
    with PaymeTokenMock() as mock:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                Environment.PREPROD.token_url,
                json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "a b"},
            )
    body = response.json()
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert body["access_token"] == mock.tokens[0]
    assert (body["action"], body["success"], body["token_type"]) == ("authorize", True, "Bearer")
    assert (body["scope"], body["expires_in"]) == ("a b", 8600)
    assert body["authorization"]["meta"]["status"]["code"] == "00"
    assert mock.calls[0].scopes == ("a", "b")


@pytest.mark.anyio
async def test_issue_options() -> None:
    """expires_in (int, digits or absent), scope, token and times shape the answers."""
    value = new_token_value()
    with PaymeTokenMock(expires_in=120) as mock:
        mock.issue(expires_in="60", scope=["create:token", "get:charges"], token=value)
        mock.issue(expires_in=None, times=2)
        first = await make_auth().get_token()
        second = await make_auth(assumed_expires_in=30).get_token()
        third = await make_auth().get_token()
        fourth = await make_auth().get_token()
    assert (first.value, first.expires_in) == (value, 60)
    assert first.scope == {"create:token", "get:charges"}
    assert second.expires_in == 30
    assert fourth.expires_in == 120
    assert mock.tokens == (value, second.value, third.value, fourth.value)
    assert len(set(mock.tokens)) == 4
    assert [call.answer for call in mock.calls] == ["token"] * 4


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "error"),
    [(401, InvalidCredentialsError), (403, InsufficientScopeError), (400, TokenRefusedError)],
)
async def test_refusals_are_typed_and_not_retried(status: int, error: type[Exception]) -> None:
    """A refusal carries Pay-me's envelope and is raised at once, with one request."""
    with PaymeTokenMock() as mock:
        mock.refuse(status, code="07", message="nope")
        with pytest.raises(error) as caught:
            await make_auth().get_token()
    assert isinstance(caught.value, TokenRefusedError)
    assert (caught.value.status_code, caught.value.code, caught.value.detail) == (
        status,
        "07",
        "nope",
    )
    assert mock.call_count == 1
    assert (mock.calls[0].answer, mock.calls[0].status) == ("refusal", status)


@pytest.mark.anyio
async def test_failures_are_retried_with_retry_after() -> None:
    """fail() answers are retried; enough of them exhaust the attempts, Retry-After kept."""
    with PaymeTokenMock() as mock:
        mock.fail(503, retry_after=0).fail(429).disconnect().fail(502, retry_after="0")
        mock.issue()
        with pytest.raises(TokenEndpointUnavailableError) as caught:
            await make_auth().get_token()
        token = await make_auth().get_token()
    assert caught.value.attempts == 3
    assert caught.value.status_code is None  # the last attempt was the disconnect
    answers = [(call.answer, call.status) for call in mock.calls]
    assert answers == [
        ("failure", 503),
        ("failure", 429),
        ("disconnect", None),
        ("failure", 502),
        ("token", 200),
    ]
    assert mock.calls[0].request.method == "POST"
    assert token.value == mock.tokens[0]


@pytest.mark.anyio
async def test_retry_after_is_sent() -> None:
    """A failure's Retry-After reaches the error when it is longer than the policy allows."""
    with PaymeTokenMock() as mock:
        mock.fail(503, retry_after=120)
        with pytest.raises(TokenEndpointUnavailableError) as caught:
            await make_auth().get_token()
    assert caught.value.retry_after == 120
    assert mock.call_count == 1


@pytest.mark.anyio
async def test_hang_is_ended_by_the_client_timeout() -> None:
    """A hung request ends with the client's timeout; a token follows on the next attempt."""
    with PaymeTokenMock() as mock:
        mock.hang()
        with anyio.fail_after(5):
            token = await make_auth(timeout=0.1).get_token()
    assert [call.answer for call in mock.calls] == ["hang", "token"]
    assert token.value == mock.tokens[0]


@pytest.mark.anyio
async def test_respond_serves_a_response_of_your_own() -> None:
    """respond() answers with the given status, headers and body, as often as asked."""
    with PaymeTokenMock() as mock:
        mock.respond(httpx.Response(200, json={"success": False}, headers={"x-a": "1"}), times=2)
        with pytest.raises(TokenResponseError):
            await make_auth().get_token()
        async with httpx.AsyncClient() as client:
            raw = await client.post(Environment.PRODUCTION.token_url, json={})
    assert (raw.status_code, raw.json(), raw.headers["x-a"]) == (200, {"success": False}, "1")
    assert [call.answer for call in mock.calls] == ["response", "response"]


@pytest.mark.anyio
async def test_one_token_request_for_concurrent_callers() -> None:
    """A delayed answer is shared: 50 concurrent callers cost one request."""
    tokens: list[str] = []
    auth = make_auth()

    async def call() -> None:
        tokens.append((await auth.get_token()).value)

    with PaymeTokenMock() as mock:
        mock.issue(delay=0.05)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(call)
    assert mock.call_count == 1
    assert tokens == [mock.tokens[0]] * 50


@pytest.mark.anyio
async def test_delayed_disconnect_and_refusal() -> None:
    """delay applies to every kind of answer, the connection error included."""
    with PaymeTokenMock() as mock:
        mock.disconnect(delay=0.02).refuse(401, delay=0.02)
        started = anyio.current_time()
        with pytest.raises(InvalidCredentialsError):
            await make_auth().get_token()
    assert anyio.current_time() - started >= 0.04
    assert [call.answer for call in mock.calls] == ["disconnect", "refusal"]


@pytest.mark.anyio
async def test_required_credentials() -> None:
    """With credentials given, other ones get 401 without using up a queued answer."""
    with PaymeTokenMock(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as mock:
        mock.issue(expires_in=77)
        with pytest.raises(InvalidCredentialsError):
            await PaymeAuth(CLIENT_ID, "wrong-secret", retry=FAST_RETRY).get_token()
        assert mock.pending == 1
        token = await make_auth().get_token()
    assert token.expires_in == 77
    assert [call.client_id for call in mock.calls] == [CLIENT_ID, CLIENT_ID]


@pytest.mark.anyio
async def test_body_that_is_not_a_json_object_gets_400() -> None:
    """A body that is not a JSON object is refused (400) and recorded with no body."""
    with PaymeTokenMock() as mock:
        mock.issue()
        async with httpx.AsyncClient() as client:
            bad = await client.post(Environment.PREPROD.token_url, content=b"[1, 2]")
            good = await client.post(Environment.PREPROD.token_url, json={"scope": "x"})
    assert (bad.status_code, good.status_code) == (400, 200)
    assert mock.calls[0].body is None
    assert mock.calls[0].client_id is None
    assert mock.calls[0].scopes == ()
    assert mock.requests == ({"scope": "x"},)


@pytest.mark.anyio
async def test_only_the_given_environments_are_mocked() -> None:
    """With one environment, only its token URL is mocked; other URLs are not answered."""
    custom = Environment(token_url="https://auth.example.test/token", audience=API + "/")
    with PaymeTokenMock([custom]) as mock:
        token = await make_auth(environment=custom).get_token()
        async with httpx.AsyncClient() as client:
            with pytest.raises(AssertionError, match="not mocked"):
                await client.post(Environment.PREPROD.token_url, json={})
    assert mock.environments == (custom,)
    assert mock.calls[0].url == custom.token_url
    assert mock.calls[0].audience == API + "/"
    assert token.value == mock.tokens[0]


@pytest.mark.anyio
@pytest.mark.parametrize("mock_first", [True, False])
async def test_composes_with_another_respx_router(mock_first: bool) -> None:
    """Started before or after a user's respx router, each answers its own routes."""
    user_router = respx.mock(assert_all_called=True)
    route = user_router.post(f"{API}/charges").respond(200, json={"ok": True})
    mock = PaymeTokenMock()
    first, second = (mock, user_router) if mock_first else (user_router, mock)
    with first, second:
        async with make_auth() as auth, httpx.AsyncClient(base_url=API, auth=auth) as api:
            response = await api.post("/charges", json={})
        sent = route.calls.last.request.headers["authorization"]
    assert response.json() == {"ok": True}
    assert sent == f"Bearer {mock.tokens[0]}"
    assert mock.call_count == 1


@pytest.mark.anyio
async def test_routes_in_a_router_of_your_own() -> None:
    """Given a router, the mock adds its routes there and takes them away at exit."""
    with respx.mock(assert_all_mocked=False, assert_all_called=False) as router:
        route = router.post(f"{API}/charges").respond(201)
        with PaymeTokenMock(router=router) as mock:
            assert len(router.routes) == 3
            async with make_auth() as auth, httpx.AsyncClient(base_url=API, auth=auth) as api:
                assert (await api.post("/charges", json={})).status_code == 201
        assert list(router.routes) == [route]
        assert not mock.active
        async with httpx.AsyncClient() as client:  # the router's own fallback answers now
            assert (await client.post(Environment.PREPROD.token_url)).content == b""
    assert mock.call_count == 1


@pytest.mark.anyio
async def test_held_requests_wait_unanswered_until_released() -> None:
    """Held requests are counted as arrived, but take no answer and make no record until
    release(); later requests pass at once."""
    url = Environment.PREPROD.token_url
    statuses: list[int] = []
    with PaymeTokenMock() as mock:
        assert mock.hold().refuse(401) is mock
        async with httpx.AsyncClient() as client:

            async def post() -> None:
                statuses.append((await client.post(url, json={})).status_code)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(post)
                    tg.start_soon(post)
                    while mock.held < 2:
                        await anyio.sleep(0.001)
                    await anyio.sleep(0.02)
                    assert statuses == []
                    assert (mock.arrived, mock.call_count, mock.pending) == (2, 0, 1)
                    mock.release()
            assert sorted(statuses) == [200, 401]
            assert (mock.held, mock.arrived, mock.call_count, mock.pending) == (0, 2, 2, 0)
            assert (await client.post(url, json={})).status_code == 200
    assert mock.arrived == mock.call_count == 3


@pytest.mark.anyio
async def test_a_request_given_up_while_held_takes_no_answer() -> None:
    """A request whose client gives up at the gate counts as arrived, uses up no queued
    answer and leaves no record; the answer goes to the next request."""
    url = Environment.PREPROD.token_url
    with PaymeTokenMock() as mock:
        mock.hold().hold().refuse(403)
        async with httpx.AsyncClient() as client:
            with anyio.move_on_after(0.05) as scope:
                await client.post(url, json={})
            assert scope.cancelled_caught
            assert (mock.held, mock.arrived, mock.call_count, mock.pending) == (0, 1, 0, 1)
            mock.release()
            with pytest.raises(RuntimeError, match="without hold"):
                mock.release()
            assert (await client.post(url, json={})).status_code == 403
    assert (mock.arrived, mock.call_count) == (2, 1)
    assert [call.answer for call in mock.calls] == ["refusal"]


def test_release_without_hold_is_refused() -> None:
    """release() with no request held is a mistake in the test: RuntimeError."""
    with PaymeTokenMock() as mock, pytest.raises(RuntimeError, match="without hold"):
        mock.release()


@pytest.mark.anyio
async def test_respond_with_a_function_builds_each_answer() -> None:
    """A function given to respond() is called for each request it serves, with the request;
    its answer may stream."""
    seen: list[str] = []

    async def chunks() -> Any:
        yield b'{"success":'
        yield b"false}"

    def build(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["client_id"])
        return httpx.Response(200, content=chunks())

    with PaymeTokenMock() as mock:
        mock.respond(build, times=2)
        async with httpx.AsyncClient() as client:
            for client_id in ("a", "b"):
                response = await client.post(
                    Environment.PREPROD.token_url, json={"client_id": client_id}
                )
                assert "content-length" not in response.headers
                assert response.json() == {"success": False}
    assert seen == ["a", "b"]
    assert [(call.answer, call.status) for call in mock.calls] == [("response", 200)] * 2


@pytest.mark.anyio
async def test_a_function_that_returns_no_response_fails_the_request() -> None:
    """A respond() function that returns something else raises TypeError in the request."""
    with PaymeTokenMock() as mock:
        mock.respond(lambda request: 200)  # type: ignore[arg-type, return-value]
        async with httpx.AsyncClient() as client:
            with pytest.raises(TypeError, match=r"must return an httpx\.Response"):
                await client.post(Environment.PREPROD.token_url, json={})


@pytest.mark.anyio
async def test_token_prefix_marks_the_tokens_made_up() -> None:
    """Tokens the mock makes up begin with token_prefix, each one different."""
    with PaymeTokenMock(token_prefix=TOKEN_MARK) as mock:
        mock.issue(times=2)
        first = await make_auth().get_token()
        second = await make_auth().get_token()
    assert first.value.startswith(TOKEN_MARK)
    assert second.value.startswith(TOKEN_MARK)
    assert first.value != second.value
    assert mock.tokens == (first.value, second.value)


def test_unused_answers_fail_a_clean_exit() -> None:
    """Queued answers never used fail a clean exit, not one with an error already."""
    unused = r"2 queued answer\(s\) never asked for: token, hang"
    with pytest.raises(AssertionError, match=unused), PaymeTokenMock() as mock:
        mock.issue().hang()
    mock = PaymeTokenMock()
    mock.start()
    mock.issue()
    mock.__exit__(ZeroDivisionError, ZeroDivisionError(), None)  # no second error
    assert mock.pending == 0
    with PaymeTokenMock(assert_all_used=False) as mock:
        mock.refuse()


def test_life_cycle_and_reset() -> None:
    """start() twice is refused, stop() twice is harmless, reset() forgets everything."""
    mock = PaymeTokenMock()
    assert not mock.active
    mock.start()
    with pytest.raises(RuntimeError, match="already started"):
        mock.start()
    mock.issue(times=3)
    assert mock.pending == 3
    httpx.post(Environment.PREPROD.token_url, json={})  # a synchronous client works too
    assert (mock.call_count, mock.pending) == (1, 2)
    mock.reset()
    assert (mock.call_count, mock.pending, mock.tokens) == (0, 0, ())
    mock.stop()
    mock.stop()
    assert not mock.active


def test_secrets_stay_out_of_reprs() -> None:
    """A record masks the client secret and leaves out the token; the mock shows neither."""
    value = new_token_value()
    with PaymeTokenMock(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as mock:
        mock.issue(token=value)
        httpx.post(
            Environment.PREPROD.token_url,
            json={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": "x"},
        )
        shown = repr(mock) + repr(mock.calls) + str(mock.calls[0])
    assert mock.requests[0]["client_secret"] == CLIENT_SECRET  # as sent, for assertions
    assert mock.calls[0].token == value
    assert CLIENT_SECRET not in shown
    assert TOKEN_MARK not in shown
    assert "'client_secret': '***'" in shown
    assert isinstance(mock.calls[0], TokenCall)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PaymeTokenMock("preprod"), "environments"),  # type: ignore[arg-type]
        (lambda: PaymeTokenMock([]), "at least one"),
        (lambda: PaymeTokenMock([Environment.PREPROD, "x"]), "Environment"),  # type: ignore[list-item]
        (lambda: PaymeTokenMock(router="r"), "router"),  # type: ignore[arg-type]
        (lambda: PaymeTokenMock(client_id="a"), "together"),
        (lambda: PaymeTokenMock(client_id="", client_secret="b"), "client_id"),
        (lambda: PaymeTokenMock(expires_in=0), "expires_in"),
        (lambda: PaymeTokenMock(expires_in=True), "expires_in"),
        (lambda: PaymeTokenMock(token_prefix=""), "token_prefix"),
        (lambda: PaymeTokenMock().issue(expires_in=-1), "expires_in"),
        (lambda: PaymeTokenMock().issue(expires_in="1.5"), "expires_in"),
        (lambda: PaymeTokenMock().issue(scope=3), "scope"),  # type: ignore[arg-type]
        (lambda: PaymeTokenMock().issue(token=""), "token"),
        (lambda: PaymeTokenMock().issue(times=0), "times"),
        (lambda: PaymeTokenMock().issue(delay=-1), "delay"),
        (lambda: PaymeTokenMock().issue(delay=float("inf")), "delay"),
        (lambda: PaymeTokenMock().refuse(503), "400 to 499"),
        (lambda: PaymeTokenMock().refuse(429), "use fail"),
        (lambda: PaymeTokenMock().refuse(401, code=1), "code"),  # type: ignore[arg-type]
        (lambda: PaymeTokenMock().fail(404), "use refuse"),
        (lambda: PaymeTokenMock().fail(600), "status"),
        (lambda: PaymeTokenMock().fail(retry_after=-2), "retry_after"),
        (lambda: PaymeTokenMock().fail(retry_after=True), "retry_after"),
        (lambda: PaymeTokenMock().respond(200), "httpx.Response"),  # type: ignore[arg-type]
        (lambda: PaymeTokenMock().hang(times=1.5), "times"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_configuration_errors(build: Any, message: str) -> None:
    """Every bad argument is refused with a ConfigurationError that names it."""
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_streamed_response_is_refused() -> None:
    """respond() needs a body in memory: a streamed one cannot be served twice."""

    async def chunks() -> Any:
        yield b"{}"

    with pytest.raises(ConfigurationError, match="in memory"):
        PaymeTokenMock().respond(httpx.Response(200, content=chunks()))


def test_missing_respx_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without respx the mock says which extra to install."""
    monkeypatch.setitem(sys.modules, "respx", None)
    with pytest.raises(ImportError, match=r"payme-auth\[testing\]") as caught:
        PaymeTokenMock()
    assert caught.value.name == "respx"


# -- the values behind the fixtures -----------------------------------------------------------


def knobs(emulator: PaymeEmulator) -> tuple[object, ...]:
    """The emulator's knobs, but its rng."""
    return (
        emulator.token_lifetime,
        emulator.token_latency,
        emulator.api_latency,
        emulator.token_failure_rate,
        emulator.audience,
        emulator.api_version,
        emulator.clock,
    )


@pytest.mark.anyio
async def test_emulator_reset_restores_what_it_was_built_with() -> None:
    """reset() restores knobs (the rng's state too), clients, faults, tokens and counters."""
    emulator = PaymeEmulator(token_lifetime=60, rng=random.Random(7))  # noqa: S311
    draws = [emulator.rng.random() for _ in range(3)]
    base = "http://127.0.0.1:8000"
    body = {
        "action": "authorize",
        "grant_type": "client_credentials",
        "audience": base + "/",
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        "scope": "create:token get:charges",
    }
    headers = {"ALG-API-VERSION": emulator.api_version}
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport, base_url=base, headers=headers) as client:
        token = (await client.post("/token", json=body)).json()["access_token"]
        emulator.token_lifetime = 5
        emulator.token_latency = emulator.api_latency = 1.0
        emulator.token_failure_rate = 0.5
        emulator.rng = random.Random(1)  # noqa: S311
        emulator.audience = "http://elsewhere/"
        emulator.api_version = "1"
        emulator.clock = lambda: 0.0
        emulator.add_client("other", "other-secret")
        emulator.inject(Fault(), times=2)
        emulator.reset()
        query = await client.get("/charges/m/1/t", headers={"Authorization": f"Bearer {token}"})
        other = await client.post(
            "/token", json={**body, "client_id": "other", "client_secret": "other-secret"}
        )
        again = await client.post("/token", json=body)
    assert query.status_code == 401  # the token issued before reset() is gone
    assert other.status_code == 401  # so is the client added
    assert (again.status_code, again.json()["expires_in"]) == (200, 60)  # no fault left
    assert knobs(emulator) == knobs(PaymeEmulator(token_lifetime=60))
    assert [emulator.rng.random() for _ in range(3)] == draws
    assert emulator.stats == EmulatorStats(
        token_requests=2, tokens_issued=1, token_failures=1, api_requests=1, api_unauthorized=1
    )


def test_credentials_hide_the_secret() -> None:
    """Credentials keep the secret out of repr and hand both on as keyword arguments."""
    credentials = Credentials(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert CLIENT_SECRET not in repr(credentials)
    assert credentials.as_kwargs() == {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    auth = PaymeAuth(**credentials.as_kwargs())
    assert auth.client_id == CLIENT_ID


def test_token_call_body_repr_without_a_secret() -> None:
    """A record whose body has no secret shows the body as it is."""
    request = httpx.Request("POST", Environment.PREPROD.token_url)
    call = TokenCall(
        url=str(request.url), body={"a": 1}, answer="token", status=200, token=None, request=request
    )
    assert "body={'a': 1}" in repr(call)
    assert json.loads(json.dumps(dict(call.body or {}))) == {"a": 1}
