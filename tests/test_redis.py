"""RedisTokenStore against a real redis-server: the store's own operations in this process,
then fleets of processes sharing one token through it (asyncio only: redis.asyncio).

Skipped when redis-server or the redis package is missing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("redis")

import redis.asyncio as aioredis

from payme_auth import ConfigurationError, InvalidCredentialsError, PaymeAuth
from payme_auth._store import SharedToken, store_key
from payme_auth.redis import RedisTokenStore
from payme_auth.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    EmulatorServer,
    run_emulator,
)

from .conftest import TOKEN_MARK
from .redis_fleet.fleet import Fleet
from .redis_fleet.server import RedisServer, redis_server_path

pytestmark = [
    pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed"),
]

KEY = store_key(
    token_url="https://auth.example/token",
    audience="https://api.example/",
    client_id="client",
    scopes=["create:token"],
    client_secret="secret",
)


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free loopback port, killed afterwards."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisTokenStore]:
    async with RedisTokenStore(redis_server.url, prefix="test:", timeout=1.0) as store:
        yield store


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at what the store wrote."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def shared(value: str = f"{TOKEN_MARK}redis.1", lifetime: float = 60.0) -> SharedToken:
    now = time.time()
    return SharedToken(
        value=value, scope=["create:token"], issued_at=now, expires_at=now + lifetime
    )


# -- the store's operations ----------------------------------------------------------------


@pytest.mark.anyio
async def test_publish_then_get(store: RedisTokenStore, raw: aioredis.Redis) -> None:
    """A published token reads back equal, under the prefixed key, expiring with the token."""
    token = shared(lifetime=30)
    await store.publish(KEY, token)
    assert await store.get(KEY) == token
    assert await store.get("another-key") is None
    assert await raw.keys("*") == [f"test:{KEY}:token".encode()]
    ttl = await raw.pttl(f"test:{KEY}:token")
    assert 28_000 < ttl <= 30_000
    stored = await raw.get(f"test:{KEY}:token")
    assert isinstance(stored, bytes)
    assert stored.startswith(f"1:{token.fingerprint}:".encode())


@pytest.mark.anyio
async def test_an_expired_token_is_not_published(
    store: RedisTokenStore, raw: aioredis.Redis
) -> None:
    """A token already past its expiry is not written."""
    now = time.time()
    await store.publish(KEY, SharedToken(value="x", scope=[], issued_at=now - 9, expires_at=now))
    assert await raw.keys("*") == []


@pytest.mark.anyio
async def test_lease_has_one_owner(store: RedisTokenStore, raw: aioredis.Redis) -> None:
    """SET NX: one owner at a time; only the owner releases; the lease lapses by itself."""
    assert await store.acquire(KEY, "one", 5.0)
    assert not await store.acquire(KEY, "two", 5.0)
    await store.release(KEY, "two")  # not the owner: nothing happens
    assert await raw.get(f"test:{KEY}:lease") == b"one"
    await store.release(KEY, "one")
    assert await raw.get(f"test:{KEY}:lease") is None
    assert await store.acquire(KEY, "two", 0.05)
    await anyio.sleep(0.1)
    assert await store.acquire(KEY, "three", 5.0)


@pytest.mark.anyio
async def test_lease_ttl_setting_wins(redis_server: RedisServer, raw: aioredis.Redis) -> None:
    """lease_ttl replaces the time to live the provider asks for."""
    async with RedisTokenStore(redis_server.url, prefix="t:", lease_ttl=7.0) as store:
        assert await store.acquire(KEY, "one", 100.0)
    assert 6_000 < await raw.pttl(f"t:{KEY}:lease") <= 7_000


@pytest.mark.anyio
async def test_discard_only_the_named_token(store: RedisTokenStore) -> None:
    """Compare-and-delete: a token is dropped only by its own fingerprint."""
    first, second = shared(f"{TOKEN_MARK}a"), shared(f"{TOKEN_MARK}b")
    await store.publish(KEY, second)
    assert not await store.discard(KEY, first.fingerprint)
    assert await store.get(KEY) == second
    assert await store.discard(KEY, second.fingerprint)
    assert await store.get(KEY) is None
    assert not await store.discard(KEY, second.fingerprint)


@pytest.mark.anyio
async def test_encrypted_at_rest(redis_server: RedisServer, raw: aioredis.Redis) -> None:
    """With a Fernet cipher the token is not in Redis in clear; another key cannot read it."""
    fernet = pytest.importorskip("cryptography.fernet")
    key = fernet.Fernet.generate_key()
    token = shared()
    async with RedisTokenStore(redis_server.url, cipher=fernet.Fernet(key)) as store:
        await store.publish(KEY, token)
        assert await store.get(KEY) == token
    stored = await raw.get(f"payme_auth:{KEY}:token")
    assert isinstance(stored, bytes)
    assert TOKEN_MARK.encode() not in stored
    other = fernet.Fernet(fernet.Fernet.generate_key())
    async with RedisTokenStore(redis_server.url, cipher=other) as store:
        with pytest.raises(ValueError, match="decrypted"):
            await store.get(KEY)
    async with RedisTokenStore(redis_server.url) as store:
        with pytest.raises(ValueError, match="not readable"):
            await store.get(KEY)


@pytest.mark.anyio
async def test_a_borrowed_client_stays_open(redis_server: RedisServer) -> None:
    """A client passed in is used and never closed by the store."""
    client = aioredis.Redis.from_url(redis_server.url)
    async with RedisTokenStore(client) as store:
        await store.publish(KEY, shared())
    assert await client.ping()
    await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"redis": "http://localhost"}, "redis://"),
        ({"redis": 42}, "not int"),
        ({"redis": "redis://x", "prefix": "a b"}, "prefix"),
        ({"redis": "redis://x", "timeout": 0}, "timeout"),
        ({"redis": "redis://x", "timeout": float("nan")}, "timeout"),
        ({"redis": "redis://x", "down_for": -1}, "down_for"),
        ({"redis": "redis://x", "lease_ttl": 0}, "lease_ttl"),
        ({"redis": "redis://x", "cipher": "key"}, "cipher"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    """Every bad setting is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=match):
        RedisTokenStore(**kwargs)


def test_repr_shows_no_url() -> None:
    """The URL (which may carry a password) is not in the repr."""
    store = RedisTokenStore("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(store)
    assert repr(store) == "RedisTokenStore(prefix='payme_auth:', timeout=0.5, encrypted=False)"


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_is_refused_clearly(redis_server: RedisServer) -> None:
    """Under trio the store raises ConfigurationError, and get_token passes it on."""
    store = RedisTokenStore(redis_server.url)
    with pytest.raises(ConfigurationError, match="asyncio only"):
        await store.get(KEY)
    auth = PaymeAuth("client", "secret", store=store)
    with anyio.fail_after(5), pytest.raises(ConfigurationError, match="asyncio only"):
        await auth.get_token()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections and never answers (a Redis that hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_one() -> None:
        with contextlib.suppress(OSError):
            held.append(listener.accept()[0])

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            accept_one()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with run_emulator() as server:
        yield server


@pytest.mark.anyio
async def test_slow_redis_falls_back_with_one_warning(
    blackhole: int, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that never answers costs one timeout, then is skipped for down_for; tokens
    are fetched locally all along, and the fallback is logged at WARNING once."""
    store = RedisTokenStore(f"redis://127.0.0.1:{blackhole}/0", timeout=0.2, down_for=30)
    with anyio.fail_after(2):
        with pytest.raises(TimeoutError):
            await store.get(KEY)
        began = time.monotonic()
        with pytest.raises(ConnectionError, match="moments ago"):
            await store.get(KEY)
        assert time.monotonic() - began < 0.05
    store = RedisTokenStore(f"redis://127.0.0.1:{blackhole}/0", timeout=0.2, down_for=30)
    auth = PaymeAuth(
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        environment=emulator.environment,
        store=store,
    )
    with anyio.fail_after(5):
        for _ in range(3):
            await auth.refresh()
    assert emulator.emulator.stats.token_requests == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "token store failed (get: TimeoutError" in warnings[0].getMessage()
    await store.aclose()


@pytest.mark.anyio
async def test_a_wrong_secret_never_takes_the_stored_token(
    redis_server: RedisServer, raw: aioredis.Redis, emulator: EmulatorServer
) -> None:
    """A process with a mistyped secret, on the same Redis as the fleet, asks Pay-me itself
    and is refused at once, instead of being handed the token fetched with the right secret.
    Redis holds neither secret in any key or value."""
    async with (
        RedisTokenStore(redis_server.url, prefix="test:", timeout=1.0) as store,
        PaymeAuth(
            DEFAULT_CLIENT_ID,
            DEFAULT_CLIENT_SECRET,
            environment=emulator.environment,
            store=store,
        ) as right,
        PaymeAuth(
            DEFAULT_CLIENT_ID,
            "mistyped-secret",
            environment=emulator.environment,
            store=store,
        ) as wrong,
    ):
        with anyio.fail_after(10):
            await right.get_token()
            with pytest.raises(InvalidCredentialsError):
                await wrong.get_token()
    assert emulator.emulator.stats.token_requests == 2
    keys = await raw.keys("*")
    assert len(keys) == 1
    stored = repr([(key, await raw.get(key)) for key in keys])
    for secret in (DEFAULT_CLIENT_SECRET, "mistyped-secret", DEFAULT_CLIENT_ID):
        assert secret not in stored


# -- fleets of processes -------------------------------------------------------------------


def settings(server: EmulatorServer, redis: RedisServer | None, **more: Any) -> dict[str, Any]:
    return {
        "token_url": server.token_url,
        "audience": server.audience,
        "api_version": server.emulator.api_version,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "redis_url": None if redis is None else redis.url,
        # Generous here: the fleet's processes start on a shared, busy CPU.
        "redis_timeout": 1.0,
        **more,
    }


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def test_sixteen_processes_make_one_token_request(
    redis_server: RedisServer, emulator: EmulatorServer
) -> None:
    """16 processes starting at once get one token among them: one token request."""
    with Fleet(16, settings(emulator, redis_server)) as fleet:
        fleet.start()
        results = fleet.results(timeout=30)
    assert emulator.emulator.stats.token_requests == 1
    assert all(r["ok"] == 1 and r["failed"] == 0 for r in results)
    assert sum(r["token_requests"] for r in results) == 1
    assert len({r["fingerprints"][0] for r in results}) == 1


def test_a_lease_holder_killed_mid_fetch(
    redis_server: RedisServer, emulator: EmulatorServer
) -> None:
    """The process fetching is killed (SIGKILL) while the token endpoint is slow: the others
    wait for its lease to lapse, then one of them fetches: one more request, no failure."""
    emulator.emulator.token_latency = 1.0
    # One 2 s attempt: a lease of (2 s * 1.1 + 0.5) = 2.7 s.
    config = settings(emulator, redis_server, timeout=2.0, attempts=1, prefix="kill:")
    with Fleet(6, config) as fleet:
        fleet.start()
        wait_for(lambda: emulator.emulator.stats.token_requests == 1, 20, "the first request")
        holder = redis_server_lease_owner(redis_server, "kill:")
        killed = fleet.index_of(holder)
        fleet.kill(killed)
        began = time.monotonic()
        results = fleet.results(timeout=30, skip=frozenset({killed}))
        waited = time.monotonic() - began
    assert emulator.emulator.stats.token_requests == 2
    assert all(r["ok"] == 1 and r["failed"] == 0 for r in results)
    assert sum(r["token_requests"] for r in results) == 1
    assert len({r["fingerprints"][0] for r in results}) == 1
    assert 1.0 < waited < 10


def redis_server_lease_owner(redis_server: RedisServer, prefix: str) -> int:
    """The process id in the fetch lease's owner (``host:pid:random``)."""
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url, socket_timeout=2)
    try:
        keys = client.keys(f"{prefix}*:lease")
        assert len(keys) == 1, keys
        owner = client.get(keys[0])
    finally:
        client.close()
    assert isinstance(owner, bytes)
    return int(owner.decode().split(":")[1])


def test_redis_down_mid_run(redis_server: RedisServer, emulator: EmulatorServer) -> None:
    """Redis dies while processes make API calls on 4 s tokens: no call fails, every process
    fetches on its own meanwhile (and says so), and once Redis is back they share again."""
    emulator.emulator.token_lifetime = 4  # renewed in the background 2 s into its life
    config = settings(
        emulator,
        redis_server,
        mode="calls",
        seconds=8.5,
        refresh_margin=1.0,
        redis_timeout=0.25,
        down_for=0.3,
    )
    stats = emulator.emulator
    with Fleet(6, config) as fleet:
        fleet.start()
        wait_for(lambda: stats.stats.api_requests >= 6, 20, "the first calls")
        time.sleep(1.0)
        redis_server.stop()
        down = stats.stats.token_requests
        time.sleep(3.0)
        during = stats.stats.token_requests - down
        redis_server.start()
        time.sleep(1.5)  # one renewal round to converge on one shared token again
        back = stats.stats.token_requests
        results = fleet.results(timeout=30)
        after = stats.stats.token_requests - back
        logs = [fleet.log(i) for i in range(6)]
    assert all(r["failed"] == 0 and r["ok"] > 20 for r in results), results
    # Tokens renew every 2 s: 6 processes on their own make a request each per round.
    assert during >= 6
    assert after <= 3
    assert any("fetching a token without it" in log for log in logs)
    assert all(TOKEN_MARK not in log and DEFAULT_CLIENT_SECRET not in log for log in logs)


def test_revocation_gets_one_new_token_for_the_fleet(
    redis_server: RedisServer, emulator: EmulatorServer
) -> None:
    """Every token is revoked while 8 processes call the API: each gets a 401, drops the
    shared token only if it is the refused one, and the fleet makes one new request."""
    config = settings(emulator, redis_server, mode="calls", seconds=3.0)
    with Fleet(8, config) as fleet:
        fleet.start()
        wait_for(lambda: emulator.emulator.stats.api_requests >= 24, 20, "the first calls")
        before = emulator.emulator.stats.token_requests
        assert emulator.emulator.revoke_tokens() == 1
        results = fleet.results(timeout=30)
    stats = emulator.emulator.stats
    assert before == 1
    assert stats.token_requests == 2
    assert stats.api_unauthorized >= 8  # every process met the revocation
    assert all(r["failed"] == 0 for r in results), results
    assert {len(r["fingerprints"]) for r in results} == {2}
    assert len({r["fingerprints"][1] for r in results}) == 1


def test_without_a_store_every_process_fetches(emulator: EmulatorServer) -> None:
    """The baseline the store improves on: 4 processes without it make 4 requests."""
    with Fleet(4, settings(emulator, None)) as fleet:
        fleet.start()
        results = fleet.results(timeout=30)
    assert emulator.emulator.stats.token_requests == 4
    assert all(r["ok"] == 1 for r in results)
