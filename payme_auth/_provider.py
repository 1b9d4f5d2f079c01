"""The token provider: one cached token, renewed in time, fetched one flight at a time.

Rules:
- One cached token serves the whole provider: every event loop and thread that uses it.
  It is kept together with its windows (see ``_policy``) as one value, replaced whole.
- Before its renewal point the token is returned with no lock and no await checkpoint.
  From there on callers still get it at once, and the first to notice starts one
  background renewal. Callers wait only with no token, an expired one, or one inside its
  safety margin, and not even then once a renewal of it has failed: a valid token is then
  served until it expires, while renewal goes on in the background after a pause.
- Every fetch runs in a task of the provider's own, a *flight*, started in the event loop
  of the caller that needs it (an asyncio task, a trio system task), never in a caller's
  task: cancelling a caller never cancels a flight that others wait on.
- A flight belongs to its event loop. Each loop has its own ``anyio.Lock`` and at most one
  flight in the air; its callers wait for that flight only, never for another loop's, which
  may be blocked, closed, or, after ``fork()``, in another process. A caller that must wait
  starts its loop's flight if none is in the air, then queues on the lock; the holder
  watches the flight land and the others follow one at a time. A generation count says
  whether a flight landed since a caller arrived: if so, the caller takes that flight's
  outcome, the token *or the error*, and starts none. A failing endpoint is hit once per
  flight, not once per caller.
- A background renewal starts only if no flight started within the longest a fetch can
  take, so that all event loops together run one at a time (one stuck in a dead loop holds
  the next back that long at most).
- A flight that fails while the cached token has not expired is nobody's error: its
  callers get that token, the failure is logged (at ERROR when the server refused, else
  WARNING), and the next renewal waits a pause (``_policy.renewal_pause``). A flight that
  brings back no newer token is treated the same. Nothing failed or cancelled is cached.
- ``close()`` cancels every flight of every event loop at once, through each loop's
  thread-safe call; their callers get :class:`~payme_auth.AuthClosedError`. In a child
  process after ``fork()``, every flight of the parent is forgotten.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import anyio

from ._errors import AuthClosedError, TokenEndpointUnavailableError, TokenError
from ._log import logger
from ._policy import Windows, renewal_pause
from ._stats import AuthStats, TokenState
from ._token import AccessToken

if TYPE_CHECKING:
    import asyncio

__all__ = ["TokenProvider", "TokenSource"]


class TokenSource(Protocol):
    """Where the provider's flights get tokens: the token endpoint, or a fleet's store."""

    @property
    def requests(self) -> int:
        """Token requests sent so far, retries included."""

    async def fetch(self, current: AccessToken | None) -> AccessToken:
        """A new token (newer than *current*, the cached one, where the source can tell)."""

    def refused(self, token: AccessToken) -> None:
        """Note that the API refused *token*: it must not come back from this source."""


class _Flight:
    """One fetch in the air, in one event loop."""

    __slots__ = ("landed", "scope", "task")

    def __init__(self) -> None:
        self.landed = anyio.Event()
        self.scope = anyio.CancelScope()
        self.task: asyncio.Task[None] | None = None  # held, so that asyncio keeps it


class _Loop:
    """One event loop's share of the provider: its lock, its flight, the last outcome."""

    __slots__ = ("flight", "generation", "key", "lock", "outcome")

    def __init__(self, key: object) -> None:
        self.key = weakref.ref(key)  # the asyncio loop, or the trio run's token
        self.lock = anyio.Lock()
        self.flight: _Flight | None = None
        self.generation = 0  # flights landed in this loop so far
        self.outcome: tuple[AccessToken | Exception, TracebackType | None] | None = None

    def land(self, flight: _Flight, outcome: AccessToken | Exception) -> None:
        traceback = None if isinstance(outcome, AccessToken) else outcome.__traceback__
        self.outcome = (outcome, traceback)
        self.generation += 1
        if self.flight is flight:
            self.flight = None
        flight.landed.set()

    def cancel_flight(self, *, here: bool) -> None:
        """Cancel the flight in the air, from this loop (*here*) or from any thread."""
        flight, key = self.flight, self.key()
        if flight is None or key is None:
            return
        if here:
            flight.scope.cancel()
            return
        call_soon = (
            key.call_soon_threadsafe if _is_asyncio_loop(key) else key.run_sync_soon  # type: ignore[attr-defined]
        )
        # A closed loop (a finished trio run) raises RuntimeError: nothing runs there anyway.
        with contextlib.suppress(RuntimeError):
            call_soon(flight.scope.cancel)

    def dead(self) -> bool:
        """Whether its event loop is closed (a collected one leaves the mapping by itself)."""
        key = self.key()
        return key is None or (_is_asyncio_loop(key) and key.is_closed())  # type: ignore[attr-defined]


class _ThreadFlight:
    """The fetch that callers with no event loop wait for, in a thread of its own."""

    __slots__ = ("landed", "outcome")

    def __init__(self) -> None:
        self.landed = threading.Event()
        self.outcome: tuple[AccessToken | Exception, TracebackType | None]


# asyncio and trio are looked up, not imported: one that is not imported is not running
# either, and importing asyncio would cost ~10 ms to every `import payme_auth`.


def _is_asyncio_loop(key: object) -> bool:
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(key, asyncio.AbstractEventLoop)


def _current_loop() -> object | None:
    """The running event loop (asyncio's loop, or the trio run's token), or ``None``."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return loop
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token: object = trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            return token
    return None


def _spawn(flight: _Flight, fly: Callable[[], Coroutine[object, object, None]]) -> None:
    """Start *fly* as a task of the running event loop that no caller awaits."""
    loop = _current_loop()
    if _is_asyncio_loop(loop):
        flight.task = loop.create_task(fly(), name="payme_auth token fetch")  # type: ignore[attr-defined]
    else:
        import trio

        trio.lowlevel.spawn_system_task(fly, name="payme_auth token fetch")


class TokenProvider:
    """Caches one access token and fetches new ones, one flight per event loop at a time.

    :class:`~payme_auth.PaymeAuth` wraps this; use that.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        refresh_margin: float,
        advisory_ratio: float | None,
        longest_fetch: float,
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self.refresh_margin = refresh_margin
        self._advisory_ratio = advisory_ratio
        self._longest_fetch = longest_fetch
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self._entry: tuple[AccessToken, Windows] | None = None
        self._renew_after = -math.inf  # no background renewal before this
        self._guard = threading.Lock()  # for what several threads change together
        self._loops: weakref.WeakKeyDictionary[object, _Loop] = weakref.WeakKeyDictionary()
        self._thread_flight: _ThreadFlight | None = None  # for callers with no event loop
        self._closed = self._entered = False
        self._tokens_obtained = self._renewals = self._background_renewals = 0
        self._failed_fetches = self._failed_renewals = self._replays = 0
        self._last_error: tuple[str, float] | None = None
        self._last_fetch_failed = False
        _PROVIDERS.add(self)

    # -- the cache -------------------------------------------------------------------------

    def cached(self) -> AccessToken | None:
        """The token a caller may use now without waiting, or ``None``: then it must await
        :meth:`get_token`. Past the renewal point, starts a background renewal if due.

        The one way to read the cache: it never waits and never suspends.
        """
        entry = self._entry
        if entry is None:
            return None
        token, windows = entry
        now = self._clock()
        if now < windows.renew_at:
            return token
        if now >= windows.wait_at:
            return None
        if now >= self._renew_after and not self._closed:
            self._renew_in_background()
        return token

    def _valid(self) -> AccessToken | None:
        """The cached token if it has not expired, whatever its windows say."""
        entry = self._entry
        if entry is not None and self._clock() < entry[1].expires_at:
            return entry[0]
        return None

    def invalidate(self, token: AccessToken | None = None) -> bool:
        """Drop the cached token; with *token*, only if that is still the cached one.

        The refused token is also reported to the token source. Returns whether something
        was dropped.
        """
        with self._guard:
            entry = self._entry
            refused = token or (entry[0] if entry else None)
            dropped = entry is not None and (token is None or token.value == entry[0].value)
            if dropped:
                self._entry, self._renew_after = None, -math.inf
        if refused is not None:
            self._source.refused(refused)
        if dropped and refused is not None:
            logger.debug("dropped token %s", refused.fingerprint)
        return dropped

    def note_replay(self) -> None:
        """Count an API request replayed after a 401."""
        with self._guard:
            self._replays += 1

    # -- getting a token -------------------------------------------------------------------

    async def get_token(self) -> AccessToken:
        """Return a usable token: the cached one, or the outcome of this loop's flight."""
        token = self.cached()
        if token is not None:
            return token
        return await self._wait(forced=False)

    async def refresh(self) -> AccessToken:
        """Fetch a new token even if the cached one is fresh; joins a flight in the air."""
        return await self._wait(forced=True)

    async def _wait(self, *, forced: bool) -> AccessToken:
        return self._settle(*await self._outcome(forced=forced), forced=forced)

    async def _outcome(
        self, *, forced: bool, background: bool = False
    ) -> tuple[AccessToken | Exception, TracebackType | None]:
        """Wait for this loop's flight (starting one if none is in the air) and return its
        outcome, or a later one's that landed while this caller queued."""
        if self._closed:
            raise AuthClosedError("this PaymeAuth is closed")
        loop = self._loop()
        arrived = loop.generation
        flight = loop.flight or self._launch(loop, forced=forced, background=background)
        async with loop.lock:
            if loop.generation == arrived:  # nothing landed since we came: watch it land
                await flight.landed.wait()
            outcome = loop.outcome
        if outcome is None:  # pragma: no cover - a landing always sets an outcome
            raise RuntimeError("a flight landed without an outcome")
        return outcome

    def _settle(
        self, result: AccessToken | Exception, traceback: TracebackType | None, *, forced: bool
    ) -> AccessToken:
        """A flight's outcome for one caller: its token, else the still-valid cached token
        (unless the caller forced a refresh), else its error."""
        if isinstance(result, AccessToken):
            return result
        if not forced and not self.closed and (token := self._valid()) is not None:
            return token
        # Every caller raises the one error; its traceback is restored each time, so that
        # it does not grow by one caller's frames after another.
        raise result.with_traceback(traceback)

    # -- callers with no event loop --------------------------------------------------------

    def get_token_sync(self) -> AccessToken:
        """:meth:`get_token` for synchronous code: blocks this thread, never an event loop
        of its own (the fetch runs in a thread of its own, with its own event loop)."""
        token = self.cached()
        if token is not None:
            return token
        return self._wait_sync(forced=False)

    def refresh_sync(self) -> AccessToken:
        """:meth:`refresh` for synchronous code."""
        return self._wait_sync(forced=True)

    def _wait_sync(self, *, forced: bool) -> AccessToken:
        if self._closed:
            raise AuthClosedError("this PaymeAuth is closed")
        with self._guard:
            flight = self._thread_flight
            if flight is None:
                # A flight may have landed since this caller looked at the cache.
                entry = self._entry
                if not forced and entry is not None and self._clock() < entry[1].wait_at:
                    return entry[0]
                flight = self._launch_thread(forced=forced)
        flight.landed.wait()  # bounded: a flight's attempts and timeouts bound it
        result, traceback = flight.outcome
        return self._settle(result, traceback, forced=forced)

    def _launch_thread(self, *, forced: bool = False, background: bool = False) -> _ThreadFlight:
        """Start the flight of the callers with no event loop, in a thread of its own (under
        the guard). Its fetch runs as any event loop's does, so close() cancels it too."""
        flight = self._thread_flight = _ThreadFlight()

        def fly() -> None:
            outcome: tuple[AccessToken | Exception, TracebackType | None]
            import asyncio

            try:
                outcome = asyncio.run(self._outcome(forced=forced, background=background))
            except Exception as error:  # noqa: BLE001 - the flight's outcome, for its callers
                outcome = (error, error.__traceback__)
            finally:
                with self._guard:
                    if self._thread_flight is flight:
                        self._thread_flight = None
            flight.outcome = outcome
            flight.landed.set()

        threading.Thread(target=fly, name="payme_auth token fetch", daemon=True).start()
        return flight

    def _loop(self) -> _Loop:
        """This event loop's share of the provider (made on its first need)."""
        key = _current_loop()
        if key is None:
            raise RuntimeError("a token can be awaited only in an asyncio or trio event loop")
        with self._guard:
            loop = self._loops.get(key)
            if loop is None:
                for dead in [other for other, state in self._loops.items() if state.dead()]:
                    del self._loops[dead]
                loop = self._loops[key] = _Loop(key)
        return loop

    def _launch(self, loop: _Loop, *, forced: bool = False, background: bool = False) -> _Flight:
        """Start this loop's flight."""
        flight = loop.flight = _Flight()
        now = self._clock()
        self._renew_after = max(self._renew_after, now + self._longest_fetch)
        entry = self._entry
        if forced:
            logger.info("refreshing the token on request")
        elif entry is not None:
            logger.info(
                "renewing token %s%s (%.0f s of its life left)",
                entry[0].fingerprint,
                " in the background" if background else "",
                entry[0].remaining(now),
            )
        _spawn(flight, partial(self._fly, loop, flight, background=background))
        return flight

    def _renew_in_background(self) -> None:
        if _current_loop() is None:  # a synchronous caller: the renewal runs in a thread
            with self._guard:
                # Another thread's renewal may have landed since this caller looked.
                entry, now = self._entry, self._clock()
                due = entry is not None and now >= max(entry[1].renew_at, self._renew_after)
                if due and self._thread_flight is None:
                    self._launch_thread(background=True)
            return
        loop = self._loop()
        if loop.flight is None:
            self._launch(loop, background=True)

    async def _fly(self, loop: _Loop, flight: _Flight, *, background: bool) -> None:
        outcome: AccessToken | Exception | None = None
        try:
            with flight.scope:
                if not self._closed:
                    outcome = await self._fetch(background=background)
        finally:
            # Land even when the event loop cancels every task as it ends: nobody in this
            # loop may be left waiting.
            if self._closed:
                outcome = AuthClosedError("this PaymeAuth was closed while fetching a token")
            elif outcome is None:
                outcome = TokenError("the token fetch was cancelled with its event loop")
            loop.land(flight, outcome)

    async def _fetch(self, *, background: bool) -> AccessToken | Exception:
        entry = self._entry
        try:
            token = await self._source.fetch(entry[0] if entry else None)
        except Exception as error:  # noqa: BLE001 - the flight's outcome, shared by its callers
            self._note_failure(error, background=background)
            return error
        return self._accept(token, background=background)

    def _accept(self, new: AccessToken, *, background: bool) -> AccessToken:
        """Take a fetched token into the cache, unless it expires no later than the cached one."""
        now = self._clock()
        with self._guard:
            self._tokens_obtained += 1
            self._last_fetch_failed = False
            entry = self._entry
            if self._closed:
                return new  # its callers get AuthClosedError; nothing is cached
            if entry is None or new.expires_at > entry[0].expires_at:
                self._entry = (new, self._windows(new))
                self._renew_after = -math.inf
                if entry is not None:
                    self._renewals += 1
                    self._background_renewals += background
                return new
            # The same token again (a server that caches tokens), or an older one: keep
            # ours, and do not ask again at once.
            self._failed_renewals += background
            pause = self._hold(entry, now, retry_after=None)
        logger.warning(
            "the token endpoint returned no newer token than %s; keeping it, and "
            "renewing again in %.2f s",
            entry[0].fingerprint,
            pause,
        )
        return entry[0]

    def _windows(self, token: AccessToken) -> Windows:
        return Windows.of(
            token, refresh_margin=self.refresh_margin, advisory_ratio=self._advisory_ratio
        )

    def _hold(
        self, entry: tuple[AccessToken, Windows], now: float, *, retry_after: float | None
    ) -> float:
        """Serve the cached token until it expires, renewing it only after a pause."""
        token, windows = entry
        pause = renewal_pause(token.expires_in, retry_after=retry_after, draw=self._random.random())
        self._entry = (token, windows.held())
        self._renew_after = now + pause
        return pause

    def _note_failure(self, error: Exception, *, background: bool) -> None:
        now = self._clock()
        # Log the text, not the exception: a handler that keeps records would keep the
        # error's traceback, and with it the fetch's frames, alive.
        text = str(error)
        with self._guard:
            self._last_error = (text, now)
            self._last_fetch_failed = True
            entry = self._entry
            if entry is None or now >= entry[1].expires_at:
                self._failed_fetches += 1
                entry = None
            else:
                # A valid token stays in use until it expires; renewal goes on after a pause.
                self._failed_renewals += 1
                retry_after = (
                    error.retry_after if isinstance(error, TokenEndpointUnavailableError) else None
                )
                pause = self._hold(entry, now, retry_after=retry_after)
        if entry is None:
            logger.warning("could not get a token: %s", text)
            return
        refused = isinstance(error, TokenError) and not isinstance(
            error, TokenEndpointUnavailableError
        )
        (logger.error if refused else logger.warning)(
            "renewal failed: %s; token %s stays in use (%.0f s left), next try in %.2f s",
            text,
            entry[0].fingerprint,
            entry[0].remaining(now),
            pause,
        )

    # -- observing -------------------------------------------------------------------------

    def stats(self) -> AuthStats:
        """A snapshot of the provider's state and counters."""
        now = self._clock()
        entry = self._entry
        token = entry[0] if entry else None
        state: TokenState
        if self._closed:
            state = "closed"
        elif entry is None:
            state = "none"
        elif now >= entry[1].expires_at:
            state = "expired"
        elif now >= entry[1].wait_at:
            state = "due"
        elif now >= entry[1].renew_at:
            state = "renewing"
        else:
            state = "fresh"
        valid = entry is not None and now < entry[1].expires_at
        error = self._last_error
        return AuthStats(
            state=state,
            healthy=not self._closed and (valid or not self._last_fetch_failed),
            token_fingerprint=token.fingerprint if token else None,
            token_age=now - token.obtained_at if token else None,
            time_left=token.remaining(now) if token else None,
            token_requests=self._source.requests,
            tokens_obtained=self._tokens_obtained,
            renewals=self._renewals,
            background_renewals=self._background_renewals,
            failed_fetches=self._failed_fetches,
            failed_renewals=self._failed_renewals,
            replays=self._replays,
            last_error=error[0] if error else None,
            last_error_age=now - error[1] if error else None,
        )

    # -- life cycle ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def enter(self) -> None:
        """Mark the start of ``async with``: once only, and never after :meth:`close`."""
        if self._closed:
            raise AuthClosedError("this PaymeAuth is closed and cannot be entered again")
        if self._entered:
            raise RuntimeError(
                "this PaymeAuth is already entered with 'async with': enter it once, "
                "where it is made, and share that one"
            )
        self._entered = True

    def close(self) -> None:
        """Stop for good: forget the token and cancel every flight, in every event loop.

        Works from any thread, with or without a running event loop. A flight of the
        calling thread's loop is cancelled before this returns; one of another loop as soon
        as that loop runs.
        """
        self._closed = True
        self._entry = None
        here = _current_loop()
        with self._guard:
            loops = list(self._loops.items())
        for key, loop in loops:
            loop.cancel_flight(here=key is here)

    def _forget_flights(self) -> None:
        """In a child process after ``fork()``: the parent's flights are not ours to wait on."""
        self._guard = threading.Lock()
        self._loops = weakref.WeakKeyDictionary()
        self._thread_flight = None
        self._renew_after = -math.inf


_PROVIDERS: weakref.WeakSet[TokenProvider] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for provider in list(_PROVIDERS):
        provider._forget_flights()  # noqa: SLF001 - this module's own class


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)
