"""examples/flask_app.py end to end: served by waitress with 8 threads on a loopback port,
against the Pay-me emulator served by ``run_emulator()``, called by real client threads.

Configured only through the ``PAYME_*`` variables that ``payme-auth emulator`` prints.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx
import pytest

from payme_auth import ConfigurationError
from payme_auth.testing import EmulatorServer

from .conftest import CLIENT_SECRET
from .test_examples import load_example

pytest.importorskip("flask")
waitress = pytest.importorskip("waitress")

THREADS = 8  # the server's worker threads, and the client threads of a burst
PER_THREAD = 25  # requests each client thread sends, one after another
WAIT = 20.0  # seconds: the bound on every wait in these tests


@contextlib.contextmanager
def serve_flask() -> Iterator[str]:
    """Serve a fresh app from examples/flask_app.py with waitress (8 threads); yield its URL.

    The app's PaymeAuth is closed afterwards, as the app's exit handler would.
    """
    from waitress import wasyncore

    app = load_example("flask_app").create_app()
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=THREADS)
    stop = threading.Event()

    def run() -> None:
        # waitress's own run() loops until its sockets close; stepping the loop instead
        # lets the test stop it from its own thread.
        while not stop.is_set():
            wasyncore.loop(timeout=0.02, map=server._map, count=1)
        server.task_dispatcher.shutdown()
        wasyncore.close_all(server._map)

    thread = threading.Thread(target=run, name="flask-example", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join(WAIT)
        app.extensions["payme_auth"].close()
    assert not thread.is_alive(), "the server did not stop in time"


def burst(url: str, threads: int = THREADS, each: int = PER_THREAD) -> list[httpx.Response]:
    """*threads* client threads started together, each paying *each* times; every answer."""
    responses: list[httpx.Response] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(number: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=WAIT) as client:
                start.wait(WAIT)
                for n in range(each):
                    amount = f"{number * each + n + 1}.50"
                    responses.append(client.post("/pay", json={"amount": amount}))
        except BaseException as error:  # reported in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT * 2)
    assert not any(worker.is_alive() for worker in workers), "a client thread hung"
    if errors:
        raise errors[0]
    return responses


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health/payme", timeout=WAIT)


def test_concurrent_payments_share_one_token(
    payme_env: None, emulator_server: EmulatorServer
) -> None:
    """8 threads x 25 payments, served by 8 threads at once, all succeed at the cost of one
    token request."""
    emulator = emulator_server.emulator
    emulator.token_latency = 0.2  # every server thread arrives while the fetch is in flight
    total = THREADS * PER_THREAD
    with serve_flask() as url:
        before = health(url)
        responses = burst(url)
        after = health(url)

    assert before.status_code == 200
    assert (before.json()["state"], before.json()["healthy"]) == ("none", True)
    assert [r.status_code for r in responses] == [200] * total, responses[0].text
    bodies = [r.json() for r in responses]
    assert {body["state"] for body in bodies} == {"AUTORIZADO"}
    assert len({body["transaction_id"] for body in bodies}) == total
    stats = emulator.stats
    assert (stats.token_requests, stats.tokens_issued) == (1, 1)
    assert (stats.api_requests, stats.api_unauthorized) == (total, 0)
    assert after.status_code == 200
    assert (after.json()["state"], after.json()["token_requests"]) == ("fresh", 1)
    assert CLIENT_SECRET not in after.text


def test_a_revoked_token_costs_one_more_request(
    payme_env: None, emulator_server: EmulatorServer
) -> None:
    """After the server revokes the token, the next burst all succeeds: every refused
    request is replayed once, all with one new token."""
    emulator = emulator_server.emulator
    total = THREADS * PER_THREAD
    with serve_flask() as url:
        first = burst(url)
        assert emulator.revoke_tokens() == 1
        emulator.token_latency = 0.2
        second = burst(url)
        stats_after = health(url).json()

    assert [r.status_code for r in first + second] == [200] * (2 * total)
    stats = emulator.stats
    assert (stats.token_requests, stats.tokens_issued) == (2, 2)
    assert 1 <= stats.api_unauthorized <= total
    # Each refused request was replayed exactly once, and nothing else was.
    assert stats.api_requests == 2 * total + stats.api_unauthorized
    assert stats_after["replays"] == stats.api_unauthorized
    assert (stats_after["tokens_obtained"], stats_after["failed_fetches"]) == (2, 0)


def test_refused_credentials_make_payments_unavailable(
    payme_env: None, emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a wrong secret, /pay answers 503 with no secret in it, and so does the health
    route; a refusal is neither retried nor cached."""
    wrong = "WRONG-" + CLIENT_SECRET
    monkeypatch.setenv("PAYME_CLIENT_SECRET", wrong)
    with serve_flask() as url:
        responses = burst(url, threads=2, each=1)
        down = health(url)

    assert [r.status_code for r in responses] == [503, 503]
    assert all(wrong not in r.text and CLIENT_SECRET not in r.text for r in responses)
    stats = emulator_server.emulator.stats
    assert stats.tokens_issued == stats.api_requests == 0
    assert 1 <= stats.token_requests <= 2  # two threads may share one flight
    assert down.status_code == 503
    assert (down.json()["state"], down.json()["healthy"]) == ("none", False)
    assert wrong not in down.text


def test_an_invalid_payment_is_rejected_before_pay_me(
    payme_env: None, emulator_server: EmulatorServer
) -> None:
    """A malformed amount or body is refused by the app itself: no token, no charge."""
    with serve_flask() as url, httpx.Client(base_url=url, timeout=WAIT) as client:
        statuses = [
            client.post("/pay", json={"amount": "ten soles"}).status_code,
            client.post("/pay", json={"amount": "1.00", "currency": "soles"}).status_code,
            client.post("/pay", content=b"not json").status_code,
        ]
    assert statuses == [400, 400, 400]
    stats = emulator_server.emulator.stats
    assert (stats.token_requests, stats.api_requests) == (0, 0)


def test_missing_configuration_stops_startup(
    payme_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PAYME_CLIENT_ID the app is not built, and the error names the variable."""
    monkeypatch.delenv("PAYME_CLIENT_ID")
    with pytest.raises(ConfigurationError, match="PAYME_CLIENT_ID is not set"):
        load_example("flask_app").create_app()
