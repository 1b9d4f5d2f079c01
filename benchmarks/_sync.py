"""Synchronous callers: payme_auth from threads, against a floor, Authlib and httpx-auth.

    python -m benchmarks._sync             # the full run (about four minutes)
    python -m benchmarks._sync --quick     # small sizes (about a minute)
    python -m benchmarks._sync --json /tmp/sync.json

Progress goes to stderr, the Markdown section to stdout. Timings are reported, never
asserted.

The contenders, each configured the way its own documentation shows:

- ``floor``: ``httpx.Client`` with an ``httpx.Auth`` whose ``sync_auth_flow`` sets two
  constant headers; ``floor, preset headers``: a client whose ``headers`` already hold them;
  ``floor (requests)``: a ``requests`` auth that sets them. No token is ever fetched.
- ``payme_auth``: ``httpx.Client(auth=PaymeAuth(...))``, defaults everywhere, no
  ``async with``; ``payme_auth (requests)``: a ``requests.Session`` whose ``auth`` is
  ``PaymeRequestsAuth(PaymeAuth(...))``.
- ``Authlib OAuth2Session (requests)`` and ``Authlib OAuth2Client (httpx)``: the sync clients
  with ``token_endpoint``, ``grant_type="client_credentials"`` and
  ``token_endpoint_auth_method="client_secret_post"``. They fetch no first token by
  themselves (a request without one raises ``MissingTokenError``): the code that uses them
  calls ``fetch_token()`` when the client has none.
- ``httpx-auth``: ``httpx.Client(auth=OAuth2ClientCredentials(...))`` with a documented
  ``client=httpx.Client(...)`` for its token requests (its token cache is global: cleared
  before each run).

Peers' margins (Authlib ``leeway``, httpx-auth ``early_expiry``) are set to half the token's
life for short tokens, the margin payme_auth applies by itself; their defaults (60 s, 30 s)
would make every call on a 4-8 s token fetch a new one.

Threaded scenarios share one client per contender between all threads (``httpx.Client`` is
thread-safe; Authlib's ``OAuth2Session`` holds its token, so sharing it is what keeps one
token) and keep up to 64 connections alive, so that no call pays for a new connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict

from payme_auth import API_VERSION, Environment, PaymeAuth
from payme_auth.requests import PaymeRequestsAuth

from ._contenders import SCOPES, FloorAuth
from ._measure import Server, percentile, summary
from ._server import CLIENT_ID, CLIENT_SECRET, FLOOR_TOKEN, _token_fields

API_PATH = "/charges/merchant/op-1/tx-1"
POOL = 64  # connections kept alive per client: every thread keeps its own
TIMES = "\u00d7"
DASH = "\u2013"

FLOOR = "floor"
FLOOR_AA = "floor, again (A/A)"
FLOOR_PRESET = "floor, preset headers"
FLOOR_REQUESTS = "floor (requests)"
FLOOR_REQUESTS_AA = "floor (requests), again (A/A)"
PAYME = "payme_auth"
PAYME_REQUESTS = "payme_auth (requests)"
AUTHLIB_REQUESTS = "Authlib OAuth2Session (requests)"
AUTHLIB_HTTPX = "Authlib OAuth2Client (httpx)"
HTTPX_AUTH = "httpx-auth"

# The peers and urllib3 log on normal operation (and on every failed renewal).
for _name in ("payme_auth", "httpx_auth", "authlib", "urllib3"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

Log = Callable[[str], None]


@dataclass(frozen=True)
class SyncSettings:
    """The sizes of a run: ``full()`` for the record, ``small()`` for ``--quick``."""

    cold_threads: int
    cold_rounds: int
    cold_latency: float  # the token endpoint's answer time in scenario 1
    token_latency: float  # the token endpoint's answer time in scenarios 3 and 4
    warm_rounds: int
    warm_batch: int
    renewal_threads: int
    renewal_period: float  # each thread calls once per period
    renewal_lifetime: int
    renewal_seconds: float
    outage_threads: int
    outage_lifetime: int
    outage_seconds: float  # how long the token endpoint answers 503, from the first renewal
    outage_run: float
    quick: bool = False

    @classmethod
    def full(cls) -> SyncSettings:
        return cls(
            cold_threads=64,
            cold_rounds=5,
            cold_latency=0.1,
            token_latency=0.3,
            warm_rounds=60,
            warm_batch=300,
            renewal_threads=32,
            renewal_period=0.1,
            renewal_lifetime=6,
            renewal_seconds=20.0,
            outage_threads=8,
            outage_lifetime=6,
            outage_seconds=2.0,
            outage_run=7.0,
        )

    @classmethod
    def small(cls) -> SyncSettings:
        return cls(
            cold_threads=64,
            cold_rounds=2,
            cold_latency=0.1,
            token_latency=0.3,
            warm_rounds=15,
            warm_batch=200,
            renewal_threads=32,
            renewal_period=0.1,
            renewal_lifetime=4,
            renewal_seconds=4.0,
            outage_threads=8,
            outage_lifetime=4,
            outage_seconds=1.5,
            outage_run=4.0,
            quick=True,
        )


# -- mocks: no network ---------------------------------------------------------------------

API_BODY = json.dumps({"action": "authorize", "success": True, "state": "AUTORIZADO"}).encode()


def _token_body(fields: dict[str, str], lifetime: int = 3600) -> bytes:
    """A token answer as the loopback server gives it (the mocks' one token)."""
    return json.dumps(
        {
            "action": "authorize",
            "success": True,
            "access_token": "mock-token",
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": fields.get("scope", ""),
            "authorization": {"meta": {"status": {"code": "00", "message_ilgn": []}}},
        }
    ).encode()


class MockCounts:
    """Requests the mocks answered, by kind."""

    def __init__(self) -> None:
        self.token = 0
        self.api = 0


def mock_handler(module: Any, counts: MockCounts) -> Callable[[Any], Any]:
    """An ``httpx.MockTransport`` handler: a token on ``/token``, a canned 200 elsewhere.

    *module* is ``httpx`` (or ``httpx2``, which Authlib uses when installed).
    """
    json_type = [(b"content-type", b"application/json")]

    def handle(request: Any) -> Any:
        if request.url.path == "/token":
            counts.token += 1
            headers = {k.lower(): v for k, v in request.headers.items()}
            return module.Response(
                200, headers=json_type, content=_token_body(_token_fields(headers, request.read()))
            )
        counts.api += 1
        return module.Response(200, headers=json_type, content=API_BODY)

    return handle


class CannedAdapter(requests.adapters.BaseAdapter):
    """A requests adapter that answers like :func:`mock_handler`, with no network."""

    def __init__(self, counts: MockCounts) -> None:
        super().__init__()
        self.counts = counts

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        if urlsplit(request.url or "").path == "/token":
            self.counts.token += 1
            headers = {k.lower(): v for k, v in request.headers.items()}
            raw = request.body or b""
            body = _token_body(
                _token_fields(headers, raw if isinstance(raw, bytes) else raw.encode())
            )
        else:
            self.counts.api += 1
            body = API_BODY
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response._content = body  # noqa: SLF001 - as requests' own adapters fill it
        response.headers = CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(body))}
        )
        response.encoding = "utf-8"
        response.url = request.url or ""
        response.request = request
        response.connection = self
        return response

    def close(self) -> None:
        pass


def _authlib_httpx() -> Any:
    """The httpx module Authlib's httpx clients are built on (``httpx2`` if installed)."""
    import authlib.deprecate  # noqa: F401 - installs an "always" filter when imported

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Authlib 1.9 asks for httpx2 when it finds httpx
        from authlib.integrations.httpx_client import _compat

    return _compat.httpx2


# -- contenders ----------------------------------------------------------------------------


@dataclass
class Target:
    """Where a contender gets tokens and sends API calls: the loopback server, or mocks."""

    base_url: str
    token_url: str
    counts: MockCounts | None = None  # set: every request goes to the mocks

    @property
    def audience(self) -> str:
        return self.base_url + "/"

    @property
    def url(self) -> str:
        return self.base_url + API_PATH

    def transport(self, module: Any = httpx) -> Any:
        if self.counts is None:
            return module.HTTPTransport(
                limits=module.Limits(max_connections=POOL, max_keepalive_connections=POOL)
            )
        return module.MockTransport(mock_handler(module, self.counts))

    def mount(self, session: requests.Session) -> None:
        adapter = (
            requests.adapters.HTTPAdapter(pool_maxsize=POOL)
            if self.counts is None
            else CannedAdapter(self.counts)
        )
        session.mount("http://", adapter)


@dataclass
class Opened:
    """An open contender: one API call (returns the status), and the first call of code
    that starts with no token (Authlib's ``fetch_token()`` when it has none)."""

    call: Callable[[], int]
    cold_call: Callable[[], int] | None = None

    def first(self) -> int:
        return (self.cold_call or self.call)()


Opener = Callable[[Target, float | None], contextlib.AbstractContextManager[Opened]]


class SyncFloorAuth(FloorAuth):
    """The floor for ``httpx.Client``: two constant headers."""

    def sync_auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = self._authorization
        request.headers["ALG-API-VERSION"] = self._api_version
        yield request


class FloorRequestsAuth(requests.auth.AuthBase):
    """The floor for requests: two constant headers."""

    def __init__(self) -> None:
        self._authorization = f"Bearer {FLOOR_TOKEN}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._authorization
        request.headers["ALG-API-VERSION"] = API_VERSION
        return request


def _client(target: Target, auth: httpx.Auth | None, **options: Any) -> httpx.Client:
    return httpx.Client(
        base_url=target.base_url, auth=auth, transport=target.transport(), timeout=30, **options
    )


def _get(client: httpx.Client) -> Callable[[], int]:
    get = client.get

    def call() -> int:
        return get(API_PATH).status_code

    return call


def _session_get(session: requests.Session, url: str) -> Callable[[], int]:
    get = session.get

    def call() -> int:
        return get(url, timeout=30).status_code

    return call


@contextlib.contextmanager
def open_floor(target: Target, margin: float | None = None) -> Iterator[Opened]:
    with _client(target, SyncFloorAuth()) as client:
        yield Opened(_get(client))


@contextlib.contextmanager
def open_floor_preset(target: Target, margin: float | None = None) -> Iterator[Opened]:
    headers = {"Authorization": f"Bearer {FLOOR_TOKEN}", "ALG-API-VERSION": API_VERSION}
    with _client(target, None, headers=headers) as client:
        yield Opened(_get(client))


@contextlib.contextmanager
def open_floor_requests(target: Target, margin: float | None = None) -> Iterator[Opened]:
    with requests.Session() as session:
        target.mount(session)
        session.auth = FloorRequestsAuth()
        yield Opened(_session_get(session, target.url))


@contextlib.contextmanager
def _payme_auth(target: Target) -> Iterator[PaymeAuth]:
    environment = Environment(token_url=target.token_url, audience=target.audience, name="bench")
    token_client = (
        None if target.counts is None else httpx.AsyncClient(transport=target.transport())
    )
    auth = PaymeAuth(CLIENT_ID, CLIENT_SECRET, environment=environment, http_client=token_client)
    try:
        yield auth
    finally:
        auth.close()
        if token_client is not None:
            asyncio.run(token_client.aclose())


@contextlib.contextmanager
def open_payme(target: Target, margin: float | None = None) -> Iterator[Opened]:
    with _payme_auth(target) as auth, _client(target, auth) as client:
        yield Opened(_get(client))


@contextlib.contextmanager
def open_payme_requests(target: Target, margin: float | None = None) -> Iterator[Opened]:
    with _payme_auth(target) as auth, requests.Session() as session:
        target.mount(session)
        session.auth = PaymeRequestsAuth(auth)
        yield Opened(_session_get(session, target.url))


def _authlib_cold(client: Any, target: Target, call: Callable[[], int]) -> Callable[[], int]:
    def cold_call() -> int:
        if client.token is None:  # what code using it must do: it fetches none by itself
            client.fetch_token(
                grant_type="client_credentials", action="authorize", audience=target.audience
            )
        return call()

    return cold_call


@contextlib.contextmanager
def open_authlib_requests(target: Target, margin: float | None = None) -> Iterator[Opened]:
    from authlib.integrations.requests_client import OAuth2Session

    session = OAuth2Session(
        CLIENT_ID,
        CLIENT_SECRET,
        scope=SCOPES,
        token_endpoint=target.token_url,
        grant_type="client_credentials",
        token_endpoint_auth_method="client_secret_post",
        leeway=60 if margin is None else margin,
    )
    with session:
        target.mount(session)
        session.headers["ALG-API-VERSION"] = API_VERSION
        call = _session_get(session, target.url)
        yield Opened(call, _authlib_cold(session, target, call))


@contextlib.contextmanager
def open_authlib_httpx(target: Target, margin: float | None = None) -> Iterator[Opened]:
    module = _authlib_httpx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.integrations.httpx_client import OAuth2Client

    client = OAuth2Client(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope=SCOPES,
        token_endpoint=target.token_url,
        grant_type="client_credentials",
        token_endpoint_auth_method="client_secret_post",
        leeway=60 if margin is None else margin,
        base_url=target.base_url,
        headers={"ALG-API-VERSION": API_VERSION},
        timeout=30,
        transport=target.transport(module),
    )
    with client:
        call = _get(client)
        yield Opened(call, _authlib_cold(client, target, call))


@contextlib.contextmanager
def open_httpx_auth(target: Target, margin: float | None = None) -> Iterator[Opened]:
    from httpx_auth import OAuth2, OAuth2ClientCredentials

    OAuth2.token_cache.clear()
    token_client = httpx.Client(
        transport=target.transport(), headers={"ALG-API-VERSION": API_VERSION}
    )
    auth = OAuth2ClientCredentials(
        target.token_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope=SCOPES,
        early_expiry=30.0 if margin is None else margin,
        client=token_client,
        action="authorize",
        audience=target.audience,
    )
    try:
        with _client(target, auth, headers={"ALG-API-VERSION": API_VERSION}) as client:
            yield Opened(_get(client))
    finally:
        token_client.close()
        OAuth2.token_cache.clear()


OPENERS: dict[str, Opener] = {
    FLOOR: open_floor,
    FLOOR_AA: open_floor,
    FLOOR_PRESET: open_floor_preset,
    FLOOR_REQUESTS: open_floor_requests,
    FLOOR_REQUESTS_AA: open_floor_requests,
    PAYME: open_payme,
    PAYME_REQUESTS: open_payme_requests,
    AUTHLIB_REQUESTS: open_authlib_requests,
    AUTHLIB_HTTPX: open_authlib_httpx,
    HTTPX_AUTH: open_httpx_auth,
}

THREADED = [FLOOR, PAYME, PAYME_REQUESTS, AUTHLIB_REQUESTS, AUTHLIB_HTTPX, HTTPX_AUTH]

NOTES = {
    FLOOR: "two constant headers; no token",
    FLOOR_PRESET: "headers preset on the client; no auth flow at all",
    FLOOR_REQUESTS: "a requests auth setting two constant headers; no token",
    PAYME: "`httpx.Client(auth=PaymeAuth(...))`, defaults",
    PAYME_REQUESTS: "`session.auth = PaymeRequestsAuth(PaymeAuth(...))`, defaults",
    AUTHLIB_REQUESTS: (
        "fetches no first token by itself (the caller calls `fetch_token()` when it has "
        "none); no lock: every thread that finds the token missing or expired fetches its "
        "own; a failed renewal fails the call although the token is still valid; "
        "form-encoded token request (Pay-me wants JSON)"
    ),
    AUTHLIB_HTTPX: (
        "as Authlib's OAuth2Session: no first fetch, no lock in the sync client, a failed "
        "renewal fails the call, form-encoded token request"
    ),
    HTTPX_AUTH: (
        "one lock around the fetch, but a thread that waited for it fetches again: N "
        "threads that find no valid token (at start, at each renewal: its margin makes the "
        "token count as expired) make N token requests one after another, and wait for "
        "them; a failed renewal fails the call; global token cache; form-encoded"
    ),
}


# -- tools ---------------------------------------------------------------------------------


def control(server: Server, **command: Any) -> dict[str, Any]:
    """:meth:`Server.control`, without an event loop."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/_control", json=command)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def _reset(server: Server, **knobs: Any) -> None:
    settings = {
        "token_lifetime": 3600,
        "token_latency": 0.0,
        "api_latency": 0.0,
        "token_failure_rate": 0.0,
        "outage_on_renewal": 0.0,
        "hold_api_until_revocation": False,
    }
    control(server, reset=True, set={**settings, **knobs})


def _error(call: Callable[[], int]) -> str | None:
    """Run *call*: ``None`` if it got a 200, else what went wrong."""
    try:
        status = call()
    except Exception as exc:  # noqa: BLE001 - every failure is counted, by type
        return type(exc).__name__
    return None if status == 200 else f"HTTP {status}"


def _rotated(names: list[str], turn: int) -> list[str]:
    turn %= len(names)
    return names[turn:] + names[:turn]


def _spread(values: list[float]) -> dict[str, float]:
    """:func:`summary` plus the 10th and 90th percentiles."""
    result = summary(values)
    result["p10"] = percentile(values, 10)
    result["p90"] = percentile(values, 90)
    return result


def _latency(durations: list[float]) -> dict[str, float]:
    """Count, p50, p99 and max, in milliseconds."""
    ms = [d * 1000 for d in durations]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
    }


def _count(errors: list[str | None]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for error in errors:
        if error is not None:
            counted[error] = counted.get(error, 0) + 1
    return counted


# -- 1. cold start -------------------------------------------------------------------------


def _burst(call: Callable[[], int], threads: int) -> tuple[float, list[float], list[str | None]]:
    """Release *threads* threads at once, each making one call; return the time until the
    last is served, each thread's latency, and each one's error."""
    barrier = threading.Barrier(threads + 1)
    starts = [math.nan] * threads
    ends = [math.nan] * threads
    errors: list[str | None] = ["not run"] * threads

    def worker(index: int) -> None:
        barrier.wait(30)
        starts[index] = time.perf_counter()
        errors[index] = _error(call)
        ends[index] = time.perf_counter()

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait(30)
    released = time.perf_counter()
    deadline = released + 90
    for thread in workers:
        thread.join(max(0.0, deadline - time.perf_counter()))
    finished = [e for e in ends if not math.isnan(e)]
    last = (max(finished) - released) if finished else math.nan
    latencies = [e - s for s, e in zip(starts, ends, strict=True) if not math.isnan(e)]
    return last, latencies, errors


def cold(server: Server, settings: SyncSettings, log: Log) -> dict[str, Any]:
    """Scenario 1: N threads start at once with no token, each making one call."""
    threads = settings.cold_threads
    target = Target(server.url, server.token_url)
    log(f"  cold start: {threads} threads, {settings.cold_rounds} rounds")
    raw: dict[str, dict[str, list[Any]]] = {
        name: {"last": [], "p50": [], "token_requests": [], "failed": [], "errors": []}
        for name in THREADED
    }
    for turn in range(settings.cold_rounds):
        for name in _rotated(THREADED, turn):
            _reset(server, token_latency=settings.cold_latency)
            with OPENERS[name](target, None) as opened:
                last, latencies, errors = _burst(opened.cold_call or opened.call, threads)
            stats = control(server)
            entry = raw[name]
            entry["last"].append(last)
            entry["p50"].append(percentile(latencies, 50))
            entry["token_requests"].append(float(stats["token_requests"]))
            failed = _count(errors)
            entry["failed"].append(float(sum(failed.values())))
            entry["errors"].append(failed)
            log(
                f"    round {turn + 1} {name}: last served after {last:.3f} s, "
                f"{stats['token_requests']} token requests, {sum(failed.values())} failed"
            )
    floor = raw[FLOOR]["last"]
    contenders = {}
    for name, entry in raw.items():
        ratios = [a / b for a, b in zip(entry["last"], floor, strict=True) if b > 0]
        contenders[name] = {
            "last_seconds": _spread(entry["last"]),
            "median_latency_seconds": _spread(entry["p50"]),
            "token_requests": _spread(entry["token_requests"]),
            "failed": _spread(entry["failed"]),
            "errors": entry["errors"],
            "ratio_to_floor": _spread(ratios),
        }
    return {
        "threads": threads,
        "rounds": settings.cold_rounds,
        "token_latency": settings.cold_latency,
        "contenders": contenders,
    }


# -- 2. warm overhead ----------------------------------------------------------------------


def _timed(call: Callable[[], int], n: int) -> float:
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        call()
    return clock() - start


def _interleaved(
    calls: dict[str, Callable[[], int]], floor: str, rounds: int, batch: int
) -> dict[str, Any]:
    """Time batches of *batch* calls, taking turns between contenders each round (GC paused
    while timing); return per-call times and the per-round ratios to *floor*."""
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        gc.collect()
        gc.disable()
        try:
            times = {name: _timed(calls[name], batch) for name in _rotated(names, turn)}
        finally:
            gc.enable()
        for name in names:
            seconds[name].append(times[name] / batch)
            ratios[name].append(times[name] / times[floor])
    return {
        name: {
            "microseconds_per_call": _spread([s * 1e6 for s in seconds[name]]),
            "ratio_to_floor": _spread(ratios[name]),
        }
        for name in names
    }


def _warm_set(names: list[str], floor: str, settings: SyncSettings) -> dict[str, Any]:
    counts: dict[str, MockCounts] = {}
    with contextlib.ExitStack() as stack:
        calls: dict[str, Callable[[], int]] = {}
        for name in names:
            counts[name] = MockCounts()
            target = Target("http://127.0.0.1:9", "http://127.0.0.1:9/token", counts[name])
            opened = stack.enter_context(OPENERS[name](target, None))
            if (error := _error(opened.first)) is not None:
                raise RuntimeError(f"{name}: the first call failed: {error}")
            # Everything imported and cached before timing starts.
            for _ in range(200):
                opened.call()
            calls[name] = opened.call
        timed = _interleaved(calls, floor, settings.warm_rounds, settings.warm_batch)
    for name in names:
        timed[name]["token_requests"] = counts[name].token
        timed[name]["api_calls"] = counts[name].api
    return timed


def warm(settings: SyncSettings, log: Log) -> dict[str, Any]:
    """Scenario 2: sequential calls end to end through mocks; payme_auth against the floor."""
    rounds, batch = settings.warm_rounds, settings.warm_batch
    log(f"  warm overhead: {rounds} interleaved batches of {batch} calls per contender")
    httpx_names = [FLOOR, FLOOR_AA, FLOOR_PRESET, PAYME, AUTHLIB_HTTPX, HTTPX_AUTH]
    requests_names = [FLOOR_REQUESTS, FLOOR_REQUESTS_AA, PAYME_REQUESTS, AUTHLIB_REQUESTS]
    result = {
        "rounds": rounds,
        "batch": batch,
        "httpx": _warm_set(httpx_names, FLOOR, settings),
        "requests": _warm_set(requests_names, FLOOR_REQUESTS, settings),
    }
    for kind, payme, target in (("httpx", PAYME, 1.03), ("requests", PAYME_REQUESTS, 1.05)):
        ratio = result[kind][payme]["ratio_to_floor"]
        log(
            f"    {kind}: {payme} {ratio['median']:.3f}{TIMES} the floor "
            f"(p10-p90 {ratio['p10']:.3f}-{ratio['p90']:.3f}; target <= {target})"
        )
    return result


# -- 3. renewal boundary and 4. outage: threads at a fixed rate ----------------------------


@dataclass
class Paced:
    """What threads calling at a fixed rate saw."""

    starts: list[float] = field(default_factory=list)  # time.monotonic(), as the server's
    durations: list[float] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    missed_slots: int = 0
    max_start_lateness: float = 0.0


def _paced(call: Callable[[], int], threads: int, period: float, seconds: float) -> Paced:
    """*threads* threads, each calling once per *period* (staggered) for *seconds*; a slot
    missed while a call was still running is skipped, not caught up."""
    t0 = time.monotonic() + 0.05
    end = t0 + seconds
    parts = [Paced() for _ in range(threads)]

    def worker(index: int) -> None:
        part = parts[index]
        slot = t0 + period * index / threads
        clock, sleep = time.monotonic, time.sleep
        while slot < end:
            now = clock()
            if now < slot:
                sleep(slot - now)
            start = clock()
            error = _error(call)
            done = clock()
            part.starts.append(start)
            part.durations.append(done - start)
            part.errors.append(error)
            part.max_start_lateness = max(part.max_start_lateness, start - slot)
            slot += period
            if slot < done:
                skipped = math.ceil((done - slot) / period)
                part.missed_slots += skipped
                slot += skipped * period

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in workers:
        thread.start()
    deadline = end + 90
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    merged = Paced()
    for part in parts:
        merged.starts += part.starts
        merged.durations += part.durations
        merged.errors += part.errors
        merged.missed_slots += part.missed_slots
        merged.max_start_lateness = max(merged.max_start_lateness, part.max_start_lateness)
    return merged


WINDOW_SLACK = 0.05  # seconds added to each side of a token request's time at the server


def _windows(token_log: list[list[float]], since: float) -> list[tuple[float, float]]:
    """The renewal windows: each token request sent after *since*, from its arrival to its
    answer at the server, widened by :data:`WINDOW_SLACK`; overlapping ones merged."""
    spans = sorted(
        (arrived - WINDOW_SLACK, answered + WINDOW_SLACK)
        for arrived, answered, _status in token_log
        if arrived >= since
    )
    merged: list[tuple[float, float]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _inside(moment: float, windows: list[tuple[float, float]]) -> bool:
    return any(low <= moment <= high for low, high in windows)


def _paced_run(
    server: Server,
    name: str,
    *,
    threads: int,
    period: float,
    seconds: float,
    margin: float,
    knobs: dict[str, Any],
) -> tuple[Paced, dict[str, Any], float]:
    """Open contender *name* against the server set with *knobs*, make its first call, then
    run :func:`_paced`; return what the callers saw, the server's stats, and the start."""
    _reset(server, **knobs)
    target = Target(server.url, server.token_url)
    with OPENERS[name](target, margin) as opened:
        if (error := _error(opened.first)) is not None:
            raise RuntimeError(f"{name}: the first call failed: {error}")
        began = time.monotonic()
        paced = _paced(opened.call, threads, period, seconds)
    return paced, control(server), began


def renewal(server: Server, settings: SyncSettings, log: Log) -> dict[str, Any]:
    """Scenario 3: threads at a fixed rate through the renewals of short-lived tokens."""
    lifetime, threads = settings.renewal_lifetime, settings.renewal_threads
    log(
        f"  renewal boundary: {threads} threads, one call each per {settings.renewal_period} s, "
        f"for {settings.renewal_seconds} s; {lifetime} s tokens"
    )
    contenders: dict[str, Any] = {}
    for name in THREADED:
        paced, stats, began = _paced_run(
            server,
            name,
            threads=threads,
            period=settings.renewal_period,
            seconds=settings.renewal_seconds,
            margin=lifetime / 2,
            knobs={"token_lifetime": lifetime, "token_latency": settings.token_latency},
        )
        windows = _windows(stats["token_log"], began)
        calls = list(zip(paced.starts, paced.durations, strict=True))
        inside = [d for s, d in calls if _inside(s, windows)]
        outside = [d for s, d in calls if not _inside(s, windows)]
        failed = _count(paced.errors)
        entry = {
            "calls": len(paced.durations),
            "failed": sum(failed.values()),
            "errors": failed,
            "expired_on_arrival": stats["expired_on_arrival"],
            "api_unauthorized": stats["api_unauthorized"],
            "token_requests": sum(1 for a, _b, _s in stats["token_log"] if a >= began),
            "renewal_windows": len(windows),
            "seconds_in_windows": sum(high - low for low, high in windows),
            "in_windows": _latency(inside),
            "elsewhere": _latency(outside),
            "all": _latency(paced.durations),
            "missed_slots": paced.missed_slots,
            "max_start_lateness_ms": paced.max_start_lateness * 1000,
            "slowest": _slowest(calls, stats["token_log"], began),
        }
        contenders[name] = entry
        log(
            f"    {name}: {entry['calls']} calls, {entry['failed']} failed, "
            f"{entry['expired_on_arrival']} with an expired token, "
            f"{entry['token_requests']} token requests; "
            f"in windows p50/p99/max {_ms(entry['in_windows'])} ms, "
            f"elsewhere {_ms(entry['elsewhere'])} ms"
        )
    return {
        "threads": threads,
        "period": settings.renewal_period,
        "seconds": settings.renewal_seconds,
        "lifetime": lifetime,
        "token_latency": settings.token_latency,
        "contenders": contenders,
    }


def _slowest(
    calls: list[tuple[float, float]], token_log: list[list[float]], began: float, n: int = 5
) -> list[dict[str, float | None]]:
    """The *n* slowest calls: their latency (ms), start (s into the run) and the time from
    the nearest token request's arrival at the server (s; ``None`` if there was none)."""
    arrivals = [arrived for arrived, _answered, _status in token_log if arrived >= began]
    slowest = sorted(calls, key=lambda call: call[1], reverse=True)[:n]
    return [
        {
            "ms": duration * 1000,
            "at": start - began,
            "from_token_request": (
                min((start - a for a in arrivals), key=abs) if arrivals else None
            ),
        }
        for start, duration in slowest
    ]


def _ms(latency: dict[str, float]) -> str:
    if not latency["n"]:
        return "n/a"
    return f"{latency['p50']:.1f}/{latency['p99']:.1f}/{latency['max']:.1f}"


OUTAGE_CONTENDERS = [PAYME, PAYME_REQUESTS, AUTHLIB_REQUESTS, AUTHLIB_HTTPX, HTTPX_AUTH]


def outage(server: Server, settings: SyncSettings, log: Log) -> dict[str, Any]:
    """Scenario 4: the token endpoint answers 503 from the first renewal on, for a while that
    ends before the token expires."""
    lifetime, threads = settings.outage_lifetime, settings.outage_threads
    log(
        f"  outage: {settings.outage_seconds} s of 503 from the first renewal; {lifetime} s "
        f"tokens; {threads} threads for {settings.outage_run} s"
    )
    contenders: dict[str, Any] = {}
    for name in OUTAGE_CONTENDERS:
        paced, stats, began = _paced_run(
            server,
            name,
            threads=threads,
            period=0.1,
            seconds=settings.outage_run,
            margin=lifetime / 2,
            knobs={
                "token_lifetime": lifetime,
                "token_latency": settings.token_latency,
                "outage_on_renewal": settings.outage_seconds,
            },
        )
        log_ = [entry for entry in stats["token_log"] if entry[0] >= began]
        failed = _count(paced.errors)
        renewed = [answered for _a, answered, status in log_ if status == 200]
        entry = {
            "calls": len(paced.durations),
            "failed": sum(failed.values()),
            "errors": failed,
            "expired_on_arrival": stats["expired_on_arrival"],
            "api_unauthorized": stats["api_unauthorized"],
            "token_requests": len(log_),
            "token_503": sum(1 for *_t, status in log_ if status == 503),
            "renewed_after_seconds": (renewed[0] - began) if renewed else None,
            "all": _latency(paced.durations),
        }
        contenders[name] = entry
        log(
            f"    {name}: {entry['calls']} calls, {entry['failed']} failed {failed or ''}, "
            f"{entry['token_requests']} token requests ({entry['token_503']} answered 503)"
        )
    return {
        "threads": threads,
        "lifetime": lifetime,
        "outage_seconds": settings.outage_seconds,
        "run_seconds": settings.outage_run,
        "token_latency": settings.token_latency,
        "contenders": contenders,
    }


# -- the run -------------------------------------------------------------------------------


def run_sync(quick: bool, log: Log) -> dict[str, Any]:
    """Run the four scenarios of synchronous callers; return their results (JSON-able)."""
    settings = SyncSettings.small() if quick else SyncSettings.full()
    began = time.monotonic()
    results: dict[str, Any] = {"settings": asdict(settings)}
    log("synchronous callers")
    results["warm"] = warm(settings, log)
    with Server() as server:
        results["cold"] = cold(server, settings, log)
        results["renewal"] = renewal(server, settings, log)
        results["outage"] = outage(server, settings, log)
    results["seconds"] = time.monotonic() - began
    log(f"  synchronous callers: {results['seconds']:.0f} s")
    return results


# -- the report ----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000 or (value == int(value) and abs(value) >= 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _median_range(spread: dict[str, float], digits: int = 3) -> str:
    """``median (min-max)``, or the median alone when every round agreed."""
    if not spread.get("n"):
        return "n/a"
    median, low, high = spread["median"], spread["min"], spread["max"]
    if spread["n"] == 1 or _num(low, digits) == _num(high, digits):
        return _num(median, digits)
    return f"{_num(median, digits)} ({_num(low, digits)}{DASH}{_num(high, digits)})"


def _ratio(spread: dict[str, float], *, deciles: bool = False) -> str:
    if not spread.get("n"):
        return "n/a"
    low, high = (spread["p10"], spread["p90"]) if deciles else (spread["min"], spread["max"])
    return f"{spread['median']:.3f}{TIMES} ({low:.3f}{DASH}{high:.3f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(errors.items()))


def _cold_markdown(cold: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in cold["contenders"].items():
        errors: dict[str, int] = {}
        for round_errors in entry["errors"]:
            for kind, count in round_errors.items():
                errors[kind] = errors.get(kind, 0) + count
        failed = _median_range(entry["failed"])
        if errors:
            failed += f" ({_errors(errors)} in all)"
        rows.append(
            [
                name,
                _median_range(entry["token_requests"]),
                _median_range(entry["last_seconds"]),
                _ratio(entry["ratio_to_floor"]),
                _median_range(entry["median_latency_seconds"]),
                failed,
                NOTES[name],
            ]
        )
    payme = cold["contenders"][PAYME]["token_requests"]
    return [
        f"### Cold start: {cold['threads']} threads at once",
        "",
        f"{cold['threads']} threads are released together and each makes one API call through "
        f"one shared client that has no token yet; the token endpoint answers after "
        f"{cold['token_latency'] * 1000:.0f} ms. {cold['rounds']} rounds, contenders taking "
        "turns; median (min" + DASH + "max) over rounds.",
        "",
        _table(
            [
                "contender",
                "token requests",
                "until the last thread is served (s)",
                "ratio to floor",
                "median thread (s)",
                "failed calls",
                "notes",
            ],
            rows,
        ),
        "",
        (
            f"Target: one token request for payme_auth: {_met(payme['max'] == 1)} "
            f"({_median_range(payme)})."
        ),
    ]


def _warm_markdown(warm: dict[str, Any], kind: str) -> list[str]:
    entries = warm[kind]
    aa, payme, limit, how = (
        (FLOOR_AA, PAYME, 1.03, "`httpx.Client` over `httpx.MockTransport`")
        if kind == "httpx"
        else (
            FLOOR_REQUESTS_AA,
            PAYME_REQUESTS,
            1.05,
            "a `requests.Session` with an adapter that returns a canned response",
        )
    )
    rows = [
        [
            name,
            _median_range(entry["microseconds_per_call"]),
            _ratio(entry["ratio_to_floor"], deciles=True),
            _ratio(entry["ratio_to_floor"]),
            str(entry["token_requests"]),
            "the floor timed twice: the noise" if name == aa else NOTES.get(name, ""),
        ]
        for name, entry in entries.items()
    ]
    noise = entries[aa]["ratio_to_floor"]
    ratio = entries[payme]["ratio_to_floor"]["median"]
    return [
        f"### Warm overhead: {how}",
        "",
        (
            f"One thread, end to end, no network; {warm['rounds']} rounds of {warm['batch']} calls "
            "per contender, contenders taking turns, GC paused while timing. The ratio is the "
            "median of the per-round ratios to the floor's batch of the same round."
        ),
        "",
        _table(
            [
                "contender",
                "µs per call, median (min" + DASH + "max)",
                "ratio to floor (p10" + DASH + "p90)",
                "ratio to floor (min" + DASH + "max)",
                "token requests",
                "notes",
            ],
            rows,
        ),
        "",
        (
            f"Noise (the floor against itself): {_ratio(noise, deciles=True)}. "
            f"Target: {payme} at most {limit:.2f}{TIMES} the floor: {_met(ratio <= limit)} "
            f"({ratio:.3f}{TIMES})."
        ),
    ]


def _renewal_markdown(renewal: dict[str, Any]) -> list[str]:
    entries = renewal["contenders"]
    floor_all = entries[FLOOR]["all"]
    noise = floor_all["max"] - floor_all["p50"]
    noise_p99 = floor_all["p99"] - floor_all["p50"]
    rows = []
    for name, entry in entries.items():
        inside, outside = entry["in_windows"], entry["elsewhere"]
        added = inside["max"] - outside["p50"] if inside["n"] and outside["n"] else math.nan
        failed = str(entry["failed"])
        if entry["errors"]:
            failed += f" ({_errors(entry['errors'])})"
        rows.append(
            [
                name,
                str(entry["calls"]),
                failed,
                str(entry["expired_on_arrival"]),
                str(entry["token_requests"]),
                f"{inside['n']}: {_ms(inside)}" if inside["n"] else "none",
                _ms(outside),
                _num(added) if name != FLOOR else f"({_num(noise)})",
                f"{entry['all']['p99'] / floor_all['p99']:.2f}{TIMES}",
                str(entry["missed_slots"]),
                NOTES[name],
            ]
        )
    payme = entries[PAYME]
    payme_added = payme["in_windows"]["max"] - payme["elsewhere"]["p50"]
    plug = entries[PAYME_REQUESTS]
    requests_added = plug["in_windows"]["max"] - plug["elsewhere"]["p50"]
    clean = all(
        entries[name]["failed"] == 0 and entries[name]["expired_on_arrival"] == 0
        for name in (PAYME, PAYME_REQUESTS)
    )
    return [
        f"### Renewal boundary: {renewal['threads']} threads at a fixed rate",
        "",
        (
            f"{renewal['threads']} threads share one client and each calls once every "
            f"{renewal['period'] * 1000:.0f} ms for {renewal['seconds']:g} s; tokens live "
            f"{renewal['lifetime']} s and the token endpoint answers after "
            f"{renewal['token_latency'] * 1000:.0f} ms. A call is in a renewal window when it "
            f"starts while a token request is at the server ({WINDOW_SLACK * 1000:.0f} ms added "
            "each side). Latencies in ms, p50/p99/max; \u201cadded\u201d is the window's max "
            "minus the p50 elsewhere (for the floor, its max minus its p50: the noise). Missed "
            "slots: calls a thread could not start on time because its previous call was "
            "still running."
        ),
        "",
        _table(
            [
                "contender",
                "calls",
                "failed",
                "expired token at the API",
                "token requests",
                "in renewal windows: calls: p50/p99/max",
                "elsewhere: p50/p99/max",
                "added (ms)",
                "p99 to floor",
                "missed slots",
                "notes",
            ],
            rows,
        ),
        "",
        (
            f"Targets for payme_auth: no failed call and no expired token: {_met(clean)}; no "
            f"thread waits (max added latency at the floor's noise): {_num(payme_added)} ms "
            f"(requests: {_num(requests_added)} ms) against the floor's {_num(noise)} ms "
            f"(max minus p50; p99 minus p50: {_num(noise_p99)} ms)."
        ),
    ]


def _outage_markdown(outage: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in outage["contenders"].items():
        failed = str(entry["failed"])
        if entry["errors"]:
            failed += f" ({_errors(entry['errors'])})"
        renewed = entry["renewed_after_seconds"]
        rows.append(
            [
                name,
                str(entry["calls"]),
                failed,
                str(entry["expired_on_arrival"]),
                f"{entry['token_requests']} ({entry['token_503']} answered 503)",
                "never" if renewed is None else f"{renewed:.2f}",
                _ms(entry["all"]),
                NOTES[name],
            ]
        )
    ok = all(outage["contenders"][n]["failed"] == 0 for n in (PAYME, PAYME_REQUESTS))
    return [
        "### Outage while the token is valid",
        "",
        (
            f"The token endpoint answers 503 for {outage['outage_seconds']:g} s from the first "
            f"renewal request on, which ends before the {outage['lifetime']} s token expires; "
            f"{outage['threads']} threads each call once every 100 ms for "
            f"{outage['run_seconds']:g} s. The floor fetches no token and is left out. The "
            "endpoint refusing connections is not measured here."
        ),
        "",
        _table(
            [
                "contender",
                "calls",
                "failed",
                "expired token at the API",
                "token requests",
                "new token at (s into the run)",
                "latency p50/p99/max (ms)",
                "notes",
            ],
            rows,
        ),
        "",
        f"Target: no failed call for payme_auth: {_met(ok)}.",
    ]


def sync_markdown(results: dict[str, Any]) -> str:
    """The "Synchronous callers" section of the report, in Markdown."""
    parts = [
        "## Synchronous callers",
        "",
        (
            "payme_auth from threads with no event loop (`httpx.Client`, `requests.Session`), "
            "against a floor, Authlib's sync clients and httpx-auth. Peers' margins are half the "
            "token's life where tokens are short (their defaults would refetch on every call)."
        ),
        "",
    ]
    for lines in (
        _cold_markdown(results["cold"]),
        _warm_markdown(results["warm"], "httpx"),
        _warm_markdown(results["warm"], "requests"),
        _renewal_markdown(results["renewal"]),
        _outage_markdown(results["outage"]),
    ):
        parts += [*lines, ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks._sync", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = run_sync(args.quick, log)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(sync_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
