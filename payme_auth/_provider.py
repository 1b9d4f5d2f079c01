"""The token provider: cache, single flight, retries. The only module that does I/O.

Rules:
- A fresh cached token is returned with no lock and no await checkpoint.
- At most one token request is in flight per provider (a *flight*). Every caller that
  needs a token while it is in the air waits for it and gets its outcome, the token *or the
  error*: a failing endpoint is hit once per flight, not once per waiter.
- Cancelling a caller never cancels the flight for the others. Inside ``async with`` the
  flight runs in the provider's own task group, so no caller's cancellation touches it.
  Without it the first caller leads the flight; if that caller is cancelled the flight is
  abandoned, every waiter wakes, and one of them leads a new one.
- Nothing failed or abandoned is cached: the next caller after a failure starts afresh.
- Owning no HTTP client, the provider opens one per flight and closes it at once (the TLS
  context is built once, off the event loop), so nothing is left open between fetches.
  A borrowed client is used as it is and never closed; every token request disables
  redirects and the client's own auth, so the secret goes nowhere but the token URL.
- Exceptions from the HTTP stack are not chained into ours: they reference the request,
  whose body holds the client secret. Their type and message are kept in ours instead.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType

import anyio
import anyio.abc
import httpx

from ._config import Environment
from ._errors import (
    AuthClosedError,
    PaymeAuthError,
    TokenEndpointUnavailableError,
    TokenError,
    TokenResponseError,
)
from ._protocol import (
    MAX_RESPONSE_BYTES,
    Failure,
    RetryPolicy,
    build_token_request,
    clean_text,
    effective_margin,
    read_token_response,
)
from ._token import AccessToken

__all__ = ["TokenProvider"]

logger = logging.getLogger("payme_auth")


class _Flight:
    """One token request in the air, and the outcome everyone waiting on it shares."""

    __slots__ = ("abandoned", "done", "error", "token", "traceback")

    def __init__(self) -> None:
        self.done = anyio.Event()
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
        *,
        client_id: str,
        client_secret: str,
        environment: Environment,
        scopes: tuple[str, ...],
        refresh_margin: float,
        timeout: httpx.Timeout,
        attempt_timeout: float,
        retry: RetryPolicy,
        http_client: httpx.AsyncClient | None,
        assumed_expires_in: int | None,
        clock: Callable[[], float],
    ) -> None:
        self.environment = environment
        self.scopes = scopes
        self.refresh_margin = refresh_margin
        self._secret = client_secret
        self._request = build_token_request(environment, client_id, client_secret, scopes)
        self._timeout = timeout
        self._deadline = attempt_timeout
        self._retry = retry
        self._http_client = http_client
        self._ssl_context: ssl.SSLContext | None = None
        self._assumed_expires_in = assumed_expires_in
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self._token: AccessToken | None = None
        self._refresh_at = -math.inf
        self._flight: _Flight | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._background: set[anyio.CancelScope] = set()
        self._closed = False
        self.fetches = 0
        """Token requests sent, retries included."""

    # -- the cache -------------------------------------------------------------------------

    def current(self) -> AccessToken | None:
        """The cached token if it is outside the refresh margin, else ``None``. No I/O."""
        token = self._token
        if token is not None and self._clock() < self._refresh_at:
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
        if current is None or (token is not None and token.value != current.value):
            return False
        self._token = None
        self._refresh_at = -math.inf
        logger.debug("dropped token %s", current.fingerprint)
        return True

    def _install(self, token: AccessToken) -> None:
        self._token = token
        self._refresh_at = token.expires_at - effective_margin(
            self.refresh_margin, token.expires_in
        )

    # -- getting a token -------------------------------------------------------------------

    async def get_token(self) -> AccessToken:
        """Return a fresh token, from the cache or from a (shared) fetch."""
        return await self._shared_fetch(accept_cached=True)

    async def refresh(self) -> AccessToken:
        """Fetch a new token even if the cached one is fresh; joins a fetch already flying."""
        return await self._shared_fetch(accept_cached=False)

    async def _shared_fetch(self, *, accept_cached: bool) -> AccessToken:
        while True:
            if self._closed:
                raise AuthClosedError("this PaymeAuth is closed")
            if accept_cached and (token := self.current()) is not None:
                return token
            flight = self._flight
            if flight is None:
                self._log_start(forced=not accept_cached)
                flight = self._flight = _Flight()
                if self._task_group is not None:
                    self._start_in_background(self._task_group, flight)
                else:
                    # No task group to run it in: this caller leads the flight itself.
                    await self._fly(flight)
                    return flight.outcome()
            await flight.done.wait()
            if not flight.abandoned:
                return flight.outcome()
            # The leader was cancelled before it landed: go round, and lead or join anew.

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
        try:
            token = await self._request_token()
        except Exception as error:  # noqa: BLE001 - shared with every waiter, raised by each of them
            if self._closed and not isinstance(error, PaymeAuthError):
                error = _closed_while_fetching()
            flight.fail(error)
        except BaseException:  # cancelled: the waiters go round and one of them leads anew
            flight.abandoned = True
            raise
        else:
            if self._closed:
                flight.fail(_closed_while_fetching())
            else:
                self._install(token)
                flight.token = token
        finally:
            if self._flight is flight:
                self._flight = None
            flight.done.set()

    async def _request_token(self) -> AccessToken:
        retry = self._retry
        async with self._client() as client:
            attempt = 0
            while True:
                attempt += 1
                self.fetches += 1
                logger.debug(
                    "requesting a token from %s (attempt %d of %d)",
                    self._request.url,
                    attempt,
                    retry.attempts,
                )
                outcome = await self._attempt(client)
                if isinstance(outcome, AccessToken):
                    logger.info(
                        "obtained token %s for %s (expires in %d s, scope: %s)",
                        outcome.fingerprint,
                        self.environment.name,
                        outcome.expires_in,
                        " ".join(sorted(outcome.scope)),
                    )
                    return outcome
                if not outcome.retryable:
                    logger.warning("token request refused: %s", outcome.error)
                    raise outcome.error
                delay = retry.delay(
                    attempt, retry_after=outcome.retry_after, draw=self._random.random()
                )
                if delay is None:
                    error = self._unavailable(outcome, attempt)
                    logger.warning("%s", error)
                    raise error
                logger.warning(
                    "token request attempt %d of %d failed (%s); retrying in %.2f s",
                    attempt,
                    retry.attempts,
                    outcome.error,
                    delay,
                )
                await anyio.sleep(delay)

    @staticmethod
    def _unavailable(outcome: Failure, attempts: int) -> TokenEndpointUnavailableError:
        last = outcome.error
        return TokenEndpointUnavailableError(
            f"the token endpoint was unavailable after {attempts} "
            f"attempt{'s' if attempts > 1 else ''}: {last.args[0] if last.args else last}",
            attempts=attempts,
            retry_after=outcome.retry_after,
            status_code=last.status_code,
            code=last.code,
            error=last.error,
            detail=last.detail,
        )

    async def _attempt(self, client: httpx.AsyncClient) -> AccessToken | Failure:
        request = self._request
        sent_at = self._clock()
        problem: str | None = None
        with anyio.move_on_after(self._deadline) as scope:
            try:
                async with client.stream(
                    "POST",
                    request.url,
                    headers=request.headers,
                    content=request.content,
                    timeout=self._timeout,
                    follow_redirects=False,
                    auth=None,
                ) as response:
                    body, truncated = await _read_capped(response)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except httpx.HTTPError as exc:  # undecodable content and the like: not transient
                detail = clean_text(str(exc), (self._secret,))
                return Failure(
                    error=TokenResponseError(
                        f"the token answer could not be read ({type(exc).__name__})",
                        detail=detail,
                    )
                )
        if scope.cancelled_caught:
            problem = f"no complete answer within {self._deadline:g} s"
        if problem is not None:
            return Failure(
                error=TokenError(
                    f"could not reach the token endpoint: {clean_text(problem, (self._secret,))}"
                ),
                retryable=True,
            )
        return read_token_response(
            response.status_code,
            response.headers,
            body,
            truncated=truncated,
            requested_scopes=self.scopes,
            obtained_at=sent_at,
            now=time.time(),
            assumed_expires_in=self._assumed_expires_in,
            secrets=(self._secret,),
        )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http_client is not None:
            yield self._http_client
            return
        if self._ssl_context is None:
            # Loading the CA bundle takes tens of milliseconds: not on the event loop.
            self._ssl_context = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        async with httpx.AsyncClient(verify=self._ssl_context, timeout=self._timeout) as client:
            yield client

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
        self._token = None
        self._refresh_at = -math.inf
        for scope in self._background:
            scope.cancel()

    async def stop(self) -> None:
        """Close, then leave the task group opened by :meth:`start` (at ``async with`` exit)."""
        await self.aclose()
        stack, self._exit_stack, self._task_group = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    def _start_in_background(self, task_group: anyio.abc.TaskGroup, flight: _Flight) -> None:
        async def fly() -> None:
            with anyio.CancelScope() as scope:
                self._background.add(scope)
                try:
                    if self._closed:  # closed before this task got to run
                        scope.cancel()
                    await self._fly(flight)
                finally:
                    self._background.discard(scope)

        task_group.start_soon(fly)


def _closed_while_fetching() -> AuthClosedError:
    return AuthClosedError("this PaymeAuth was closed while fetching a token")


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """Read at most MAX_RESPONSE_BYTES of the body; say whether there was more."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        return b"", True
    # Past the limit, go on reading but keep nothing: stopping httpx's iterators half-way
    # leaves one of them to the garbage collector. The attempt's deadline bounds the time.
    body = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        if not truncated:
            body += chunk
            truncated = len(body) > MAX_RESPONSE_BYTES
    return bytes(body[:MAX_RESPONSE_BYTES]), truncated
