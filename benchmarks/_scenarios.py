"""The scenarios. Each runs every contender in this process, alternating, round by round.

Every loop here is bounded: by a count, or by a deadline after which what is left is
cancelled and counted as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ._contenders import (
    COLD_CONTENDERS,
    CONTENDERS,
    Contender,
    CutOffTransport,
    Session,
    Target,
    start,
)
from ._measure import ROOT, Heartbeat, Server, longest_callback, percentile, summary

API_PATH = "/charges/merchant/op-1/tx-1"
Metrics = dict[str, float]


@dataclass
class Settings:
    """The sizes of a run: ``full()`` for the record, ``quick()`` for CI."""

    rounds: int
    cold_rounds_small: int
    cold_sizes: tuple[int, ...]
    cold_latencies: tuple[float, ...]
    cold_rounds_large: int
    warm_requests: int
    warm_concurrency: int
    memory_requests: int
    renewal_seconds: float
    renewal_rounds: int
    outage_lifetime: int
    outage_seconds: float
    outage_rounds: int
    margin_calls: int
    margin_deadline: float
    margin_rounds: int
    import_runs: int
    quick: bool = False

    @classmethod
    def full(cls) -> Settings:
        return cls(
            rounds=5,
            cold_rounds_small=3,
            cold_sizes=(1_000, 10_000),
            cold_latencies=(0.05, 0.5),
            cold_rounds_large=2,
            warm_requests=20_000,
            warm_concurrency=64,
            memory_requests=100_000,
            renewal_seconds=24.0,
            renewal_rounds=2,
            outage_lifetime=16,
            outage_seconds=5.0,
            outage_rounds=2,
            margin_calls=1_000,
            margin_deadline=5.0,
            margin_rounds=2,
            import_runs=40,
        )

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            rounds=2,
            cold_rounds_small=1,
            cold_sizes=(1_000,),
            cold_latencies=(0.05, 0.5),
            cold_rounds_large=1,
            warm_requests=1_000,
            warm_concurrency=64,
            memory_requests=10_000,
            renewal_seconds=4.5,
            renewal_rounds=1,
            outage_lifetime=6,
            outage_seconds=2.0,
            outage_rounds=1,
            margin_calls=100,
            margin_deadline=1.5,
            margin_rounds=1,
            import_runs=8,
            quick=True,
        )


Measure = Callable[[Contender], Awaitable[Metrics]]


async def alternate(
    rounds: int,
    measure: Measure,
    log: Callable[[str], None],
    contenders: list[Contender] = CONTENDERS,
) -> dict[str, list[Metrics]]:
    """Run *measure* on every contender, *rounds* times, rotating the order each round."""
    per: dict[str, list[Metrics]] = {c.name: [] for c in contenders}
    for index in range(rounds):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            result = await measure(contender)
            per[contender.name].append(result)
            log(f"    round {index + 1}/{rounds} {contender.name}: {_brief(result)}")
    return per


def _brief(metrics: Metrics) -> str:
    text = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.startswith("_"))
    where = metrics.get("_longest_where")
    return f"{text} (longest callback in {where})" if where else text


def aggregate(
    per: dict[str, list[Metrics]], ratio_keys: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """Medians and spreads per metric; for *ratio_keys*, the paired ratio to the floor."""
    out: dict[str, dict[str, Any]] = {}
    floor = per.get("floor", [])
    for name, results in per.items():
        keys = [k for k in results[0] if not k.startswith("_")] if results else []
        metrics = {k: summary([r[k] for r in results]) for k in keys}
        ratios = {}
        for key in ratio_keys:
            pairs = [r[key] / f[key] for r, f in zip(results, floor, strict=False) if f.get(key)]
            ratios[key] = summary(pairs)
        out[name] = {"metrics": metrics, "ratios": ratios}
    return out


def _notes(contenders: list[Contender] = CONTENDERS) -> dict[str, str]:
    return {c.name: c.notes for c in contenders}


async def _fire(client: httpx.AsyncClient, count: int) -> int:
    """Send *count* concurrent API calls; return how many failed."""

    async def one() -> bool:
        try:
            response = await client.get(API_PATH)
        except Exception:  # noqa: BLE001 - a failed call is what is counted
            return False
        return response.status_code == 200

    results = await asyncio.gather(*(one() for _ in range(count)))
    return results.count(False)


# -- 1. cold start -------------------------------------------------------------------------


async def cold_start(
    server: Server, settings: Settings, log: Callable[[str], None]
) -> dict[str, Any]:
    cases = []
    target = Target(token_url=server.token_url, base_url=server.url)
    for size in settings.cold_sizes:
        for latency in settings.cold_latencies:
            label = f"{size:,} requests, token latency {latency * 1000:.0f} ms"
            log(f"  cold start: {label}")

            async def measure(
                contender: Contender, size: int = size, latency: float = latency
            ) -> Metrics:
                await server.control(
                    reset=True, set={"token_latency": latency, "token_lifetime": 3600}
                )
                heartbeat = Heartbeat()
                gc.collect()
                # The collector's pauses land in whichever callback triggers them, at random:
                # off while measuring, so that stalls are the code's, for every contender.
                gc.disable()
                try:
                    async with contender.open(target) as session, heartbeat.running():
                        with longest_callback() as longest:
                            began = time.monotonic()
                            await start(session)
                            failed = await _fire(session.client, size)
                            wall = time.monotonic() - began
                            served = session.last_served - began
                finally:
                    gc.enable()
                stats = await server.control()
                # The server's clock is this one (time.monotonic() is system-wide on Linux).
                answered = stats["token_log"][0][1] - began if stats["token_log"] else math.nan
                return {
                    "token_requests": stats["token_requests"],
                    "answer_ms": answered * 1000,
                    "last_served_ms": served * 1000,
                    "served_after_answer_ms": (served - answered) * 1000,
                    "stall_ms": heartbeat.max_lateness * 1000,
                    "longest_callback_ms": longest.seconds * 1000,
                    "longest_callback_cpu_ms": longest.cpu_seconds * 1000,
                    "_longest_where": longest.cpu_where,  # type: ignore[dict-item]
                    "wall_s": wall,
                    "failed": failed,
                }

            rounds = settings.cold_rounds_small if size <= 1_000 else settings.cold_rounds_large
            per = await alternate(rounds, measure, log, COLD_CONTENDERS)
            cases.append(
                {
                    "case": label,
                    "size": size,
                    "token_latency": latency,
                    "contenders": aggregate(per, ("wall_s", "stall_ms", "longest_callback_ms")),
                    "raw": per,
                }
            )
    return {"cases": cases, "notes": _notes(COLD_CONTENDERS)}


# -- 2. warm overhead ----------------------------------------------------------------------

_TOKEN_ANSWER = {
    "action": "authorize",
    "success": True,
    "access_token": "warm-token-0123456789abcdef",
    "token_type": "Bearer",
    "expires_in": 3600,
    "scope": "create:token post:charges get:charges delete:charges",
    "authorization": {"meta": {"status": {"code": "00", "message_ilgn": []}}},
}
_TOKEN_BODY = json.dumps(_TOKEN_ANSWER).encode()
_API_ANSWER = json.dumps({"action": "query", "success": True}).encode()


def _mock_handler(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/token":
        # A streamed body, as from a network: a Response made with content= or json= is
        # read already, and a client that streams the answer (payme_auth does, to cap its
        # size) gets httpx.StreamConsumed from it.
        return httpx.Response(
            200,
            stream=httpx.ByteStream(_TOKEN_BODY),
            headers={"content-type": "application/json"},
        )
    return httpx.Response(200, content=_API_ANSWER, headers={"content-type": "application/json"})


def mock_target() -> Target:
    transport = httpx.MockTransport(_mock_handler)
    return Target(
        token_url="http://127.0.0.1:9/token",
        base_url="http://127.0.0.1:9",
        async_transport=transport,
        sync_transport=transport,
    )


async def _sequential(session: Session, count: int) -> float:
    client = session.client
    began = time.perf_counter()
    for _ in range(count):
        await client.get(API_PATH)
    return (time.perf_counter() - began) / count * 1e6


async def _concurrent(session: Session, count: int, width: int) -> float:
    client = session.client
    per_worker = count // width

    async def worker() -> None:
        for _ in range(per_worker):
            await client.get(API_PATH)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return (time.perf_counter() - began) / (per_worker * width) * 1e6


def _requests(session: Session, count: int) -> list[httpx.Request]:
    return [session.client.build_request("GET", API_PATH) for _ in range(count)]


async def _flow_alone(session: Session, count: int) -> float:
    requests = _requests(session, count)
    response = httpx.Response(200, content=_API_ANSWER)
    drive = session.drive
    gc.collect()
    began = time.perf_counter()
    for request in requests:
        await drive(request, response)
    return (time.perf_counter() - began) / count * 1e6


FLOW_BATCH = 500
"""Hand-driven flows per contender in one turn of the interleaved measurement."""


async def _flows_interleaved(count: int, log: Callable[[str], None]) -> dict[str, list[Metrics]]:
    """The auth flow alone, every contender open at once, taking turns in short batches.

    A whole run per contender, one after another, lets the machine's drift (other tenants,
    frequency changes) land on one contender and not the others; batches of
    :data:`FLOW_BATCH` flows in rotating order put every contender under the same
    conditions within milliseconds, and each batch's ratio to the floor's batch of the same
    turn is one paired sample.
    """
    per: dict[str, list[Metrics]] = {c.name: [] for c in CONTENDERS}
    response = httpx.Response(200, content=_API_ANSWER)
    async with contextlib.AsyncExitStack() as stack:
        sessions = []
        for contender in CONTENDERS:
            session = await stack.enter_async_context(contender.open(mock_target()))
            await start(session)
            await _sequential(session, 200)  # token fetched, code paths hot
            sessions.append((contender.name, session))
        turns = max(1, count // FLOW_BATCH)
        for turn in range(turns):
            shift = turn % len(sessions)
            for name, session in sessions[shift:] + sessions[:shift]:
                requests = _requests(session, FLOW_BATCH)
                drive = session.drive
                gc.collect()
                gc.disable()  # a collection would land in one batch at random
                try:
                    began = time.perf_counter()
                    for request in requests:
                        await drive(request, response)
                    elapsed = time.perf_counter() - began
                finally:
                    gc.enable()
                per[name].append({"flow_us": elapsed / FLOW_BATCH * 1e6})
    log(f"    auth flow alone: {turns} interleaved batches of {FLOW_BATCH} per contender")
    return per


async def _memory_growth(session: Session, count: int) -> float:
    """Bytes allocated and still alive after *count* hand-driven flows, less after a tenth.

    The first tenth settles one-time allocations (caches, free lists, tracemalloc's own);
    what the other nine tenths leave behind is growth.
    """
    response = httpx.Response(200, content=_API_ANSWER)
    drive = session.drive
    request = session.client.build_request("GET", API_PATH)
    for _ in range(1_000):
        await drive(request, response)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(count // 10):
            await drive(request, response)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count - count // 10):
            await drive(request, response)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return float(after - before)


async def warm_overhead(
    server: Server, settings: Settings, log: Callable[[str], None]
) -> dict[str, Any]:
    n, width = settings.warm_requests, settings.warm_concurrency
    log(f"  warm overhead: {n:,} sequential, {n:,} at {width}-way, {n:,} flows by hand")

    async def measure(contender: Contender) -> Metrics:
        async with contender.open(mock_target()) as session:
            await start(session)
            await _sequential(session, 500)  # warm-up: token fetched, code paths hot
            gc.collect()
            gc.disable()  # as in the cold start: the collector's pauses land at random
            try:
                sequential = await _sequential(session, n)
                concurrent = await _concurrent(session, n, width)
            finally:
                gc.enable()
        return {"sequential_us": sequential, "concurrent_us": concurrent}

    per = await alternate(settings.rounds, measure, log)
    result = aggregate(per, ("sequential_us", "concurrent_us"))
    flows = aggregate(await _flows_interleaved(n * settings.rounds, log), ("flow_us",))
    for name, flow in flows.items():
        result[name]["metrics"].update(flow["metrics"])
        result[name]["ratios"].update(flow["ratios"])
    log(f"  memory growth over {settings.memory_requests:,} hand-driven flows (tracemalloc)")
    for contender in CONTENDERS:
        async with contender.open(mock_target()) as session:
            await start(session)
            growth = await _memory_growth(session, settings.memory_requests)
        result[contender.name]["metrics"]["memory_growth_bytes"] = summary([growth])
        log(f"    {contender.name}: {growth:+,.0f} bytes")
    profile = await _profile_payme(min(n, 20_000))
    return {
        "cases": [{"case": "warm", "contenders": result, "raw": per}],
        "profile_payme_flow": profile,
        "notes": _notes(),
    }


async def _profile_payme(count: int) -> str:
    """cProfile of payme_auth's flow alone, driven by hand: where its time goes."""
    contender = next(c for c in CONTENDERS if c.name == "payme_auth")
    async with contender.open(mock_target()) as session:
        await start(session)
        await _flow_alone(session, 1_000)
        requests = _requests(session, count)
        response = httpx.Response(200, content=_API_ANSWER)
        profiler = cProfile.Profile()
        profiler.enable()
        for request in requests:
            await session.drive(request, response)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(14)
    return out.getvalue()


# -- open-loop load (scenarios 3 and 4) --------------------------------------------------


@dataclass
class Sample:
    scheduled: float  # time.monotonic() at which the call was due to start
    latency: float  # from scheduled start to answer (no coordinated omission)
    ok: bool


async def open_loop(
    client: httpx.AsyncClient, *, rate: float, seconds: float, drain: float = 30.0
) -> list[Sample]:
    """Start calls at *rate* per second for *seconds*, on a fixed schedule; wait for them.

    Latency counts from the scheduled start, so a frozen event loop that delays the start
    of calls is charged to them. Calls unfinished *drain* seconds after the last start are
    cancelled and counted as failed.
    """
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    clock = time.monotonic

    async def one(scheduled: float) -> None:
        ok = False
        try:
            response = await client.get(API_PATH)
            ok = response.status_code == 200
        except Exception:  # noqa: BLE001, S110 - counted as failed
            pass
        samples.append(Sample(scheduled, clock() - scheduled, ok))

    t0 = clock() + 0.02
    for index in range(int(rate * seconds)):
        scheduled = t0 + index / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        samples.extend(Sample(t0, drain, False) for _ in pending)
    return samples


# -- 3. renewal boundary -------------------------------------------------------------------

RENEWAL_LIFETIME = 8
RENEWAL_LATENCY = 0.3
RENEWAL_RATE = 200.0
WAIT_THRESHOLD = 0.020  # a caller 20 ms slower than the contender's own median waited


async def renewal(server: Server, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    seconds = settings.renewal_seconds
    log(
        f"  renewal boundary: tokens of {RENEWAL_LIFETIME} s, token latency "
        f"{RENEWAL_LATENCY * 1000:.0f} ms, {RENEWAL_RATE:.0f} calls/s for {seconds:g} s"
    )
    target = Target(token_url=server.token_url, base_url=server.url)
    traces: dict[str, Any] = {}

    async def measure(contender: Contender) -> Metrics:
        await server.control(
            reset=True,
            set={"token_lifetime": RENEWAL_LIFETIME, "token_latency": RENEWAL_LATENCY},
        )
        heartbeat = Heartbeat()
        async with contender.open(target, margin=RENEWAL_LIFETIME / 2) as session:
            await start(session)
            await session.client.get(API_PATH)  # the first token: not a renewal
            async with heartbeat.running():
                with longest_callback() as longest:
                    samples = await open_loop(session.client, rate=RENEWAL_RATE, seconds=seconds)
        stats = await server.control()
        renewals = [arrived for arrived, _, status in stats["token_log"][1:]]
        metrics = _renewal_metrics(samples, renewals)
        metrics["stall_ms"] = heartbeat.max_lateness * 1000
        metrics["longest_callback_ms"] = longest.seconds * 1000
        metrics["_longest_where"] = longest.where  # type: ignore[assignment]
        metrics["expired_token_requests"] = stats["expired_on_arrival"]
        metrics["token_requests"] = stats["token_requests"]
        traces[contender.name] = {
            "renewals": renewals,
            "samples": [(s.scheduled, s.latency, s.ok) for s in samples],
        }
        return metrics

    per = await alternate(settings.renewal_rounds, measure, log)
    return {
        "cases": [
            {
                "case": f"{RENEWAL_LIFETIME} s tokens, {RENEWAL_RATE:.0f}/s",
                "contenders": aggregate(per),
                "raw": per,
            }
        ],
        "trace": traces,  # the last round, for the plot
        "notes": _notes(),
    }


def _renewal_metrics(samples: list[Sample], renewals: list[float]) -> Metrics:
    def near(sample: Sample) -> bool:
        return any(r - 0.1 <= sample.scheduled < r + 0.9 for r in renewals)

    inside = [s.latency for s in samples if near(s)]
    outside = [s.latency for s in samples if not near(s)]
    baseline = percentile(outside, 50)
    return {
        "renewals": float(len(renewals)),
        "p50_ms": percentile(inside, 50) * 1000,
        "p99_ms": percentile(inside, 99) * 1000,
        "max_ms": percentile(inside, 100) * 1000,
        "baseline_p50_ms": baseline * 1000,
        "max_elsewhere_ms": percentile(outside, 100) * 1000,
        "max_added_ms": (percentile(inside, 100) - baseline) * 1000 if inside else 0.0,
        "waited": float(sum(lat - baseline > WAIT_THRESHOLD for lat in inside)),
        "failed": float(sum(not s.ok for s in samples)),
        "calls": float(len(samples)),
    }


# -- 4. token endpoint outage --------------------------------------------------------------

OUTAGE_RATE = 50.0
OUTAGE_LATENCY = 0.05


async def outage(server: Server, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    lifetime, length = settings.outage_lifetime, settings.outage_seconds
    seconds = lifetime - 2.0  # the first token stays valid for the whole run
    log(
        f"  outage: tokens of {lifetime} s; the token endpoint answers 503 for {length:g} s "
        f"from the first renewal request on; {OUTAGE_RATE:.0f} calls/s for {seconds:g} s"
    )
    target = Target(token_url=server.token_url, base_url=server.url)

    async def measure(contender: Contender) -> Metrics:
        await server.control(
            reset=True,
            set={
                "token_lifetime": lifetime,
                "token_latency": OUTAGE_LATENCY,
                "outage_on_renewal": length,
            },
        )
        async with contender.open(target, margin=lifetime / 2) as session:
            await start(session)
            await session.client.get(API_PATH)  # the first token, before the outage
            heartbeat = Heartbeat()
            async with heartbeat.running():
                samples = await open_loop(session.client, rate=OUTAGE_RATE, seconds=seconds)
        stats = await server.control(set={"outage_on_renewal": 0.0})
        return {
            "failed": float(sum(not s.ok for s in samples)),
            "calls": float(len(samples)),
            "token_requests": stats["token_requests"],
            "max_latency_ms": max(s.latency for s in samples) * 1000,
            "stall_ms": heartbeat.max_lateness * 1000,
        }

    per = await alternate(settings.outage_rounds, measure, log)
    return {
        "cases": [
            {
                "case": f"{length:g} s outage, {lifetime} s tokens",
                "contenders": aggregate(per),
                "raw": per,
            }
        ],
        "notes": _notes(),
    }


# -- 5. revocation storm -------------------------------------------------------------------

STORM_SIZE = 100


async def revocation(
    server: Server, settings: Settings, log: Callable[[str], None]
) -> dict[str, Any]:
    log(
        f"  revocation: every token is revoked while {STORM_SIZE} calls are in flight"
        f" (held by the API until then), then {STORM_SIZE} more calls"
    )
    target = Target(token_url=server.token_url, base_url=server.url, width=STORM_SIZE)

    async def measure(contender: Contender) -> Metrics:
        await server.control(
            reset=True, set={"token_lifetime": 3600, "hold_api_until_revocation": True}
        )
        try:
            async with contender.open(target) as session:
                await start(session)
                first = asyncio.create_task(_fire(session.client, STORM_SIZE))
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # bounded: until all are in the server
                    stats = await server.control()
                    if stats["api_in_flight"] >= STORM_SIZE:
                        break
                    await asyncio.sleep(0.01)
                before = stats["token_requests"]
                # Releases the held calls (their tokens now revoked); later calls are not held.
                stats = await server.control(revoke=True)
                in_flight = stats["api_in_flight"]
                failed_in_flight = await asyncio.wait_for(first, 60)
                failed_after = await asyncio.wait_for(_fire(session.client, STORM_SIZE), 60)
            stats = await server.control()
        finally:
            await server.control(set={"hold_api_until_revocation": False})
        return {
            "in_flight_at_revocation": float(in_flight),
            "failed_in_flight": float(failed_in_flight),
            "failed_after": float(failed_after),
            "extra_token_requests": float(stats["token_requests"] - before),
        }

    per = await alternate(settings.rounds if not settings.quick else 1, measure, log)
    return {
        "cases": [
            {
                "case": f"{STORM_SIZE} in flight + {STORM_SIZE} after",
                "contenders": aggregate(per),
                "raw": per,
            }
        ],
        "notes": _notes(),
    }


# -- 6. outage inside the refresh margin ---------------------------------------------------

MARGIN = 22.0
"""Every contender renews its token this many seconds before expiry (payme_auth with
``advisory_ratio=None``, so that its renewal too is due from the margin on and not before)."""
LEFT = 20.0
"""The cached token's life left when the calls meet the broken endpoint: inside the margin."""
FIRST_WAIT = 25.0
"""From the first token fetch to the first measurement: the first token lives ``FIRST_WAIT +
LEFT`` seconds, more than twice ``MARGIN`` (payme_auth caps its margin at half a lifetime)."""
MARGIN_MODES = ("refuse", "hang")


async def _burst(
    client: httpx.AsyncClient, count: int, deadline: float, cut: CutOffTransport
) -> tuple[list[float], int]:
    """*count* calls at once: latencies from the start of the burst, and failures.

    Calls unfinished after *deadline* seconds are cancelled and failed, their latency the
    time they were cut off at (later than *deadline* if the event loop was blocked). A call
    not started by then does not start: every task's first step runs in one turn of the
    event loop, before any timer, so a contender that blocks the loop in its auth flow
    would otherwise block it once per call.
    """
    clock = time.monotonic
    latencies: list[float] = []
    began = clock()
    end = cut.cut_at = began + deadline

    async def one() -> bool:
        ok = False
        if clock() >= end:
            raise asyncio.CancelledError  # counted with the calls cut off
        try:
            response = await client.get(API_PATH)
            ok = response.status_code == 200
        except Exception:  # noqa: BLE001, S110 - a failed call is what is counted
            pass
        latencies.append(clock() - began)
        return ok

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    cut = clock() - began
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=30)
    cancelled = [t for t in tasks if t.cancelled() or not t.done()]
    latencies += [cut] * len(cancelled)
    failed = len(cancelled) + sum(not t.result() for t in tasks if t.done() and not t.cancelled())
    return latencies, failed


async def _in_turn(
    client: httpx.AsyncClient, count: int, deadline: float, cut: CutOffTransport
) -> tuple[list[float], int]:
    """*count* calls one after another, for at most *deadline* seconds in all.

    A call still running at the deadline is cut off; calls not started by then are failed
    and have no latency.
    """
    clock = time.monotonic
    end = cut.cut_at = clock() + deadline
    latencies: list[float] = []
    failed = 0
    for index in range(count):
        left = end - clock()
        if left <= 0:
            failed += count - index
            break
        began = clock()
        ok = False
        try:
            response = await asyncio.wait_for(client.get(API_PATH), left)
            ok = response.status_code == 200
        except Exception:  # noqa: BLE001, S110 - a failed or cut-off call
            pass
        latencies.append(clock() - began)
        failed += not ok
    return latencies, failed


def _slot_order(index: int) -> list[tuple[str, Contender]]:
    """One round's (mode, contender) slots: every contender with the endpoint refusing
    connections, then with it hanging; the order rotates from round to round. A contender
    that blocks the event loop goes last when the endpoint hangs: it overruns the deadline
    by one token-request timeout per pattern (its token requests are given the deadline as
    their timeout instead of its default 60 s), which would eat into the next slot."""
    shift = index % len(CONTENDERS)
    rotated = CONTENDERS[shift:] + CONTENDERS[:shift]
    hang = [c for c in rotated if not c.blocks_loop] + [c for c in rotated if c.blocks_loop]
    return [("refuse", c) for c in rotated] + [("hang", c) for c in hang]


async def margin_outage(
    server: Server, settings: Settings, log: Callable[[str], None]
) -> dict[str, Any]:
    calls, deadline = settings.margin_calls, settings.margin_deadline
    budget = 2 * deadline + 1.0  # one slot: a burst, then calls in turn, each cut off
    log(
        f"  outage inside the refresh margin: a token with {LEFT:g} s left (margin "
        f"{MARGIN:g} s), the token endpoint refusing connections or hanging; {calls:,} calls "
        f"at once, then {calls:,} in turn, each pattern cut off after {deadline:g} s"
    )
    per: dict[str, dict[str, list[Metrics]]] = {
        mode: {c.name: [] for c in CONTENDERS} for mode in MARGIN_MODES
    }
    for index in range(settings.margin_rounds):
        slots = _slot_order(index)
        gate = await server.control(reset=True, gate="serve", set={"token_latency": 0.0})
        began = time.monotonic()
        starts = [began + FIRST_WAIT + n * budget for n in range(len(slots))]
        stacks = [contextlib.AsyncExitStack() for _ in slots]
        try:
            # Every slot's contender opens now, and gets a token that will have LEFT seconds
            # of life when its slot starts: the waits run side by side.
            opened = []
            for n, (_, contender) in enumerate(slots):
                lifetime = round(starts[n] + LEFT - time.monotonic())
                await server.control(set={"token_lifetime": lifetime})
                target = Target(
                    token_url=f"http://127.0.0.1:{gate['gate_port']}/token/{index}-{n}",
                    base_url=server.url,
                    sync_transport=CutOffTransport(),
                )
                session = await stacks[n].enter_async_context(
                    contender.open(
                        target,
                        margin=MARGIN,
                        at_margin=True,
                        token_timeout=math.ceil(deadline),
                    )
                )
                await start(session)
                await session.client.get(API_PATH)  # its first token
                stats = await server.control()
                issued = stats["token_log"][-1][1] if contender.name != "floor" else math.nan
                opened.append((session, issued + lifetime, target.sync_transport))
            for n, (mode, contender) in enumerate(slots):
                session, expires_at, cut = opened[n]
                if n == 0 or mode != slots[n - 1][0]:
                    await server.control(gate=mode)
                await asyncio.sleep(max(0.0, starts[n] - time.monotonic()))
                left = expires_at - time.monotonic()
                gc.collect()
                burst, burst_failed = await _burst(session.client, calls, deadline, cut)
                turn, turn_failed = await _in_turn(session.client, calls, deadline, cut)
                await stacks[n].aclose()
                metrics = {
                    "left_s": left,
                    "burst_failed": float(burst_failed),
                    "burst_p99_ms": percentile(burst, 99) * 1000,
                    "burst_max_ms": percentile(burst, 100) * 1000,
                    "turn_failed": float(turn_failed),
                    "turn_p99_ms": percentile(turn, 99) * 1000,
                    "turn_max_ms": percentile(turn, 100) * 1000,
                }
                per[mode][contender.name].append(metrics)
                log(f"    round {index + 1} {mode} {contender.name}: {_brief(metrics)}")
        finally:
            for stack in stacks:
                await stack.aclose()
            await server.control(gate="serve")  # and drops every hanging connection
    cases = []
    for mode in MARGIN_MODES:
        what = "refusing connections" if mode == "refuse" else "accepting, never answering"
        cases.append(
            {
                "case": f"token endpoint {what}",
                "mode": mode,
                "contenders": aggregate(per[mode], ("burst_max_ms", "turn_max_ms")),
                "raw": per[mode],
            }
        )
    return {
        "cases": cases,
        "calls": calls,
        "deadline": deadline,
        "margin": MARGIN,
        "left": LEFT,
        "notes": _notes(),
    }


# -- 7. import time ------------------------------------------------------------------------

_IMPORT_PROBE = (
    "import time; began = time.perf_counter(); import {module}; print(time.perf_counter() - began)"
)


def _import_env(cache: str) -> dict[str, str]:
    """The probes' environment: compiled bytecode for every module, in *cache*.

    An installed package comes with its bytecode compiled (httpx's is in site-packages),
    but a source checkout may have none, notably where ``PYTHONDONTWRITEBYTECODE`` is set:
    then every probe would compile payme_auth from source. With a cache prefix, every
    module's bytecode is read from (and first written to) *cache* alone, for both modules.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _import_seconds(module: str, env: dict[str, str]) -> float:
    """Seconds ``import module`` takes in a fresh interpreter (its start-up not counted)."""
    out = subprocess.run(  # noqa: S603 - this interpreter, a fixed probe
        [sys.executable, "-c", _IMPORT_PROBE.format(module=module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(out.stdout.strip())


def _import_profile(
    module: str, beside: str, env: dict[str, str], top: int = 8
) -> list[tuple[str, float]]:
    """What ``import module`` loads beyond ``import beside``, from ``python -X importtime``:
    the self time (ms) of those modules summed by top-level package, largest first."""

    def self_times(name: str) -> dict[str, float]:
        out = subprocess.run(  # noqa: S603 - this interpreter, a fixed probe
            [sys.executable, "-X", "importtime", "-c", f"import {name}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        found = {}
        for line in out.stderr.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3 and parts[0].strip().isdigit():
                found[parts[2].strip()] = float(parts[0]) / 1000
        return found

    mine, theirs = self_times(module), self_times(beside)
    packages: dict[str, float] = {}
    for name, ms in mine.items():
        if name not in theirs:
            packages[name.split(".")[0]] = packages.get(name.split(".")[0], 0.0) + ms
    return sorted(packages.items(), key=lambda item: -item[1])[:top]


async def import_time(
    server: Server, settings: Settings, log: Callable[[str], None]
) -> dict[str, Any]:
    runs = settings.import_runs
    log(f"  import time: {runs} fresh interpreters each, side by side")
    modules = ("httpx", "payme_auth")
    per: dict[str, list[Metrics]] = {m: [] for m in modules}
    with tempfile.TemporaryDirectory(prefix="bench-pycache-") as cache:
        env = _import_env(cache)
        for module in modules:  # writes the bytecode cache; not timed
            await asyncio.to_thread(_import_seconds, module, env)
        for index in range(runs):
            order = modules if index % 2 == 0 else modules[::-1]
            pair = {m: await asyncio.to_thread(_import_seconds, m, env) for m in order}
            for module in modules:
                per[module].append({"import_ms": pair[module] * 1000})
        beyond = await asyncio.to_thread(_import_profile, "payme_auth", "httpx", env)
    ratios = [
        p["import_ms"] / h["import_ms"]
        for p, h in zip(per["payme_auth"], per["httpx"], strict=True)
    ]
    log(
        f"    median: httpx {statistics.median(r['import_ms'] for r in per['httpx']):.1f} ms, "
        f"payme_auth {statistics.median(r['import_ms'] for r in per['payme_auth']):.1f} ms"
    )
    return {
        "cases": [
            {
                "case": "import",
                "contenders": {
                    module: {
                        "metrics": {"import_ms": summary([r["import_ms"] for r in per[module]])},
                        "ratios": {},
                    }
                    for module in modules
                },
                "ratio": summary(ratios),
                "raw": per,
            }
        ],
        "beyond_httpx": beyond,
    }


SCENARIOS: dict[
    str, Callable[[Server, Settings, Callable[[str], None]], Awaitable[dict[str, Any]]]
] = {
    "cold_start": cold_start,
    "warm_overhead": warm_overhead,
    "renewal": renewal,
    "outage": outage,
    "revocation": revocation,
    "margin_outage": margin_outage,
    "import_time": import_time,
}
