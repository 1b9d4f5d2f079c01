"""Scenario: token requests per hour for a fleet of N processes, with and without a store.

Each process is ``tests/redis_fleet/child.py``: a PaymeAuth (with a RedisTokenStore on a
redis-server of the scenario's own, or without a store) calling the benchmark server's API
every 50 ms. Real tokens live hours; here they live ``LIFETIME`` seconds, with the refresh
margin scaled down in proportion (60 s of 8600 s), so that a token's renewal falls at the
same fraction of its life. Token requests are counted over a window of the run that starts
after the first fetches and ends before the processes stop, and extrapolated::

    requests per token lifetime = requests in the window / window length * LIFETIME
    requests per hour           = requests per token lifetime * 3600 / 8600

(8600 s is the ``expires_in`` of Pay-me's documented example.) Without a store every
process renews its own token; with one, the fleet renews one token together.

Needs ``redis-server`` on the PATH and the ``redis`` package (``payme-auth[redis]``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ._measure import ROOT, Server, summary
from ._scenarios import Settings
from ._server import CLIENT_ID, CLIENT_SECRET

LIFETIME = 3
PAYME_LIFETIME = 8600
PAYME_MARGIN = 60.0
CALL_INTERVAL = 0.05


def _fleet_helpers() -> tuple[Any, Any]:
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.redis_fleet.fleet import Fleet
    from tests.redis_fleet.server import RedisServer, redis_server_path

    if redis_server_path() is None:
        raise RuntimeError("the fleet scenario needs redis-server on the PATH")
    return Fleet, RedisServer


async def _run_fleet(
    server: Server, processes: int, seconds: float, redis_url: str | None
) -> dict[str, float]:
    fleet_class, _ = _fleet_helpers()
    await server.control(reset=True, set={"token_lifetime": LIFETIME, "token_latency": 0.02})
    settings = {
        "token_url": server.token_url,
        "audience": server.audience,
        "api_version": "1709847567",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redis_url": redis_url,
        "redis_timeout": 1.0,
        "mode": "calls",
        "seconds": seconds,
        "interval": CALL_INTERVAL,
        "refresh_margin": LIFETIME * PAYME_MARGIN / PAYME_LIFETIME,
    }
    with fleet_class(processes, settings) as fleet:
        await asyncio.to_thread(fleet.start, 60.0)
        began = time.monotonic()
        await asyncio.sleep(LIFETIME / 2)  # the first fetches are over, no renewal yet
        first = (await server.control())["token_requests"]
        opened = time.monotonic()
        await asyncio.sleep(max(0.0, seconds - 0.3 - (opened - began)))
        last = (await server.control())["token_requests"]
        window = time.monotonic() - opened
        results = await asyncio.to_thread(fleet.results, 60.0)
    per_lifetime = (last - first) / window * LIFETIME
    return {
        "processes": float(processes),
        "window_s": window,
        "token_requests_in_window": float(last - first),
        "token_requests_total": float(last),
        "per_token_lifetime": per_lifetime,
        "per_hour_8600s_tokens": per_lifetime * 3600 / PAYME_LIFETIME,
        "failed_calls": float(sum(r["failed"] for r in results)),
        "calls": float(sum(r["ok"] + r["failed"] for r in results)),
    }


async def fleet(server: Server, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Token requests per hour for N processes, without a store and with RedisTokenStore.

    Returns ``{"cases": [...], "rows": [...]}``: one case per fleet size, whose two
    "contenders" are ``no store`` and ``RedisTokenStore``; ``rows`` has one flat row per
    run, for a table.
    """
    _, redis_class = _fleet_helpers()
    sizes = (4,) if settings.quick else (4, 16)
    seconds = 6.0 if settings.quick else 12.0
    rows: list[dict[str, Any]] = []
    cases = []
    with redis_class() as redis:
        for size in sizes:
            per: dict[str, dict[str, Any]] = {}
            for name, url in (("no store", None), ("RedisTokenStore", redis.url)):
                log(f"  fleet: {size} processes, {name}, {LIFETIME} s tokens for {seconds:g} s")
                metrics = await _run_fleet(server, size, seconds, url)
                log(
                    f"    {metrics['per_hour_8600s_tokens']:.2f} token requests/hour "
                    f"({metrics['token_requests_in_window']:.0f} in "
                    f"{metrics['window_s']:.1f} s), {metrics['failed_calls']:.0f} failed calls"
                )
                rows.append({"processes": size, "store": name, **metrics})
                per[name] = {
                    "metrics": {key: summary([value]) for key, value in metrics.items()},
                    "ratios": {},
                }
            cases.append({"case": f"{size} processes", "size": size, "contenders": per})
    return {
        "cases": cases,
        "rows": rows,
        "notes": {
            "no store": "every process fetches and renews its own token",
            "RedisTokenStore": "the fleet shares one token through Redis",
        },
    }


def table(result: dict[str, Any]) -> str:
    """The scenario's rows as a Markdown section, for the report."""
    lines = [
        "### 6. A fleet of processes",
        "",
        f"{LIFETIME} s tokens, extrapolated to Pay-me's {PAYME_LIFETIME} s tokens.",
        "",
        "| processes | store | requests per token lifetime | requests per hour | failed calls |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['processes']:.0f} | {row['store']} | {row['per_token_lifetime']:.2f} | "
        f"{row['per_hour_8600s_tokens']:.2f} | {row['failed_calls']:.0f} |"
        for row in result["rows"]
    ]
    return "\n".join(lines) + "\n"
