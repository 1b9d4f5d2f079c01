"""The requests plug, payme_auth.requests.PaymeRequestsAuth, over real loopback sockets.

Tokens and the API come from the emulator (``run_emulator()``); a small recording server
stands in for the other hosts a request can meet: an extra allowed origin that redirects or
refuses, and third parties on 127.0.0.1 (another port) and 127.0.0.2.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import pytest
import requests
import requests.adapters

from payme_auth import (
    ConfigurationError,
    InvalidCredentialsError,
    PaymeAuth,
    RetryPolicy,
)
from payme_auth.requests import PaymeRequestsAuth
from payme_auth.testing import EmulatorServer, PaymeEmulator, run_emulator

from .conftest import CLIENT_ID, CLIENT_SECRET

QUICK = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)
WAIT = 20.0  # seconds: every request's timeout


@attrs.define
class Seen:
    """One request a recording server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define
class Recorder:
    """A loopback HTTP server that records each request and answers from :attr:`routes`."""

    url: str
    seen: list[Seen] = attrs.Factory(list)
    # path -> (status, headers); anything else: 200 with an empty JSON object.
    routes: dict[str, tuple[int, dict[str, str]]] = attrs.Factory(dict)

    def headers_of(self, path: str) -> list[dict[str, str]]:
        return [seen.headers for seen in self.seen if seen.path == path]


@pytest.fixture
def recorders() -> Iterator[dict[str, Recorder]]:
    """Three recording servers: ``api2`` and ``other`` on 127.0.0.1, ``far`` on 127.0.0.2."""
    servers: list[ThreadingHTTPServer] = []
    made: dict[str, Recorder] = {}
    for name, host in (("api2", "127.0.0.1"), ("other", "127.0.0.1"), ("far", "127.0.0.2")):
        recorder = Recorder(url="")

        class Handler(BaseHTTPRequestHandler):
            record = recorder

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                self.record.seen.append(
                    Seen(
                        method=self.command,
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                    )
                )
                status, headers = self.record.routes.get(self.path, (200, {}))
                answer = b"{}"
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _serve  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer((host, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        recorder.url = f"http://{host}:{server.server_address[1]}"
        made[name] = recorder
    yield made
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served() -> Iterator[EmulatorServer]:
    """The emulator on loopback, knowing the test credentials."""
    with run_emulator(PaymeEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)) as server:
        yield server


@pytest.fixture
def auth(served: EmulatorServer, recorders: dict[str, Recorder]) -> Iterator[PaymeAuth]:
    """A PaymeAuth for the emulator, with ``api2`` as an extra allowed origin."""
    made = PaymeAuth(
        CLIENT_ID,
        CLIENT_SECRET,
        environment=served.environment,
        retry=QUICK,
        extra_origins=[recorders["api2"].url],
    )
    yield made
    made.close()


@pytest.fixture
def session(auth: PaymeAuth) -> Iterator[requests.Session]:
    """A requests session authenticated by the plug."""
    with requests.Session() as made:
        made.auth = PaymeRequestsAuth(auth)
        yield made


def charge(session: requests.Session, served: EmulatorServer, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("json", {"merchant_operation_number": "1", "amount": "10.00"})
    kwargs.setdefault("timeout", WAIT)
    return session.post(f"{served.url}/charges", **kwargs)


def test_api_requests_get_both_headers_and_others_none(
    session: requests.Session, served: EmulatorServer, recorders: dict[str, Recorder]
) -> None:
    """A request to the API carries the token and ALG-API-VERSION; one to another origin
    carries neither."""
    assert charge(session, served).status_code == 200
    session.get(f"{recorders['other'].url}/x", timeout=WAIT)
    session.get(f"{recorders['api2'].url}/x", timeout=WAIT)
    (other,) = recorders["other"].headers_of("/x")
    assert "authorization" not in other
    assert "alg-api-version" not in other
    (api2,) = recorders["api2"].headers_of("/x")
    assert api2["authorization"].startswith("Bearer ")
    assert api2["alg-api-version"] == served.environment.api_version
    assert served.emulator.stats.token_requests == 1


def test_a_callers_own_api_version_is_kept(
    session: requests.Session, recorders: dict[str, Recorder]
) -> None:
    """An ALG-API-VERSION the caller set, in any case, is sent as it is."""
    session.get(f"{recorders['api2'].url}/x", headers={"alg-api-version": "123"}, timeout=WAIT)
    (seen,) = recorders["api2"].headers_of("/x")
    assert seen["alg-api-version"] == "123"


@pytest.mark.parametrize("target", ["far", "other"])
def test_a_redirect_to_another_origin_carries_no_token(
    session: requests.Session, recorders: dict[str, Recorder], target: str
) -> None:
    """A redirect from the API to another host (127.0.0.2) or another port of the same host
    reaches it without the token."""
    landing = f"{recorders[target].url}/landing"
    recorders["api2"].routes["/go"] = (307, {"Location": landing})
    response = session.post(f"{recorders['api2'].url}/go", json={"a": 1}, timeout=WAIT)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [307]
    (went,) = recorders["api2"].headers_of("/go")
    assert went["authorization"].startswith("Bearer ")
    (landed,) = recorders[target].headers_of("/landing")
    assert "authorization" not in landed


def test_a_redirect_within_the_origin_keeps_the_token(
    session: requests.Session, recorders: dict[str, Recorder]
) -> None:
    """A redirect to another path of the API keeps the token."""
    recorders["api2"].routes["/go"] = (302, {"Location": "/here"})
    assert session.get(f"{recorders['api2'].url}/go", timeout=WAIT).status_code == 200
    (went,) = recorders["api2"].headers_of("/go")
    (landed,) = recorders["api2"].headers_of("/here")
    assert landed["authorization"] == went["authorization"]


@pytest.mark.parametrize(
    "body",
    [
        {"json": {"merchant_operation_number": "7"}},
        {"data": {"form": "field"}},
        {"data": "plain text"},
        {"data": b"raw bytes"},
        {"files": {"upload": ("a.txt", b"in memory")}},
        {},
    ],
    ids=["json", "form", "str", "bytes", "multipart", "none"],
)
def test_a_revoked_token_is_replaced_and_the_request_replayed_once(
    session: requests.Session, served: EmulatorServer, auth: PaymeAuth, body: dict[str, Any]
) -> None:
    """After revocation, a request whose body is in memory is replayed once with one new
    token; the caller sees the 200 and the refused answer in its history."""
    first = auth.get_token_sync()
    served.emulator.revoke_tokens()
    response = charge(session, served, **body)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert response.request.headers["Authorization"] != first.authorization
    assert response.history[0].request.headers["Authorization"] == first.authorization
    assert served.emulator.stats.token_requests == 2
    assert served.emulator.stats.api_requests == 2
    assert auth.stats().replays == 1


def _generated() -> Iterator[bytes]:
    yield b'{"merchant_operation_number": "8"}'


@pytest.mark.parametrize(
    "make_body", [_generated, lambda: io.BytesIO(b"{}")], ids=["generator", "file"]
)
def test_a_streamed_body_is_not_replayed(
    session: requests.Session, served: EmulatorServer, auth: PaymeAuth, make_body: Any
) -> None:
    """A generator or a file body is not sent twice: the caller gets the 401, the token is
    dropped, and the next request gets a new one."""
    auth.get_token_sync()
    served.emulator.revoke_tokens()
    response = charge(session, served, json=None, data=make_body())
    assert response.status_code == 401
    assert auth.stats().replays == 0
    assert auth.stats().state == "none"
    assert charge(session, served).status_code == 200
    assert served.emulator.stats.token_requests == 2


def test_a_second_401_goes_back_as_it_is(
    session: requests.Session, recorders: dict[str, Recorder], auth: PaymeAuth
) -> None:
    """An API that refuses every token gets the request twice, then the caller its 401."""
    recorders["api2"].routes["/no"] = (401, {})
    response = session.post(f"{recorders['api2'].url}/no", data=b"x", timeout=WAIT)
    assert response.status_code == 401
    assert len(response.history) == 1
    sent = recorders["api2"].headers_of("/no")
    assert len(sent) == 2
    assert sent[0]["authorization"] != sent[1]["authorization"]
    assert auth.stats().replays == 1
    assert auth.stats().token_requests == 2


def test_a_403_is_not_replayed_and_keeps_the_token(
    session: requests.Session, recorders: dict[str, Recorder], auth: PaymeAuth
) -> None:
    """A 403 goes back as it is: no replay, no new token."""
    recorders["api2"].routes["/forbidden"] = (403, {})
    assert session.get(f"{recorders['api2'].url}/forbidden", timeout=WAIT).status_code == 403
    assert len(recorders["api2"].headers_of("/forbidden")) == 1
    assert auth.stats().replays == 0
    assert auth.stats().state == "fresh"
    assert auth.stats().token_requests == 1


def test_a_401_from_another_origin_is_not_ours(
    session: requests.Session, recorders: dict[str, Recorder], auth: PaymeAuth
) -> None:
    """A 401 from a third party, even one reached by a redirect from the API, neither drops
    the token nor replays anything."""
    recorders["far"].routes["/no"] = (401, {})
    recorders["api2"].routes["/go"] = (307, {"Location": f"{recorders['far'].url}/no"})
    token = auth.get_token_sync()
    assert session.get(f"{recorders['far'].url}/no", timeout=WAIT).status_code == 401
    assert session.get(f"{recorders['api2'].url}/go", timeout=WAIT).status_code == 401
    assert len(recorders["far"].headers_of("/no")) == 2
    assert auth.get_token_sync() is token
    assert auth.stats().replays == 0


class CountingAdapter(requests.adapters.HTTPAdapter):
    """Records the settings each send gets."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.settings.append(dict(kwargs))
        return super().send(request, **kwargs)


def test_the_replay_keeps_the_requests_settings_and_hooks(
    session: requests.Session, served: EmulatorServer, auth: PaymeAuth
) -> None:
    """The replay goes through the same adapter with the same timeout and verify, and the
    caller's own response hook sees the replayed answer, once."""
    adapter = CountingAdapter()
    session.mount(served.url, adapter)
    auth.get_token_sync()
    served.emulator.revoke_tokens()
    hooked: list[int] = []
    response = charge(
        session,
        served,
        timeout=(3.0, 7.0),
        hooks={"response": [lambda r, **_: hooked.append(r.status_code)]},
    )
    assert response.status_code == 200
    assert hooked == [200]
    assert len(adapter.settings) == 2
    assert adapter.settings[0] == adapter.settings[1]
    assert adapter.settings[1]["timeout"] == (3.0, 7.0)


def test_threads_share_one_token_request(auth: PaymeAuth, served: EmulatorServer) -> None:
    """32 threads, each with its own session and one shared plug, cause one token request."""
    served.emulator.token_latency = 0.2
    plug = PaymeRequestsAuth(auth)
    statuses: list[int] = []
    start = threading.Barrier(32)

    def work() -> None:
        with requests.Session() as own:
            own.auth = plug
            start.wait()
            statuses.extend(charge(own, served).status_code for _ in range(2))

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert statuses == [200] * 64
    assert served.emulator.stats.token_requests == 1


def test_refused_credentials_reach_the_caller(served: EmulatorServer) -> None:
    """With a wrong secret the caller gets InvalidCredentialsError and nothing reaches the
    API."""
    wrong = PaymeAuth(CLIENT_ID, "WRONG-" + CLIENT_SECRET, environment=served.environment)
    with requests.Session() as own:
        own.auth = PaymeRequestsAuth(wrong)
        with pytest.raises(InvalidCredentialsError):
            charge(own, served)
    assert served.emulator.stats.api_requests == 0
    wrong.close()


def test_anything_but_a_payme_auth_is_refused() -> None:
    """The plug needs a PaymeAuth: anything else is a ConfigurationError that names it."""
    with pytest.raises(ConfigurationError, match="not tuple"):
        PaymeRequestsAuth(("id", "secret"))  # type: ignore[arg-type]


def test_it_takes_the_httpx2_plug(auth: PaymeAuth) -> None:
    """Built from the httpx2 plug, it serves the same PaymeAuth's tokens."""
    pytest.importorskip("httpx2", reason="httpx2 is not installed (payme-auth[httpx2])")
    from payme_auth.httpx2 import PaymeAuth as Httpx2PaymeAuth

    httpx2_plug = Httpx2PaymeAuth.from_auth(auth)
    assert PaymeRequestsAuth(httpx2_plug).auth is auth


def test_applies_to_and_repr(auth: PaymeAuth, served: EmulatorServer) -> None:
    """applies_to() tells the API's origin (default port filled in) from others, and the
    repr shows no secret."""
    plug = PaymeRequestsAuth(auth)
    assert plug.applies_to(f"{served.url}/charges")
    assert not plug.applies_to("https://example.com/charges")
    assert not plug.applies_to("not a url")
    auth.get_token_sync()
    assert CLIENT_SECRET not in repr(plug)
    assert CLIENT_SECRET not in str(plug)
    token = auth.get_token_sync()
    assert token.value not in repr(plug)


@pytest.mark.parametrize(
    ("url", "applies"),
    [
        ("https://api.preprod.alignet.io/charges", True),
        ("https://API.preprod.alignet.io:443/charges?x=1#f", True),
        ("https://user:pw@api.preprod.alignet.io/charges", True),
        ("https://api.preprod.alignet.io?x=1", True),
        ("https://api.preprod.alignet.io:8443/charges", False),
        ("http://api.preprod.alignet.io/charges", False),
        ("https://api.preprod.alignet.io.example.com/charges", False),
        ("https://api.preprod.alignet.io@example.com/charges", False),
        ("https://example.com/https://api.preprod.alignet.io/", False),
        ("https://example.com?https://api.preprod.alignet.io", False),
        ("api.preprod.alignet.io/charges", False),
    ],
)
def test_the_origin_is_read_from_scheme_host_and_port_only(url: str, applies: bool) -> None:
    """Only a URL whose scheme, host and port are the API's gets the token: not one that
    names the API's host in its userinfo, path or query."""
    plug = PaymeRequestsAuth(PaymeAuth(CLIENT_ID, CLIENT_SECRET))
    assert plug.applies_to(url) is applies
