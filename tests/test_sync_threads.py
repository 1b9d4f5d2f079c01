"""Synchronous callers under stress and faults: real threads against the emulator on a loopback
port, interrupted for real, with the token endpoint broken on purpose.

Python cannot interrupt an arbitrary thread, so the interruptions here are the real ones:
a signal (Ctrl-C) delivered to the main thread while it waits for a token, ``close()`` called
by one of the waiting threads, and requests whose sending fails at random points (httpx then
closes the auth flow in the middle). Each test checks that nobody else is stranded, that the
token endpoint is asked exactly as often as it should be, and that nothing half-done is
cached.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from payme_auth import (
    AccessToken,
    AuthClosedError,
    InsufficientScopeError,
    InvalidCredentialsError,
    PaymeAuth,
    RetryPolicy,
    TokenEndpointUnavailableError,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from payme_auth.requests import PaymeRequestsAuth
from payme_auth.testing import EmulatorServer, Fault

from .conftest import CLIENT_ID, CLIENT_SECRET, EMULATOR_RETRY, emulator_auth

WAIT = 20.0  # seconds: the bound on every join, so that a hang fails instead of hanging
THREADS = 64


def seeded(seed: float) -> random.Random:
    """A random draw that a failing run can repeat."""
    return random.Random(seed)  # noqa: S311 - random test moments, not cryptography


def in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(n)`` in *count* threads started together; return what each returned or
    raised (in thread order). Fails if any thread is still running after WAIT seconds."""
    start = threading.Barrier(count)
    outcomes: list[object] = [None] * count

    def run(n: int) -> None:
        start.wait(WAIT)
        try:
            outcomes[n] = work(n)
        except BaseException as error:  # the outcome, checked by the test
            outcomes[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a thread was stranded"
    return outcomes


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


# -- interruptions -----------------------------------------------------------------------------


class Interrupted(BaseException):
    """What the test's SIGINT handler raises: a Ctrl-C, told apart from pytest's own."""


@pytest.mark.parametrize("rounds", [1, pytest.param(5, marks=pytest.mark.slow)])
def test_ctrl_c_in_a_waiting_main_thread_strands_nobody(
    emulator_server: EmulatorServer, rounds: int
) -> None:
    """A SIGINT that cuts the main thread's wait short (at a random moment of the fetch)
    leaves the fetch going: the 64 other threads get its token, one request per round, and
    the main thread's next call gets that same cached token."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    emulator_server.emulator.token_latency = 0.6
    auth = emulator_auth(emulator_server)
    rng = seeded(rounds)
    waiting = threading.Event()

    def interrupt(_signum: int, _frame: object) -> None:
        if waiting.is_set():
            raise Interrupted

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        for round_number in range(1, rounds + 1):
            before = emulator_server.emulator.stats.token_requests
            results: list[object] = []

            def fire(delay: float, first: int = before) -> None:
                wait_until(
                    lambda: emulator_server.emulator.stats.token_requests > first, "the fetch"
                )
                time.sleep(delay)
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

            def others(results: list[object] = results) -> None:
                results.extend(in_threads(THREADS, lambda _n: auth.get_token_sync()))

            crowd = threading.Thread(target=others)
            crowd.start()
            firer = threading.Thread(target=fire, args=(rng.uniform(0.0, 0.3),))
            firer.start()
            interrupted = False
            try:
                waiting.set()
                auth.get_token_sync()
                waiting.clear()
            except Interrupted:
                interrupted = True
            waiting.clear()
            firer.join(WAIT)
            crowd.join(WAIT * 2)
            assert not crowd.is_alive()
            assert interrupted, "the signal did not reach the waiting main thread"
            tokens = {id(result) for result in results}
            assert len(results) == THREADS
            assert all(isinstance(result, AccessToken) for result in results), results[:3]
            assert len(tokens) == 1
            assert emulator_server.emulator.stats.token_requests == round_number
            # Nothing half-done: the main thread now gets the token the others got.
            assert auth.get_token_sync() is results[0]
            assert auth.stats().state == "fresh"
            auth.invalidate()
    finally:
        signal.signal(signal.SIGINT, previous)
        auth.close()


def test_close_by_one_waiting_thread_frees_all_and_caches_nothing(
    emulator_server: EmulatorServer,
) -> None:
    """Among 64 threads waiting for a slow fetch, one calls close() at a random moment:
    every other waiter gets AuthClosedError, nobody is stranded, one request was sent, and
    the token that lands afterwards is not cached."""
    emulator_server.emulator.token_latency = 0.8
    auth = emulator_auth(emulator_server)
    rng = seeded(7)
    closer, moment = rng.randrange(THREADS), rng.uniform(0.0, 0.3)

    def work(n: int) -> object:
        if n == closer:
            wait_until(lambda: emulator_server.emulator.stats.token_requests >= 1, "the fetch")
            time.sleep(moment)
            auth.close()
            return "closed"
        if n % 2:
            with httpx.Client(base_url=emulator_server.url, auth=auth, timeout=WAIT) as client:
                return client.post("/charges", json={"n": n})
        return auth.get_token_sync()

    outcomes = in_threads(THREADS, work)
    others = [outcome for n, outcome in enumerate(outcomes) if n != closer]
    assert all(isinstance(outcome, AuthClosedError) for outcome in others), others[:3]
    assert emulator_server.emulator.stats.api_requests == 0
    # The fetch's answer arrives after close(): it must not be cached.
    wait_until(lambda: emulator_server.emulator.stats.tokens_issued >= 1, "the token to be issued")
    time.sleep(0.1)
    stats = auth.stats()
    assert (stats.state, stats.token_fingerprint, stats.healthy) == ("closed", None, False)
    assert emulator_server.emulator.stats.token_requests == 1
    with pytest.raises(AuthClosedError):
        auth.get_token_sync()


class FlakyTransport(httpx.HTTPTransport):
    """Fails a random share of API requests with a connection error, before or after
    sending them (httpx then closes the auth flow wherever it stood). Counts the 401s it
    lets through."""

    def __init__(self, rng: random.Random, share: float) -> None:
        super().__init__()
        self.rng, self.share, self.lock = rng, share, threading.Lock()
        self.refusals_delivered = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            draw = self.rng.random()
        if draw < self.share / 2:
            raise httpx.ConnectError("cut before sending", request=request)
        response = super().handle_request(request)
        if draw < self.share:
            response.close()
            raise httpx.ReadError("cut after sending", request=request)
        if response.status_code == 401:
            with self.lock:
                self.refusals_delivered += 1
        return response


def charge_or_cut(client: httpx.Client, n: int) -> int | str:
    try:
        return client.post("/charges", json={"n": n}).status_code
    except httpx.TransportError:
        return "cut"


def test_requests_cut_at_random_points_leave_the_token_whole(
    emulator_server: EmulatorServer,
) -> None:
    """64 threads whose requests fail at random points, before and after a revocation:
    every request not cut gets a 200, one token request per token, and every 401 that
    reached the flow was replayed once."""
    emulator_server.emulator.token_latency = 0.1
    auth = emulator_auth(emulator_server)
    transport = FlakyTransport(seeded(2024), share=0.3)
    codes: list[int | str] = []
    # One client for every thread: httpx.Client is thread-safe.
    with httpx.Client(
        base_url=emulator_server.url, auth=auth, transport=transport, timeout=WAIT
    ) as api:
        for _ in range(2):
            outcomes = in_threads(THREADS, lambda n: [charge_or_cut(api, n) for _ in range(2)])
            codes += [code for outcome in outcomes for code in outcome]  # type: ignore[attr-defined]
            emulator_server.emulator.revoke_tokens()

    assert set(codes) <= {200, "cut"}
    assert codes.count(200) > THREADS  # most got through
    assert emulator_server.emulator.stats.token_requests == 2
    assert transport.refusals_delivered >= 1
    assert auth.stats().replays == transport.refusals_delivered
    assert auth.stats().state == "fresh"  # the replays' token, whole
    assert emulator_server.emulator.stats.api_unauthorized >= transport.refusals_delivered
    auth.close()


# -- the fault suite's main cases, for synchronous callers ------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(status=401), InvalidCredentialsError),
        (Fault(status=403), InsufficientScopeError),
        (Fault(status=400), TokenRefusedError),
    ],
    ids=["401", "403", "400"],
)
def test_a_refusal_fails_every_thread_at_once_with_one_request(
    emulator_server: EmulatorServer, fault: Fault, expected: type[TokenError]
) -> None:
    """A refused token request is never retried: 16 waiting threads get the one typed
    error, from one request."""
    emulator_server.emulator.inject(fault, times=5)
    emulator_server.emulator.token_latency = 0.1
    auth = emulator_auth(emulator_server)
    outcomes = in_threads(16, lambda _n: auth.get_token_sync())
    assert all(type(outcome) is expected for outcome in outcomes), outcomes[:2]
    assert len({id(outcome) for outcome in outcomes}) == 1
    assert emulator_server.emulator.stats.token_requests == 1
    assert auth.stats().healthy is False
    auth.close()


def test_refused_credentials_reach_an_httpx_client_and_a_requests_session(
    emulator_server: EmulatorServer,
) -> None:
    """With a wrong secret, a synchronous request fails with InvalidCredentialsError before
    anything reaches the API, through either plug."""
    auth = PaymeAuth(CLIENT_ID, "WRONG-" + CLIENT_SECRET, environment=emulator_server.environment)
    with (
        httpx.Client(base_url=emulator_server.url, auth=auth) as client,
        pytest.raises(InvalidCredentialsError),
    ):
        client.get("/charges/M/1")
    import requests

    with requests.Session() as session:
        session.auth = PaymeRequestsAuth(auth)
        with pytest.raises(InvalidCredentialsError):
            session.get(f"{emulator_server.url}/charges/M/1", timeout=WAIT)
    assert emulator_server.emulator.stats.api_requests == 0
    assert emulator_server.emulator.stats.token_requests == 2  # a refusal is not cached
    auth.close()


def test_a_503_with_retry_after_is_retried_after_that_wait(emulator_server: EmulatorServer) -> None:
    """A 503 with Retry-After: 1 is retried, no sooner than a second later, and the threads
    waiting get the token of the retry."""
    emulator_server.emulator.inject(Fault(status=503, headers={"Retry-After": "1"}))
    auth = emulator_auth(emulator_server)
    began = time.monotonic()
    outcomes = in_threads(8, lambda _n: auth.get_token_sync())
    elapsed = time.monotonic() - began
    assert all(isinstance(outcome, AccessToken) for outcome in outcomes), outcomes[:2]
    assert len({id(outcome) for outcome in outcomes}) == 1
    assert emulator_server.emulator.stats.token_requests == 2
    assert elapsed >= 0.9  # Retry-After honoured (a lower bound: the machine may be slow)
    auth.close()


def test_a_lasting_5xx_ends_after_the_attempts(emulator_server: EmulatorServer) -> None:
    """An endpoint that keeps answering 503 gets exactly `attempts` requests; every thread
    gets the one TokenEndpointUnavailableError, with the server's Retry-After."""
    emulator_server.emulator.inject(Fault(status=503, headers={"Retry-After": "0"}), times=10)
    auth = emulator_auth(emulator_server)
    outcomes = in_threads(8, lambda _n: auth.get_token_sync())
    error = outcomes[0]
    assert isinstance(error, TokenEndpointUnavailableError)
    assert all(outcome is error for outcome in outcomes)
    assert error.status_code == 503
    assert error.retry_after == 0
    assert emulator_server.emulator.stats.token_requests == EMULATOR_RETRY.attempts
    auth.close()


@pytest.mark.slow  # the server holds each hanging answer for its whole delay as it stops
def test_a_hanging_endpoint_is_bounded_by_the_timeout(emulator_server: EmulatorServer) -> None:
    """A token endpoint that does not answer in time costs each waiting thread about
    `timeout` x `attempts`, then TokenEndpointUnavailableError (its answer, had it come,
    would have been a TokenResponseError); one request per attempt."""
    emulator_server.emulator.inject(Fault(status=200, delay=3.0), times=2)
    retry = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02)
    auth = emulator_auth(emulator_server, timeout=0.3, retry=retry)
    began = time.monotonic()
    outcomes = in_threads(8, lambda _n: auth.get_token_sync())
    elapsed = time.monotonic() - began
    assert all(isinstance(outcome, TokenEndpointUnavailableError) for outcome in outcomes)
    assert len({id(outcome) for outcome in outcomes}) == 1
    assert emulator_server.emulator.stats.token_requests == 2
    assert elapsed < 10.0  # bounded: 2 x 0.3 s, with room for a busy machine
    auth.close()


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"success": true}'],
    ids=["not-json", "not-an-object", "no-token"],
)
def test_a_bad_answer_is_a_token_response_error(
    emulator_server: EmulatorServer, body: bytes
) -> None:
    """A 200 whose body is not a token answer fails every thread with TokenResponseError,
    after one request, and nothing is cached."""
    emulator_server.emulator.inject(Fault(status=200, body=body), times=5)
    auth = emulator_auth(emulator_server)
    outcomes = in_threads(8, lambda _n: auth.get_token_sync())
    assert all(isinstance(outcome, TokenResponseError) for outcome in outcomes), outcomes[:2]
    assert len({id(outcome) for outcome in outcomes}) == 1
    assert emulator_server.emulator.stats.token_requests == 1
    assert auth.stats().state == "none"
    # The endpoint recovers: the next caller fetches afresh.
    emulator_server.emulator.clear_faults()
    assert isinstance(auth.get_token_sync(), AccessToken)
    auth.close()


# -- secrets ------------------------------------------------------------------------------------


def test_no_secret_in_any_log_record_str_or_repr_on_the_sync_path(
    emulator_server: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Across the sync path (fetch, refresh, revoke and replay through both plugs, a
    refusal, close), neither the client secret nor any token value appears in a log record
    or in the str or repr of anything a caller holds."""
    import requests

    auth = emulator_auth(emulator_server)
    tokens: list[AccessToken] = [auth.get_token_sync()]
    shown: list[object] = [auth, auth.stats(), auth.headers_sync()["ALG-API-VERSION"]]
    with httpx.Client(base_url=emulator_server.url, auth=auth) as client:
        emulator_server.emulator.revoke_tokens()
        response = client.post("/charges", json={"n": 1})
        assert response.status_code == 200
        tokens.append(auth.get_token_sync())
    plug = PaymeRequestsAuth(auth)
    with requests.Session() as session:
        session.auth = plug
        emulator_server.emulator.revoke_tokens()
        answer = session.post(f"{emulator_server.url}/charges", json={"n": 2}, timeout=WAIT)
        assert answer.status_code == 200
        tokens.append(auth.get_token_sync())
        shown += [plug, answer, answer.history[0]]
    tokens.append(auth.refresh_sync())
    shown += [*tokens, auth.stats()]
    wrong = PaymeAuth(CLIENT_ID, "WRONG-" + CLIENT_SECRET, environment=emulator_server.environment)
    with pytest.raises(InvalidCredentialsError) as refused:
        wrong.get_token_sync()
    shown += [wrong, refused.value, wrong.stats()]
    auth.close()
    wrong.close()
    with pytest.raises(AuthClosedError) as closed:
        auth.get_token_sync()
    shown.append(closed.value)

    assert auth.stats().replays == 2
    secrets = [CLIENT_SECRET, *(token.value for token in tokens)]
    assert len(set(secrets)) == 1 + len(tokens)  # four distinct tokens were seen
    texts = [text for thing in shown for text in (str(thing), repr(thing))]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records  # the sync path did log
    for secret in secrets:
        assert not [text for text in texts if secret in text], "a secret was shown"
