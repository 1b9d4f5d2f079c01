"""Sharing one token between processes: the store interface, and a store in memory.

Rules:
- A store keeps, under a *key*, at most one token and one fetch lease. The key is derived
  with scrypt from the client secret, salted with a hash of the token URL, the audience,
  the client id and the scopes (see :func:`store_key`): a wrong or rotated secret never
  reads another secret's token, and the key reveals neither the secret nor the client id.
- What is stored carries wall-clock times (seconds since the epoch): monotonic clocks differ
  between processes and hosts. A reader converts them to its own monotonic clock and, since
  the writer's wall clock may run ahead of its own, assumes the token expires
  ``clock_skew`` seconds earlier than it says (at most a twentieth of its lifetime earlier:
  a short token would otherwise lose much of its life).
- A lease is a short-lived lock with an owner: only its owner releases it, and it lapses
  by itself after its time to live, so a process that dies holding it blocks nobody for
  long.
- A token is dropped only if it is still the stored one: the caller names it by
  fingerprint, and a newer token published meanwhile stays.
- A store method may raise any :class:`Exception` when the store cannot answer; the
  provider then fetches on its own. A :class:`~payme_auth.ConfigurationError` is the
  exception: it means the store cannot work here at all, and it reaches the caller.
- A fetch through the store (:class:`SharedFetcher`) first takes a newer token that another
  process published; failing that it takes the lease, looks once more, fetches and
  publishes; failing that it waits for the lease holder's token, polling with a backoff
  (10 ms doubling up to 250 ms, jittered) for at most twice the lease's time to live. Each
  store call is bounded (2 s here, and by the store's own timeout). When the store fails or
  the wait runs out, it fetches on its own: the store can make fetches rarer, never fail
  them. That is logged at WARNING once a minute at most, at DEBUG otherwise.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from ._errors import ConfigurationError
from ._fetcher import TokenFetcher
from ._log import logger
from ._policy import RetryPolicy, effective_margin
from ._token import AccessToken, fingerprint

__all__ = [
    "CLOCK_SKEW",
    "MemoryTokenStore",
    "SharedFetcher",
    "SharedToken",
    "TokenStore",
    "lease_ttl",
    "store_key",
]

CLOCK_SKEW = 5.0
"""Seconds by which another host's wall clock is assumed to be ahead, at most."""

_CALL_LIMIT = 2.0
_FIRST_POLL = 0.01
_MAX_POLL = 0.25
_WARN_EVERY = 60.0
_REJECTED_KEPT = 8

_T = TypeVar("_T")


def _scopes(scopes: Iterable[str]) -> frozenset[str]:
    return frozenset(scopes)


def store_key(
    *,
    token_url: str,
    audience: str,
    client_id: str,
    scopes: Iterable[str],
    client_secret: str,
) -> str:
    """The store key of one kind of token: 32 hex digits derived from all that sets it apart.

    Two providers with the same token URL, audience, client id, scopes (in any order) and
    client secret share a token; any difference keeps them apart, so a process with a wrong
    or rotated secret never takes a token fetched with another one.

    The key is scrypt (N=2**14, r=8, p=1) of the secret, salted with a SHA-256 of the rest.
    Whoever reads the store learns neither the secret nor the client id, and testing one
    guessed secret against a key costs a scrypt run (16 MiB, tens of milliseconds) on top of
    knowing the token URL, audience, client id and scopes. It costs the same here: call it
    once, when the provider is built.
    """
    parts = ["payme_auth store key 2", token_url, audience, client_id, *sorted(set(scopes))]
    salt = hashlib.sha256("\n".join(parts).encode()).digest()
    key = hashlib.scrypt(
        client_secret.encode(), salt=salt, n=2**14, r=8, p=1, maxmem=64 * 2**20, dklen=16
    )
    return key.hex()


@attrs.frozen(kw_only=True, repr=False)
class SharedToken:
    """A token as a store keeps it: with wall-clock times, meaningful to every process.

    Attributes:
        value: the token itself (secret: never logged, never in ``repr``).
        token_type: ``"Bearer"``.
        scope: the scopes granted.
        issued_at: when the request for it was sent, in seconds since the epoch.
        expires_at: when it expires, in seconds since the epoch.
    """

    value: str
    token_type: str = "Bearer"
    scope: frozenset[str] = attrs.field(converter=_scopes)
    issued_at: float
    expires_at: float

    @property
    def fingerprint(self) -> str:
        """A short one-way hash of :attr:`value`, the same as the AccessToken's."""
        return fingerprint(self.value)

    @classmethod
    def of(cls, token: AccessToken, *, wall_now: float, now: float) -> SharedToken:
        """Share *token*, whose times are readings *now* of a monotonic clock that reads
        *wall_now* on the wall clock at the same moment."""
        issued_at = wall_now - (now - token.obtained_at)
        return cls(
            value=token.value,
            token_type=token.token_type,
            scope=token.scope,
            issued_at=issued_at,
            expires_at=issued_at + token.expires_in,
        )

    def local(self, *, wall_now: float, now: float, clock_skew: float) -> AccessToken | None:
        """This token on the reader's monotonic clock (reading *now* when the wall clock
        reads *wall_now*), expiring up to *clock_skew* seconds early; ``None`` if it has
        expired or is not a sensible token."""
        lifetime = round(self.expires_at - self.issued_at)
        if lifetime < 1 or not self.value:
            return None
        skew = min(clock_skew, lifetime / 20)
        # A writer whose clock runs ahead would make the token look issued in the future.
        issued_at = min(self.issued_at, wall_now)
        obtained_at = now - (wall_now - issued_at) - skew
        token = AccessToken(
            value=self.value,
            token_type=self.token_type,
            scope=self.scope,
            expires_in=lifetime,
            obtained_at=obtained_at,
        )
        return None if token.is_expired(now) else token

    def __repr__(self) -> str:
        return (
            f"SharedToken(fingerprint={self.fingerprint!r}, issued_at={self.issued_at:.3f}, "
            f"expires_at={self.expires_at:.3f})"
        )

    __str__ = __repr__


@runtime_checkable
class TokenStore(Protocol):
    """Where the processes of a fleet share one token and take turns fetching it.

    Pass one to ``PaymeAuth(store=...)``. :class:`payme_auth.redis.RedisTokenStore` is the
    one for a real fleet; :class:`MemoryTokenStore` shares a token within one process. Every
    method should answer promptly (bound its own I/O); it may raise any exception when the
    store cannot answer, and the provider then fetches on its own.
    """

    async def get(self, key: str) -> SharedToken | None:
        """The token stored under *key*, or ``None``."""

    async def publish(self, key: str, token: SharedToken) -> None:
        """Store *token* under *key*, replacing any other, until it expires."""

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take the fetch lease of *key* for *owner* for *ttl* seconds, if nobody holds it.

        Returns whether *owner* now holds it.
        """

    async def release(self, key: str, owner: str) -> None:
        """Give the lease of *key* back, if *owner* still holds it."""

    async def discard(self, key: str, fingerprint: str) -> bool:
        """Drop the token of *key* if its fingerprint is *fingerprint*; say whether it was."""


@attrs.define(eq=False)
class MemoryTokenStore:
    """A :class:`TokenStore` in this process's memory.

    It shares one token between several :class:`~payme_auth.PaymeAuth` in one process
    (one per event loop or thread, say), and shows what a store must do. Works on asyncio
    and trio; not shared between threads running different event loops at the same time.

    Args:
        clock: the wall clock, in seconds since the epoch (for tests). Default:
            :func:`time.time`.
    """

    clock: Callable[[], float] = time.time
    _tokens: dict[str, SharedToken] = attrs.field(init=False, factory=dict, repr=False)
    _leases: dict[str, tuple[str, float]] = attrs.field(init=False, factory=dict, repr=False)

    async def get(self, key: str) -> SharedToken | None:
        """The token stored under *key*, or ``None`` (also once it has expired)."""
        await anyio.lowlevel.checkpoint()
        token = self._tokens.get(key)
        if token is not None and token.expires_at <= self.clock():
            del self._tokens[key]
            return None
        return token

    async def publish(self, key: str, token: SharedToken) -> None:
        """Store *token* under *key*."""
        await anyio.lowlevel.checkpoint()
        self._tokens[key] = token

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease of *key* for *owner* unless someone holds an unexpired one."""
        await anyio.lowlevel.checkpoint()
        now = self.clock()
        held = self._leases.get(key)
        if held is not None and held[1] > now:
            return False
        self._leases[key] = (owner, now + ttl)
        return True

    async def release(self, key: str, owner: str) -> None:
        """Give the lease of *key* back if *owner* holds it."""
        await anyio.lowlevel.checkpoint()
        held = self._leases.get(key)
        if held is not None and held[0] == owner:
            del self._leases[key]

    async def discard(self, key: str, fingerprint: str) -> bool:
        """Drop the token of *key* if it is the one with *fingerprint*."""
        await anyio.lowlevel.checkpoint()
        token = self._tokens.get(key)
        if token is None or token.fingerprint != fingerprint:
            return False
        del self._tokens[key]
        return True


def lease_ttl(retry: RetryPolicy, attempt_timeout: float) -> float:
    """How long a fetch lease lasts: a little over the longest a fetch takes.

    That is every attempt running to its timeout, plus the backoff between attempts
    (without ``Retry-After``, which a holder that takes longer may outlive: the next
    process then fetches, which costs one extra request, not an outage).
    """
    return retry.longest_fetch(attempt_timeout) * 1.1 + 0.5


class _Unavailable(Exception):  # noqa: N818 - private, never raised to users
    """The store could not help; fetch locally."""


def _owner() -> str:
    # Who holds a lease, for a person looking at the store; the random part makes it unique.
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


class SharedFetcher:
    """Gets a token through a :class:`TokenStore`, fetching only when no process has one.

    A token source for the provider, wrapping the :class:`TokenFetcher` it fetches with.
    The provider asks it once per flight, so one process makes at most one round of store
    calls at a time, however many tasks wait. It keeps the fingerprints of the last tokens
    the API refused: those are dropped from the store, and never taken from it.
    """

    def __init__(
        self,
        fetcher: TokenFetcher,
        store: TokenStore,
        key: str,
        *,
        attempt_timeout: float,
        refresh_margin: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._fetcher = fetcher
        self._store = store
        self._key = key
        self._lease_ttl = lease_ttl(fetcher.retry, attempt_timeout)
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._wall_clock = wall_clock
        self._rejected: dict[str, None] = {}  # fingerprints of refused tokens, oldest first
        self._warned_at = -math.inf
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography

    @property
    def requests(self) -> int:
        """Token requests this process sent, retries included."""
        return self._fetcher.requests

    def refused(self, token: AccessToken) -> None:
        """Remember that the API refused *token* (the last few are kept)."""
        self._rejected[token.fingerprint] = None
        while len(self._rejected) > _REJECTED_KEPT:
            del self._rejected[next(iter(self._rejected))]

    async def fetch(self, current: AccessToken | None) -> AccessToken:
        """A token newer than *current*: another process's, or one fetched and published."""
        try:
            return await self._through_store(current)
        except _Unavailable as problem:
            self._warn(f"{problem}; fetching a token without it")
        return await self._fetcher.fetch()

    async def _through_store(self, current: AccessToken | None) -> AccessToken:
        store, key, ttl = self._store, self._key, self._lease_ttl
        owner = _owner()
        give_up = time.monotonic() + 2 * ttl
        pause = _FIRST_POLL
        while True:
            token = await self._adopt(current)
            if token is not None:
                return token
            if await self._call("acquire", store.acquire, key, owner, ttl):
                break
            if time.monotonic() >= give_up:
                raise _Unavailable(
                    f"no token came within {2 * ttl:.1f} s while another process held "
                    "the fetch lease"
                )
            await anyio.sleep(pause * (0.5 + self._random.random() / 2))
            pause = min(2 * pause, _MAX_POLL)
        try:
            # A holder may have published and released between our look and our lease.
            token = await self._adopt(current)
            if token is not None:
                return token
            token = await self._fetcher.fetch()
            if current is not None and (
                token.value == current.value or token.expires_at <= current.expires_at
            ):
                return token  # no newer token (the provider keeps its own): nothing to share
            shared = SharedToken.of(token, wall_now=self._wall_clock(), now=self._clock())
            try:
                await self._call("publish", store.publish, key, shared)
            except _Unavailable as problem:
                self._warn(f"{problem}; token {token.fingerprint} is used but not shared")
            else:
                logger.debug("published token %s to the token store", token.fingerprint)
            return token
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._call("release", store.release, key, owner)
                except Exception:  # noqa: BLE001 - the lease lapses by itself
                    logger.debug("could not release the fetch lease; it lapses in %.1f s", ttl)

    async def _adopt(self, current: AccessToken | None) -> AccessToken | None:
        shared = await self._call("get", self._store.get, self._key)
        if shared is None:
            return None
        mark = shared.fingerprint
        if mark in self._rejected:
            if await self._call("discard", self._store.discard, self._key, mark):
                logger.info("dropped the rejected token %s from the token store", mark)
            return None
        if current is not None and mark == current.fingerprint:
            return None
        now = self._clock()
        token = shared.local(wall_now=self._wall_clock(), now=now, clock_skew=CLOCK_SKEW)
        # One inside its refresh margin is due for renewal already: not worth taking.
        if token is None or token.remaining(now) <= effective_margin(
            self._refresh_margin, token.expires_in
        ):
            return None
        if current is not None and token.expires_at <= current.expires_at:
            return None
        logger.info(
            "took token %s from the token store (%.0f s of its life left)",
            mark,
            token.remaining(now),
        )
        return token

    async def _call(
        self, operation: str, method: Callable[..., Awaitable[_T]], *args: object
    ) -> _T:
        try:
            with anyio.fail_after(_CALL_LIMIT):
                return await method(*args)
        except ConfigurationError:
            raise
        except Exception as error:  # noqa: BLE001 - any store failure means: go without it
            text = str(error) or "no answer"
            raise _Unavailable(
                f"the token store failed ({operation}: {type(error).__name__}: {text})"
            ) from None

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            logger.warning("%s (said once a minute at most)", message)
        else:
            logger.debug("%s", message)
