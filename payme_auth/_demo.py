"""``python -m payme_auth demo``: the library's main job, end to end, on this machine alone.

It serves the Pay-me emulator on a free loopback port, points a PaymeAuth at it with the
emulator's built-in credentials, and sends bursts of concurrent authenticated API calls
through ``httpx.AsyncClient(auth=...)``: the first burst must cost one token request, and
after the server revokes every token, the next burst must cost exactly one more.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO

import anyio
import httpx

from ._auth import PaymeAuth


async def _burst(
    api: httpx.AsyncClient, count: int, concurrency: int
) -> tuple[Counter[int], float]:
    statuses: Counter[int] = Counter()
    limiter = anyio.CapacityLimiter(concurrency)

    async def charge(number: int) -> None:
        async with limiter:
            response = await api.post(
                "/charges",
                json={
                    "merchant_code": "DEMO",
                    "merchant_operation_number": f"{number:08d}",
                    "amount": "10.00",
                    "currency": "PEN",
                },
            )
            statuses[response.status_code] += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for number in range(count):
            tg.start_soon(charge, number)
    return statuses, time.perf_counter() - started


def _describe(statuses: Counter[int]) -> str:
    return ", ".join(f"HTTP {status} x{n}" for status, n in sorted(statuses.items()))


async def run_demo(
    out: TextIO, *, requests: int = 200, concurrency: int = 100, token_latency: float = 0.05
) -> bool:
    """Run the demo, writing its report to *out*; return whether everything went as it must."""
    from .testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, PaymeEmulator, run_emulator

    emulator = PaymeEmulator(token_latency=token_latency)
    with run_emulator(emulator) as server:
        out.write(f"Pay-me emulator serving at {server.url} (token latency {token_latency:g} s)\n")
        async with (
            PaymeAuth(
                DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=server.environment
            ) as auth,
            httpx.AsyncClient(base_url=server.url, auth=auth) as api,
        ):
            statuses, seconds = await _burst(api, requests, concurrency)
            first = emulator.stats.token_requests
            out.write(
                f"burst 1: {requests} POST /charges, {concurrency} at a time: "
                f"{_describe(statuses)} in {seconds:.3f} s; token requests: {first}\n"
            )
            revoked = emulator.revoke_tokens()
            out.write(f"the server revoked {revoked} token(s): the API now answers 401 to it\n")
            statuses2, seconds = await _burst(api, requests, concurrency)
            second = emulator.stats.token_requests - first
            replays = emulator.stats.api_unauthorized
            out.write(
                f"burst 2: {requests} POST /charges, {concurrency} at a time: "
                f"{_describe(statuses2)} in {seconds:.3f} s; token requests: {second} "
                f"({replays} request(s) answered 401 and replayed with the new token)\n"
            )
            token = await auth.get_token()
            out.write(
                f"token in use: {token.fingerprint} (a hash; the token is never shown), "
                f"expires in {token.expires_in} s, scope: {' '.join(sorted(token.scope))}\n"
            )
    ok = (
        statuses == Counter({200: requests}) and statuses2 == statuses and (first, second) == (1, 1)
    )
    out.write("OK: every call succeeded with one token request per token\n" if ok else "FAILED\n")
    return ok
