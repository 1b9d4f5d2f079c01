"""Sharing a token through a TokenStore: several providers on one in-memory store stand for
the processes of a fleet (asyncio and trio)."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from payme_auth import (
    AccessToken,
    ConfigurationError,
    Environment,
    InvalidCredentialsError,
    PaymeAuth,
    RetryPolicy,
)
from payme_auth import _store as store_module
from payme_auth._store import MemoryTokenStore, SharedToken, TokenStore, lease_ttl, store_key
from payme_auth.testing import PaymeTokenMock

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAST_RETRY,
    TOKEN_MARK,
    FakeClock,
    eventually,
    new_token_value,
)

pytestmark = pytest.mark.anyio

SKEW = store_module.CLOCK_SKEW


def make_auth(clock: FakeClock, store: TokenStore, **kwargs: Any) -> PaymeAuth:
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("client_secret", CLIENT_SECRET)
    return PaymeAuth(CLIENT_ID, clock=clock, store=store, **kwargs)


def key_of(auth: PaymeAuth) -> str:
    environment = Environment.PREPROD
    return store_key(
        token_url=environment.token_url,
        audience=environment.audience,
        client_id=CLIENT_ID,
        scopes=auth.scopes,
        client_secret=CLIENT_SECRET,
    )


class CountingStore(MemoryTokenStore):
    """A MemoryTokenStore that counts the calls made to it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.calls = 0

    async def get(self, key: str) -> SharedToken | None:
        self.calls += 1
        return await super().get(key)

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        self.calls += 1
        return await super().acquire(key, owner, ttl)


# -- sharing -------------------------------------------------------------------------------


async def test_a_second_process_takes_the_stored_token(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """The second provider gets the first one's token from the store: one request in all.
    It assumes the token expires CLOCK_SKEW seconds earlier (another host's clock)."""
    store = MemoryTokenStore(clock)
    first = await make_auth(clock, store).get_token()
    second = await make_auth(clock, store).get_token()
    assert token_mock.call_count == 1
    assert second.value == first.value
    assert second.expires_at == pytest.approx(first.expires_at - SKEW)
    assert second.expires_in == first.expires_in


async def test_many_providers_and_callers_share_one_request(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """5 providers with 40 callers each, all at once: one token request, one token."""
    store = MemoryTokenStore(clock)
    auths = [make_auth(clock, store) for _ in range(5)]
    tokens: list[AccessToken] = []

    async def one(auth: PaymeAuth) -> None:
        tokens.append(await auth.get_token())

    token_mock.hold()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for auth in auths:
                for _ in range(40):
                    group.start_soon(one, auth)
            await eventually(lambda: token_mock.arrived == 1)
            await anyio.sleep(0.05)  # every provider is waiting on the lease by now
            token_mock.release()
    assert token_mock.call_count == 1
    assert len(tokens) == 200
    assert len({token.value for token in tokens}) == 1


async def test_a_cached_token_never_asks_the_store(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """The hot path stays local: once a token is cached, getting it makes no store call."""
    store = CountingStore(clock)
    auth = make_auth(clock, store)
    await auth.get_token()
    calls = store.calls
    for _ in range(100):
        await auth.get_token()
    assert store.calls == calls
    assert token_mock.call_count == 1


async def test_background_renewal_takes_a_newer_stored_token(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """In the advisory window a provider first looks in the store: another provider's
    renewal already put a newer token there, so it takes that one without a request."""
    store = MemoryTokenStore(clock)
    one, two = make_auth(clock, store), make_auth(clock, store)
    first = await one.get_token()
    assert (await two.get_token()).value == first.value
    clock.advance(first.expires_in * 0.7)  # past 2/3 of its usable life
    assert (await one.get_token()).value == first.value  # served, renewal in the background
    await eventually(lambda: one.stats().state == "fresh")
    renewed = one.stats().token_fingerprint
    assert token_mock.call_count == 2
    assert (await two.get_token()).value == first.value
    await eventually(lambda: two.stats().token_fingerprint == renewed)
    assert token_mock.call_count == 2
    assert two.stats().background_renewals == 1


async def test_a_stored_token_inside_its_margin_is_not_taken(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A stored token already due for renewal is ignored: a new one is fetched and stored."""
    store = MemoryTokenStore(clock)
    auth = make_auth(clock, store, refresh_margin=60)
    now = clock()
    old = SharedToken(
        value=f"{TOKEN_MARK}old", scope=auth.scopes, issued_at=now - 8000, expires_at=now + 60
    )
    await store.publish(key_of(auth), old)
    token = await auth.get_token()
    assert token.value != old.value
    assert token_mock.call_count == 1
    stored = await store.get(key_of(auth))
    assert stored is not None
    assert stored.value == token.value


async def test_forced_refresh_replaces_the_stored_token(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """refresh() does not settle for the token it already has, even if the store has it."""
    store = MemoryTokenStore(clock)
    auth = make_auth(clock, store)
    first = await auth.get_token()
    clock.advance(1)
    second = await auth.refresh()
    assert second.value != first.value
    assert token_mock.call_count == 2
    stored = await store.get(key_of(auth))
    assert stored is not None
    assert stored.value == second.value


async def test_the_same_token_again_is_not_published(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A server that answers with the token it gave before does not make it look newer in
    the store: the stored issue time stays the first one."""
    store = MemoryTokenStore(clock)
    auth = make_auth(clock, store)
    token_mock.issue(token=new_token_value(), times=2)
    first = await auth.get_token()
    before = await store.get(key_of(auth))
    clock.advance(100)
    assert (await auth.refresh()).value == first.value
    assert token_mock.call_count == 2
    assert await store.get(key_of(auth)) == before


# -- refused tokens ------------------------------------------------------------------------


async def test_a_refused_token_is_dropped_from_the_store_and_replaced_once(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """Both providers see the API refuse the shared token: the first drops it from the
    store and fetches; the second takes the new one. Two requests in all."""
    store = MemoryTokenStore(clock)
    one, two = make_auth(clock, store), make_auth(clock, store)
    first = await one.get_token()
    refused = await two.get_token()
    assert one.invalidate(first)
    second = await one.get_token()
    assert second.value != first.value
    assert two.invalidate(refused)
    assert (await two.get_token()).value == second.value
    assert token_mock.call_count == 2


async def test_a_stale_refusal_keeps_a_newer_stored_token(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A provider refused with an old token takes the newer stored one and leaves it."""
    store = MemoryTokenStore(clock)
    one, two = make_auth(clock, store), make_auth(clock, store)
    old = await two.get_token()
    assert (await one.get_token()).value == old.value
    clock.advance(1)
    newer = await one.refresh()
    two.invalidate(old)
    assert (await two.get_token()).value == newer.value
    stored = await store.get(key_of(one))
    assert stored is not None
    assert stored.value == newer.value
    assert token_mock.call_count == 2


async def test_a_refused_token_is_never_taken_back(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """After a refusal the provider fetches even if the refused token is back in the store."""
    store = MemoryTokenStore(clock)
    auth = make_auth(clock, store)
    first = await auth.get_token()
    auth.invalidate()
    second = await auth.get_token()
    assert second.value != first.value
    await store.publish(key_of(auth), SharedToken.of(first, wall_now=clock(), now=clock()))
    auth.invalidate(second)
    third = await auth.get_token()
    assert third.value not in (first.value, second.value)
    assert token_mock.call_count == 3


# -- leases --------------------------------------------------------------------------------


async def test_a_crashed_lease_holder_blocks_only_until_its_lease_lapses(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A lease whose holder died is waited on until it lapses; then this provider fetches."""
    store = MemoryTokenStore(clock)
    auth = make_auth(clock, store)
    assert await store.acquire(key_of(auth), "dead-process", 10)
    got: list[AccessToken] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:

            async def get() -> None:
                got.append(await auth.get_token())

            group.start_soon(get)
            await anyio.sleep(0.1)
            assert token_mock.call_count == 0  # waiting for the holder
            clock.advance(10)
    assert token_mock.call_count == 1
    assert len(got) == 1


class HeldStore(MemoryTokenStore):
    """A store whose lease is always someone else's, and who never publishes."""

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        return False


async def test_waiting_for_another_holder_is_bounded(
    clock: FakeClock, token_mock: PaymeTokenMock, caplog: pytest.LogCaptureFixture
) -> None:
    """With the lease never free and no token coming, the wait ends after twice the lease's
    time to live and the provider fetches on its own, saying so."""
    auth = make_auth(clock, HeldStore(clock), timeout=0.1, retry=RetryPolicy(attempts=1))
    ttl = lease_ttl(RetryPolicy(attempts=1), 0.1)
    began = time.monotonic()
    with anyio.fail_after(5):
        await auth.get_token()
    assert 2 * ttl <= time.monotonic() - began < 2 * ttl + 1.5
    assert token_mock.call_count == 1
    assert any("no token came within" in r.getMessage() for r in caplog.records)


async def test_a_fetch_stopped_by_aclose_releases_the_lease(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A fetch cancelled while it holds the lease (by aclose) gives the lease back."""
    store = MemoryTokenStore(clock)
    auth = make_auth(clock, store)
    token_mock.hold()
    with anyio.move_on_after(0.2):
        await auth.get_token()
    assert token_mock.arrived == 1
    assert not await store.acquire(key_of(auth), "next", 1)  # the flight still holds it
    await auth.aclose()
    await eventually(lambda: store._leases.get(key_of(auth)) is None)
    assert await store.acquire(key_of(auth), "next", 1)
    token_mock.release()


@pytest.mark.parametrize(
    "policy",
    [RetryPolicy(), RetryPolicy(attempts=1), RetryPolicy(attempts=5, backoff=1, max_backoff=2)],
)
def test_lease_ttl_outlasts_the_slowest_fetch(policy: RetryPolicy) -> None:
    """The lease outlives a fetch whose every attempt times out and whose every backoff is
    the longest the policy can draw."""
    attempt_timeout = 2.0
    slowest = policy.attempts * attempt_timeout + sum(
        policy.delay(attempt, retry_after=None, draw=math.nextafter(1.0, 0.0)) or 0.0
        for attempt in range(1, policy.attempts)
    )
    assert policy.longest_fetch(attempt_timeout) >= slowest
    assert lease_ttl(policy, attempt_timeout) > slowest


# -- a store that fails --------------------------------------------------------------------


class BrokenStore(MemoryTokenStore):
    """A store that cannot be reached."""

    async def get(self, key: str) -> SharedToken | None:
        raise ConnectionError("connection refused")


class HangingStore(MemoryTokenStore):
    """A store that never answers."""

    async def get(self, key: str) -> SharedToken | None:
        await anyio.sleep_forever()
        raise AssertionError


async def test_a_broken_store_means_local_fetches_and_one_warning(
    clock: FakeClock, token_mock: PaymeTokenMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every fetch still happens, locally; the fallback is a WARNING once, DEBUG after."""
    auth = make_auth(clock, BrokenStore(clock))
    for _ in range(3):
        await auth.refresh()
    assert token_mock.call_count == 3
    records = [r for r in caplog.records if "token store failed" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "get: ConnectionError: connection refused" in records[0].getMessage()


async def test_a_hanging_store_is_bounded(
    clock: FakeClock, token_mock: PaymeTokenMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store call that never returns is abandoned after the call limit."""
    monkeypatch.setattr(store_module, "_CALL_LIMIT", 0.1)
    auth = make_auth(clock, HangingStore(clock))
    with anyio.fail_after(2):
        await auth.get_token()
    assert token_mock.call_count == 1


class MisplacedStore(MemoryTokenStore):
    """A store that cannot work here at all."""

    async def get(self, key: str) -> SharedToken | None:
        raise ConfigurationError("this store cannot run here")


async def test_a_configuration_error_reaches_the_caller(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A ConfigurationError from the store is not a reason to go without it: it is raised."""
    auth = make_auth(clock, MisplacedStore(clock))
    with pytest.raises(ConfigurationError, match="cannot run here"):
        await auth.get_token()
    assert token_mock.call_count == 0


def test_store_must_be_a_token_store() -> None:
    """Anything without the five methods is refused up front."""
    with pytest.raises(ConfigurationError, match="store must be a TokenStore"):
        PaymeAuth(CLIENT_ID, CLIENT_SECRET, store=object())  # type: ignore[arg-type]


# -- the stored value ----------------------------------------------------------------------


def shared_token(**kwargs: Any) -> SharedToken:
    values: dict[str, Any] = {
        "value": f"{TOKEN_MARK}x",
        "scope": ["create:token"],
        "issued_at": 1_000_000.0,
        "expires_at": 1_000_100.0,
    }
    return SharedToken(**{**values, **kwargs})


def test_conversion_to_the_local_clock() -> None:
    """Wall-clock times become readings of the reader's monotonic clock, CLOCK_SKEW early
    (at most a twentieth of the lifetime early)."""
    token = shared_token().local(wall_now=1_000_040.0, now=50.0, clock_skew=5.0)
    assert token is not None
    assert token.expires_in == 100
    assert token.obtained_at == pytest.approx(50.0 - 40.0 - 5.0)
    assert token.expires_at == pytest.approx(105.0)
    short = shared_token(expires_at=1_000_008.0).local(
        wall_now=1_000_000.0, now=0.0, clock_skew=5.0
    )
    assert short is not None
    assert short.expires_at == pytest.approx(7.6)


def test_conversion_refuses_what_cannot_be_used() -> None:
    """An expired token, a lifetime under a second, and an empty value are not taken; a
    token issued in the reader's future counts as issued now."""
    token = shared_token()
    assert token.local(wall_now=1_000_096.0, now=0.0, clock_skew=5.0) is None
    assert (
        shared_token(expires_at=1_000_000.4).local(wall_now=1_000_000.0, now=0.0, clock_skew=0.0)
        is None
    )
    assert shared_token(value="").local(wall_now=1_000_000.0, now=0.0, clock_skew=0.0) is None
    ahead = token.local(wall_now=999_990.0, now=0.0, clock_skew=0.0)
    assert ahead is not None
    assert ahead.expires_at == pytest.approx(100.0)


def test_round_trip_through_the_wall_clock() -> None:
    """Shared then read back on the same clocks, a token keeps its times (minus the skew)."""
    original = AccessToken(value=f"{TOKEN_MARK}y", scope=["a"], expires_in=300, obtained_at=20.0)
    shared = SharedToken.of(original, wall_now=5_000.0, now=30.0)
    assert (shared.issued_at, shared.expires_at) == (4_990.0, 5_290.0)
    back = shared.local(wall_now=5_000.0, now=30.0, clock_skew=1.0)
    assert back is not None
    assert back.expires_at == pytest.approx(original.expires_at - 1.0)
    assert back.fingerprint == original.fingerprint == shared.fingerprint


def test_no_token_value_in_repr() -> None:
    """repr and str show the fingerprint, never the value."""
    token = shared_token()
    assert TOKEN_MARK not in repr(token)
    assert TOKEN_MARK not in str(token)
    assert token.fingerprint in repr(token)


def test_store_keys_tell_apart_what_differs() -> None:
    """The key depends on token URL, audience, client id, scopes (not their order) and secret."""

    def key(
        token_url: str = "t",  # noqa: S107 - not a password
        audience: str = "a",
        client_id: str = "c",
        scopes: str = "x y",
        secret: str = "s",  # noqa: S107 - not a password
    ) -> str:
        return store_key(
            token_url=token_url,
            audience=audience,
            client_id=client_id,
            scopes=scopes.split(),
            client_secret=secret,
        )

    assert key(scopes="y x") == key()
    variants = [
        key(),
        key(token_url="u"),
        key(audience="b"),
        key(client_id="d"),
        key(scopes="x"),
        key(secret="S"),
        key(secret="s "),
    ]
    assert len(set(variants)) == len(variants)
    assert all(re.fullmatch(r"[0-9a-f]{32}", variant) for variant in variants)


def test_store_key_shows_nothing_and_costs_a_scrypt_run() -> None:
    """The key shows neither the secret nor the client id, and is not a plain hash of them.

    A plain SHA-256 of the parts (the old scheme, or with the secret added) would let
    whoever reads the store test guessed secrets at billions a second.
    """
    parts = ["t", "a", "client-id", "x"]
    key = store_key(
        token_url="t",
        audience="a",
        client_id="client-id",
        scopes=["x"],
        client_secret=CLIENT_SECRET,
    )
    assert CLIENT_SECRET not in key
    assert "client-id" not in key
    plain = [
        hashlib.sha256("\n".join([*parts, CLIENT_SECRET]).encode()).hexdigest()[:32],
        hashlib.sha256("\n".join([*parts, "x"]).encode()).hexdigest()[:32],
        hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()[:32],
    ]
    assert key not in plain
    salt = hashlib.sha256("\n".join(["payme_auth store key 2", *parts]).encode()).digest()
    expected = hashlib.scrypt(CLIENT_SECRET.encode(), salt=salt, n=2**14, r=8, p=1, dklen=16)
    assert key == expected.hex()


async def test_a_wrong_secret_never_takes_the_fleets_token(
    clock: FakeClock, token_mock: PaymeTokenMock
) -> None:
    """A provider with another secret asks Pay-me itself instead of taking the stored token."""
    store = MemoryTokenStore(clock)
    async with (
        make_auth(clock, store) as right,
        make_auth(clock, store, client_secret="a-mistyped-secret") as wrong,
    ):
        assert (await right.get_token()).value in token_mock.tokens
        token_mock.respond(httpx.Response(401, json={"error": "access_denied"}))
        with pytest.raises(InvalidCredentialsError):
            await wrong.get_token()
    assert token_mock.call_count == 2


async def test_memory_store_forgets_expired_tokens(clock: FakeClock) -> None:
    """An expired token is gone on the next read."""
    store = MemoryTokenStore(clock)
    now = clock()
    await store.publish("k", shared_token(issued_at=now, expires_at=now + 10))
    assert await store.get("k") is not None
    clock.advance(10)
    assert await store.get("k") is None
