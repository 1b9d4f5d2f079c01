"""The token provider: the cache, its windows, and one flight at a time.

Rules:
- A fresh cached token is returned with no lock and no await checkpoint; so is a token in
  its advisory window, where the caller that notices starts one background renewal and
  goes on without waiting for it. Only inside the refresh margin, or with no token, do
  callers wait.
- At most one token fetch is in flight per provider (a *flight*). Every caller that waits
  while it is in the air gets its outcome, the token *or the error*: a failing endpoint is
  hit once per flight, not once per waiter.
- While the cached token has not expired, a failed fetch is nobody's error, inside the
  refresh margin too: the valid token stays in use (callers that waited get it), the
  failure is logged (at ERROR when the server refused, else WARNING), and renewal goes on
  in the background after a pause (a twentieth of the lifetime, jittered, kept between
  0.05 and 5 s, never sooner than ``Retry-After``) until a new token comes or the old one
  expires. Only then, or with no token at all, or for ``refresh()``, does an error reach
  callers. A renewal that brings back a token expiring no later than the cached one (the
  same token again, from a server that caches them) is handled the same way.
- Cancelling a caller never cancels a flight for the others. Background renewals, and
  inside ``async with`` every flight, run in tasks of the provider's own: in its task
  group when it has one, else as a detached task of the event loop. Without ``async with``
  a caller that must wait leads the flight itself; if it is cancelled the flight is
  abandoned, every waiter wakes, and one of them leads a new one.
- Nothing failed or abandoned is cached: with no valid token, the next caller after a
  failure starts a fetch afresh.
- With a token store, a flight (background renewals included) goes through it: it takes a
  newer token another process published, or else fetches under the store's lease and
  publishes (see ``_store``). Tokens the API refused are remembered by fingerprint, so that
  the flight drops them from the store too if they are still there, and never takes them
  back. The cached-token path never touches the store.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType

import anyio
import anyio.abc
import attrs

from ._broadcast import Broadcast
from ._errors import AuthClosedError, PaymeAuthError, TokenEndpointUnavailableError, TokenError
from ._fetcher import TokenFetcher
from ._log import logger
from ._policy import RetryPolicy, Windows, renewal_pause
from ._stats import AuthStats, TokenState
from ._store import SharedFetcher, TokenStore
from ._token import AccessToken

__all__ = ["TokenProvider"]

_NEVER = Windows(advisory_at=-math.inf, mandatory_at=-math.inf, expires_at=-math.inf)
_REJECTED_KEPT = 8


class _Flight:
    """One token fetch in the air, and the outcome everyone waiting on it shares."""

    __slots__ = ("abandoned", "background", "done", "error", "token", "traceback")

    def __init__(self, *, background: bool) -> None:
        self.background = background
        self.done = Broadcast()
        self.token: AccessToken | None = None
        self.error: Exception | None = None
        self.traceback: TracebackType | None = None
        self.abandoned = False

    def fail(self, error: Exception) -> None:
        self.error, self.traceback = error, error.__traceback__

    def outcome(self) -> AccessToken:
        if self.error is not None:
            # Every waiter raises the one error; restore its traceback each time so that
            # it does not grow by one waiter's frames after another.
            raise self.error.with_traceback(self.traceback)
        if self.token is None:  # pragma: no cover - outcome() is only called once done
            raise RuntimeError("the flight has not landed")
        return self.token


class TokenProvider:
    """Caches one access token and fetches new ones, one flight at a time.

    :class:`~payme_auth.PaymeAuth` wraps this; use that.
    """

    def __init__(
        self,
        fetcher: TokenFetcher,
        *,
        refresh_margin: float,
        advisory_ratio: float | None,
        retry: RetryPolicy,
        clock: Callable[[], float],
        store: TokenStore | None = None,
        store_key: str = "",
        attempt_timeout: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetcher = fetcher
        self._shared = (
            None
            if store is None
            else SharedFetcher(
                fetcher,
                store,
                store_key,
                attempt_timeout=attempt_timeout,
                clock=clock,
                wall_clock=wall_clock,
                fresh=self._before_margin,
            )
        )
        self._rejected: dict[str, None] = {}  # fingerprints of refused tokens, oldest first
        self.refresh_margin = refresh_margin
        self._advisory_ratio = advisory_ratio
        self._retry = retry
        self._background_retry = attrs.evolve(retry, attempts=1)
        self._clock = clock
        self._token: AccessToken | None = None
        self._windows = _NEVER
        self._renew_after = -math.inf  # no background renewal before this
        self._held = False  # a renewal failed or was fruitless: serve the token until expiry
        self._flight: _Flight | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._background: set[anyio.CancelScope] = set()
        self._detached: set[asyncio.Task[None]] = set()
        self._closed = False
        self._tokens_obtained = self._renewals = self._background_renewals = 0
        self._failed_fetches = self._failed_renewals = self._replays = 0
        self._last_error: tuple[str, float] | None = None
        self._last_fetch_failed = False

    # -- the cache -------------------------------------------------------------------------

    def current(self) -> AccessToken | None:
        """The cached token if it is before its advisory window, else ``None``. No I/O."""
        token = self._token
        if token is not None and self._clock() < self._windows.advisory_at:
            return token
        return None

    @property
    def cached(self) -> AccessToken | None:
        """The cached token, fresh or not (``None`` when there is none)."""
        return self._token

    def invalidate(self, token: AccessToken | None = None) -> bool:
        """Drop the cached token; with *token*, only if that is still the cached one.

        Returns whether something was dropped.
        """
        current = self._token
        if self._shared is not None and (refused := token or current) is not None:
            self._rejected[refused.fingerprint] = None
            while len(self._rejected) > _REJECTED_KEPT:
                del self._rejected[next(iter(self._rejected))]
        if current is None or (token is not None and token.value != current.value):
            return False
        self._token, self._windows = None, _NEVER
        self._renew_after, self._held = -math.inf, False
        logger.debug("dropped token %s", current.fingerprint)
        return True

    def note_replay(self) -> None:
        """Count an API request replayed after a 401."""
        self._replays += 1

    def _usable(self, now: float) -> AccessToken | None:
        """The token callers may have without waiting at *now*; may start a renewal."""
        token, windows = self._token, self._windows
        if token is None:
            return None
        if now < windows.advisory_at:
            return token
        if now < windows.mandatory_at or (self._held and now < windows.expires_at):
            self._renew_in_background(now)
            return token
        return None

    def _valid(self) -> AccessToken | None:
        """The cached token if it has not expired, whatever its windows say."""
        token = self._token
        if token is not None and self._clock() < token.expires_at:
            return token
        return None

    def _before_margin(self, token: AccessToken) -> bool:
        """Whether *token* (from the store) is before its refresh margin, on our windows."""
        windows = Windows.of(
            token, refresh_margin=self.refresh_margin, advisory_ratio=self._advisory_ratio
        )
        return self._clock() < windows.mandatory_at

    def _install(self, token: AccessToken) -> None:
        self._token = token
        self._windows = Windows.of(
            token, refresh_margin=self.refresh_margin, advisory_ratio=self._advisory_ratio
        )
        self._renew_after, self._held = -math.inf, False

    # -- getting a token -------------------------------------------------------------------

    async def get_token(self) -> AccessToken:
        """Return a usable token, from the cache or from a (shared) fetch."""
        return await self._shared_fetch(accept_cached=True)

    async def refresh(self) -> AccessToken:
        """Fetch a new token even if the cached one is fresh; joins a fetch already flying."""
        return await self._shared_fetch(accept_cached=False)

    async def _shared_fetch(self, *, accept_cached: bool) -> AccessToken:
        while True:
            if self._closed:
                raise AuthClosedError("this PaymeAuth is closed")
            if accept_cached and (token := self._usable(self._clock())) is not None:
                return token
            flight = self._flight
            if flight is None:
                flight = self._flight = _Flight(background=False)
                self._log_start(forced=not accept_cached)
                if self._task_group is not None:
                    self._launch(flight)
                else:
                    # No task group to run it in: this caller leads the flight itself.
                    await self._fly(flight)
                    return self._settle(flight, accept_cached=accept_cached)
            await flight.done.wait()
            if not flight.abandoned and not (flight.background and flight.error):
                return self._settle(flight, accept_cached=accept_cached)
            # The leader was cancelled, or a background renewal failed: go round, and
            # lead or join a fetch whose outcome is ours to share.

    def _settle(self, flight: _Flight, *, accept_cached: bool) -> AccessToken:
        """The flight's token; after a failure, a caller that did not force a refresh gets
        the cached token instead, for as long as it has not expired."""
        if flight.error is not None and accept_cached and (token := self._valid()) is not None:
            return token
        return flight.outcome()

    def _renew_in_background(self, now: float) -> None:
        if self._flight is not None or now < self._renew_after or self._closed:
            return
        flight = self._flight = _Flight(background=True)
        token = self._token
        if token is not None:
            logger.info(
                "renewing token %s in the background (%.0f s of its life left)",
                token.fingerprint,
                token.remaining(now),
            )
        self._launch(flight)

    def _log_start(self, *, forced: bool) -> None:
        stale = self._token
        if forced:
            logger.info("refreshing the token on request")
        elif stale is not None:
            logger.info(
                "renewing token %s (%.0f s of its life left)",
                stale.fingerprint,
                stale.remaining(self._clock()),
            )

    async def _fly(self, flight: _Flight) -> None:
        retry = self._background_retry if flight.background else self._retry
        try:
            if self._shared is None:
                token = await self._fetcher.fetch(retry)
            else:
                token = await self._shared.fetch(
                    retry, current=self._token, rejected=self._rejected.keys()
                )
        except Exception as error:  # noqa: BLE001 - shared with every waiter, raised by each of them
            if self._closed and not isinstance(error, PaymeAuthError):
                error = _closed_while_fetching()
            self._note_failure(error)
            flight.fail(error)
        except BaseException:  # cancelled: the waiters go round and one of them leads anew
            flight.abandoned = True
            raise
        else:
            if self._closed:
                flight.fail(_closed_while_fetching())
            else:
                flight.token = self._accept(token, background=flight.background)
        finally:
            if self._flight is flight:
                self._flight = None
            flight.done.set()

    def _accept(self, new: AccessToken, *, background: bool) -> AccessToken:
        """Take a fetched token into the cache, unless it expires no later than the cached one."""
        self._tokens_obtained += 1
        self._last_fetch_failed = False
        old = self._token
        if old is not None and new.expires_at <= old.expires_at:
            # The same token again (a server that caches tokens), or an older one: keep
            # ours, and do not ask again at once, even inside the margin.
            pause = self._hold(old, self._clock(), retry_after=None)
            if background:
                self._failed_renewals += 1
            logger.warning(
                "the token endpoint returned no newer token than %s; keeping it, and "
                "renewing again in %.2f s",
                old.fingerprint,
                pause,
            )
            return old
        if old is not None:
            self._renewals += 1
            if background:
                self._background_renewals += 1
        self._install(new)
        return new

    def _hold(self, token: AccessToken, now: float, *, retry_after: float | None) -> float:
        """Serve *token* until it expires, renewing only in the background after a pause."""
        pause = renewal_pause(token.expires_in, retry_after=retry_after, draw=self._fetcher.draw())
        self._renew_after, self._held = now + pause, True
        return pause

    def _note_failure(self, error: Exception) -> None:
        now = self._clock()
        # Log the text, not the exception: a handler that keeps records would keep the
        # error's traceback, and with it the fetch's frames, alive.
        text = str(error)
        self._last_error = (text, now)
        self._last_fetch_failed = True
        token = self._valid()
        if token is None:
            self._failed_fetches += 1
            logger.warning("could not get a token: %s", text)
            return
        # A valid token stays in use until it expires; renewal goes on in the background.
        self._failed_renewals += 1
        retry_after = (
            error.retry_after if isinstance(error, TokenEndpointUnavailableError) else None
        )
        pause = self._hold(token, now, retry_after=retry_after)
        refused = isinstance(error, TokenError) and not isinstance(
            error, TokenEndpointUnavailableError
        )
        log = logger.error if refused else logger.warning
        log(
            "renewal failed: %s; token %s stays in use (%.0f s left), next try in %.2f s",
            text,
            token.fingerprint,
            token.remaining(now),
            pause,
        )

    # -- observing -------------------------------------------------------------------------

    def stats(self) -> AuthStats:
        """A snapshot of the provider's state and counters."""
        now = self._clock()
        token, windows = self._token, self._windows
        state: TokenState
        if self._closed:
            state = "closed"
        elif token is None:
            state = "none"
        elif now >= windows.expires_at:
            state = "expired"
        elif now >= windows.mandatory_at:
            state = "due"
        elif now >= windows.advisory_at:
            state = "renewing"
        else:
            state = "fresh"
        error = self._last_error
        valid = token is not None and now < windows.expires_at
        return AuthStats(
            state=state,
            healthy=not self._closed and (valid or not self._last_fetch_failed),
            token_fingerprint=token.fingerprint if token else None,
            token_age=now - token.obtained_at if token else None,
            time_left=token.remaining(now) if token else None,
            token_requests=self._fetcher.requests,
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

    async def start(self) -> None:
        """Open the provider's task group, in which flights then run."""
        if self._closed:
            raise AuthClosedError("this PaymeAuth is closed and cannot be entered again")
        if self._exit_stack is not None:
            raise RuntimeError("this PaymeAuth is already entered with 'async with'")
        stack = AsyncExitStack()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        self._exit_stack = stack

    async def aclose(self) -> None:
        """Stop fetching for good, cancel a flight in the air and forget the token.

        Safe from any task: it cancels only the provider's own background work, never the
        task group's scope, which also encloses the code inside ``async with``.
        """
        self._closed = True
        self._token, self._windows = None, _NEVER
        for scope in self._background:
            scope.cancel()

    async def stop(self) -> None:
        """Close, then leave the task group opened by :meth:`start` (at ``async with`` exit)."""
        await self.aclose()
        stack, self._exit_stack, self._task_group = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    def _launch(self, flight: _Flight) -> None:
        """Run *flight* in a task of the provider's own, where no caller can cancel it."""

        async def fly() -> None:
            with anyio.CancelScope() as scope:
                self._background.add(scope)
                try:
                    if self._closed:  # closed before this task got to run
                        scope.cancel()
                    await self._fly(flight)
                finally:
                    self._background.discard(scope)

        if self._task_group is not None:
            self._task_group.start_soon(fly)
        else:
            self._detach(fly)

    def _detach(self, function: Callable[[], Coroutine[object, object, None]]) -> None:
        """Start *function* as a task nobody awaits: the caller must not wait for it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            import trio

            trio.lowlevel.spawn_system_task(function)
            return
        task = loop.create_task(function())
        self._detached.add(task)  # a strong reference, so the task is not collected
        task.add_done_callback(self._detached.discard)


def _closed_while_fetching() -> AuthClosedError:
    return AuthClosedError("this PaymeAuth was closed while fetching a token")
