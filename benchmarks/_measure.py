"""Measuring tools: the server child process, event-loop stall probes, summary statistics."""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """The loopback server of ``benchmarks._server``, in a child process."""

    def __init__(self, *, max_seconds: float = 3600.0) -> None:
        self._process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "benchmarks._server", "--max-seconds", str(max_seconds)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._process.stdout is None:  # pragma: no cover - stdout=PIPE above
            raise RuntimeError("no pipe from the benchmark server")
        line = self._process.stdout.readline()  # the child prints it once it serves
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_url = f"{self.url}/token"
        self.audience = f"{self.url}/"

    async def control(self, **command: Any) -> dict[str, Any]:
        """Send a control command (``reset``, ``set``, ``revoke``); return the stats."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            response = await client.post("/_control", json=command)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(OSError, AttributeError):
                process.stdin.close()  # type: ignore[union-attr]  # the child's watchdog exits on EOF
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Heartbeat:
    """A task that sleeps 1 ms at a time and records how late each wake-up is."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.max_lateness = 0.0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Heartbeat]:
        stop = asyncio.Event()

        async def beat() -> None:
            clock = time.perf_counter
            while not stop.is_set():
                before = clock()
                await asyncio.sleep(self.period)
                late = clock() - before - self.period
                self.max_lateness = max(self.max_lateness, late)

        task = asyncio.create_task(beat())
        await asyncio.sleep(0)
        try:
            yield self
        finally:
            stop.set()
            await task


class Longest:
    """The longest event-loop callback seen: its duration (s) and what it was running.

    Two measures: wall time, and the CPU time of the event loop's thread. On a shared
    machine the host may pause the whole process for tens of milliseconds at any moment,
    inside whichever callback happens to run; that lengthens its wall time but not its CPU
    time, which only the code itself (and the memory it touches) can spend.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.where = ""
        self.cpu_seconds = 0.0
        self.cpu_where = ""


def _describe(handle: asyncio.events.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return getattr(coro, "__qualname__", repr(coro))
    return getattr(callback, "__qualname__", repr(callback))


@contextlib.contextmanager
def longest_callback() -> Iterator[Longest]:
    """Time every event-loop callback (task step) and keep the longest.

    The heartbeat measures how late a timer fires, which at 10,000 ready tasks is the
    harness's own scheduling as much as the code under test; the longest single callback
    is the longest time one piece of code held the loop without an await.
    """
    longest = Longest()
    original = asyncio.events.Handle._run  # noqa: SLF001 - the one place every callback runs
    clock = time.perf_counter

    cpu_clock = time.thread_time

    def timed(self: asyncio.events.Handle) -> None:
        start, cpu_start = clock(), cpu_clock()
        original(self)
        elapsed, cpu = clock() - start, cpu_clock() - cpu_start
        if elapsed > longest.seconds:
            longest.seconds = elapsed
            longest.where = _describe(self)
        if cpu > longest.cpu_seconds:
            longest.cpu_seconds = cpu
            longest.cpu_where = _describe(self)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]  # noqa: SLF001
    try:
        yield longest
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]  # noqa: SLF001


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round values (NaN-free)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }
