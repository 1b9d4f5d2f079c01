"""A token store on Redis, so that a whole fleet of processes shares one Pay-me token.

Needs ``payme-auth[redis]`` (``redis>=5``, whose ``redis.asyncio`` client this uses)::

    from payme_auth import PaymeAuth
    from payme_auth.redis import RedisTokenStore

    store = RedisTokenStore("redis://redis.internal:6379/0")
    auth = PaymeAuth(client_id, client_secret, store=store)

Rules:
- Keys are ``<prefix><key>:token`` and ``<prefix><key>:lease``, where ``<key>`` is derived
  from the token URL, audience, client id, scopes and secret by scrypt (see
  ``_store.store_key``): a wrong secret never finds another secret's token, and the key
  shows neither.
- The token key holds ``1:<fingerprint>:<payload>``: the format version, the token's
  fingerprint (a one-way hash, for the compare-and-delete) and the token with its scopes
  and wall-clock times as JSON, encrypted when a cipher is given. It expires with the token
  (``PX``), so Redis never keeps a dead token.
- The lease is ``SET NX PX`` of a random owner string (host, process id, random hex);
  releasing it, and dropping a refused token, are Lua scripts that check the owner or the
  fingerprint first, so a process never deletes what another one wrote.
- Every Redis call is bounded by ``timeout`` (0.5 s by default), and the client is built
  without redis-py's own retries. After a failure the store answers "unavailable" at once
  for ``down_for`` seconds instead of waiting for Redis again; meanwhile the provider
  fetches on its own. Then it tries Redis again.
- ``redis.asyncio`` runs on asyncio only: under trio every call raises
  :class:`~payme_auth.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

from ._errors import ConfigurationError
from ._store import SharedToken

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "payme_auth.redis needs the redis package: install payme-auth[redis]", name="redis"
    ) from exc

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["Cipher", "RedisTokenStore"]

_FORMAT = b"1"

# KEYS[1]: the lease key; ARGV[1]: the owner. Deletes the lease only if ARGV[1] holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1]: the token key; ARGV[1]: "1:<fingerprint>:". Deletes the token only if it is that one.
_DISCARD = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@runtime_checkable
class Cipher(Protocol):
    """Encrypts tokens at rest: :class:`cryptography.fernet.Fernet` (or ``MultiFernet``, to
    rotate keys) fits as it is; anything with these two methods does."""

    def encrypt(self, data: bytes, /) -> bytes:
        """Return *data* encrypted and authenticated."""

    def decrypt(self, token: bytes, /) -> bytes:
        """Return the data *token* encrypts; raise if it was altered or has another key."""


def _positive(name: str, value: object, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        sign = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {sign}, not {value!r}")
    return float(value)


class RedisTokenStore:
    """A :class:`~payme_auth.TokenStore` on Redis: one token, one fetch at a time, per fleet.

    Give the same store settings to every process (every worker of every pod) with the
    same Pay-me credentials; together they then fetch one token per token lifetime::

        store = RedisTokenStore("redis://redis:6379/0", cipher=Fernet(key))
        auth = PaymeAuth(client_id, client_secret, store=store)

    Asyncio only (``redis.asyncio`` does not run on trio).

    Args:
        redis: a Redis URL (``redis://``, ``rediss://``, ``unix://``; the store then owns
            the client and :meth:`aclose` closes it), or a :class:`redis.asyncio.Redis`
            client, which is borrowed: used as it is, never closed. Give a borrowed client
            a ``socket_timeout``: ``timeout`` bounds each call, but only the client can
            close a connection that hangs.
        prefix: the start of every key.
        timeout: the longest one Redis call may take, in seconds; a slower one counts as a
            failure, and the process fetches on its own.
        down_for: after a failure, how long to fetch without asking Redis, in seconds.
        lease_ttl: how long a fetch lease lasts, in seconds. Default: a little over the
            longest a fetch may take (every attempt timing out, plus backoff).
        cipher: encrypts the token at rest, such as ``cryptography.fernet.Fernet(key)``.
            Every process must have the key; one that cannot decrypt the stored token
            fetches on its own (and says so).

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        prefix: str = "payme_auth:",
        timeout: float = 0.5,
        down_for: float = 5.0,
        lease_ttl: float | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        checked: object = prefix
        if not isinstance(checked, str) or not prefix.isprintable() or " " in prefix:
            raise ConfigurationError(f"prefix must be a string without spaces, not {prefix!r}")
        self.prefix = prefix
        self.timeout = _positive("timeout", timeout)
        self.down_for = _positive("down_for", down_for, zero=True)
        self.lease_ttl = None if lease_ttl is None else _positive("lease_ttl", lease_ttl)
        if cipher is not None and not isinstance(cipher, Cipher):
            raise ConfigurationError(
                f"cipher must have encrypt() and decrypt() methods (such as Fernet), "
                f"not {type(cipher).__name__}"
            )
        self._cipher = cipher
        if isinstance(redis, str):
            if not redis.startswith(("redis://", "rediss://", "unix://")):
                # Not shown: a URL may carry a password.
                raise ConfigurationError(
                    "redis must be a redis://, rediss:// or unix:// URL, or a "
                    "redis.asyncio.Redis client"
                )
            try:
                self._client = aioredis.Redis.from_url(
                    redis,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            except ValueError as exc:
                raise ConfigurationError("redis is not a valid Redis URL") from exc
            self._owned = True
        elif isinstance(redis, aioredis.Redis):
            self._client = redis
            self._owned = False
        else:
            raise ConfigurationError(
                f"redis must be a Redis URL or a redis.asyncio.Redis client, not "
                f"{type(redis).__name__} (the synchronous redis.Redis does not fit)"
            )
        self._release: AsyncScript = self._client.register_script(_RELEASE)
        self._discard: AsyncScript = self._client.register_script(_DISCARD)
        self._down_until = -math.inf

    def __repr__(self) -> str:
        return (
            f"RedisTokenStore(prefix={self.prefix!r}, timeout={self.timeout:g}, "
            f"encrypted={self._cipher is not None})"
        )

    # -- the TokenStore methods -----------------------------------------------------------

    async def get(self, key: str) -> SharedToken | None:
        """The token stored under *key*, or ``None``.

        Raises:
            ValueError: the stored value cannot be read (another cipher key, say).
        """
        raw = await self._run(self._client.get, f"{self.prefix}{key}:token")
        if raw is None:
            return None
        return self._decode(raw)

    async def publish(self, key: str, token: SharedToken) -> None:
        """Store *token* under *key* until it expires."""
        milliseconds = int((token.expires_at - time.time()) * 1000)
        if milliseconds <= 0:
            return
        value = self._encode(token)
        await self._run(self._client.set, f"{self.prefix}{key}:token", value, px=milliseconds)

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take the fetch lease of *key* (``SET NX PX``) unless another owner holds it."""
        ttl = self.lease_ttl if self.lease_ttl is not None else ttl
        milliseconds = max(1, int(ttl * 1000))
        done = await self._run(
            self._client.set, f"{self.prefix}{key}:lease", owner, nx=True, px=milliseconds
        )
        return bool(done)

    async def release(self, key: str, owner: str) -> None:
        """Give the lease of *key* back, if *owner* still holds it."""
        await self._run(self._release, keys=[f"{self.prefix}{key}:lease"], args=[owner])

    async def discard(self, key: str, fingerprint: str) -> bool:
        """Delete the token of *key* if its fingerprint is *fingerprint*."""
        mark = b"%s:%s:" % (_FORMAT, fingerprint.encode())
        deleted = await self._run(self._discard, keys=[f"{self.prefix}{key}:token"], args=[mark])
        return bool(deleted)

    # -- life cycle -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the Redis client if this store made it (from a URL); a borrowed one stays."""
        if self._owned:
            await self._client.aclose()

    async def __aenter__(self) -> RedisTokenStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- inside ---------------------------------------------------------------------------

    async def _run(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "RedisTokenStore works on asyncio only: redis.asyncio does not run on trio"
            ) from None
        if time.monotonic() < self._down_until:
            raise ConnectionError("Redis failed moments ago; not asking it again yet")
        try:
            with anyio.fail_after(self.timeout):
                return await method(*args, **kwargs)
        except Exception:
            self._down_until = time.monotonic() + self.down_for
            raise

    def _encode(self, token: SharedToken) -> bytes:
        payload = json.dumps(
            {
                "access_token": token.value,
                "token_type": token.token_type,
                "scope": " ".join(sorted(token.scope)),
                "issued_at": token.issued_at,
                "expires_at": token.expires_at,
            },
            separators=(",", ":"),
        ).encode()
        if self._cipher is not None:
            payload = self._cipher.encrypt(payload)
        return b"%s:%s:%s" % (_FORMAT, token.fingerprint.encode(), payload)

    def _decode(self, raw: bytes) -> SharedToken:
        version, _, rest = raw.partition(b":")
        mark, _, payload = rest.partition(b":")
        if version != _FORMAT or not payload:
            raise ValueError("the stored token is not in a format this version reads")
        try:
            if self._cipher is not None:
                payload = self._cipher.decrypt(payload)
            data = json.loads(payload)
            token = SharedToken(
                value=str(data["access_token"]),
                token_type=str(data["token_type"]),
                scope=str(data["scope"]).split(),
                issued_at=float(data["issued_at"]),
                expires_at=float(data["expires_at"]),
            )
        except Exception:  # noqa: BLE001 - whatever it is, the value is unusable; say why
            reason = (
                "it could not be decrypted (another key?)"
                if self._cipher is not None
                else "it is not readable (encrypted by a store with a cipher?)"
            )
            raise ValueError(f"the stored token is unusable: {reason}") from None
        if token.fingerprint.encode() != mark:
            raise ValueError("the stored token does not match its fingerprint")
        return token
