"""The settings of a PaymeAuth: one frozen value, validated once, that builds its provider.

Rules:
- Every setting is checked when the value is made, with a :class:`ConfigurationError` that
  names it; the client secret is never part of a message or of ``repr()``.
- Both plugs (httpx's and httpx2's) and the command line make their PaymeAuth from this one
  value, so the checks exist once.
- A timeout is httpx's :class:`httpx.Timeout`, or anything with the same four phases
  (httpx2's), or seconds for the whole request; every phase must be bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

import attrs
import httpx

from ._config import DEFAULT_SCOPES, Environment, Origin, normalize_scopes, parse_origin
from ._errors import ConfigurationError
from ._fetcher import TokenFetcher
from ._policy import RetryPolicy, check_seconds
from ._protocol import MAX_EXPIRES_IN
from ._provider import TokenProvider, TokenSource
from ._store import SharedFetcher, TokenStore, store_key

__all__ = ["Settings", "TimeoutLike"]

_MAX_CREDENTIAL_LENGTH = 1024


class TimeoutLike(Protocol):
    """A timeout per phase, as :class:`httpx.Timeout` (and httpx2's) have them."""

    @property
    def connect(self) -> float | None: ...
    @property
    def read(self) -> float | None: ...
    @property
    def write(self) -> float | None: ...
    @property
    def pool(self) -> float | None: ...


def _credential(name: str, value: object, *, secret: bool) -> str:
    shown = "" if secret else f": {value!r}"
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
    if not value or value != value.strip():
        raise ConfigurationError(f"{name} must be non-empty, with no surrounding spaces{shown}")
    if len(value) > _MAX_CREDENTIAL_LENGTH or not value.isprintable():
        raise ConfigurationError(
            f"{name} must be at most {_MAX_CREDENTIAL_LENGTH} printable characters{shown}"
        )
    return value


def _client_id(value: object) -> str:
    return _credential("client_id", value, secret=False)


def _client_secret(value: object) -> str:
    return _credential("client_secret", value, secret=True)


def _environment(value: object) -> Environment:
    if not isinstance(value, Environment):
        raise ConfigurationError(f"environment must be an Environment, not {type(value).__name__}")
    return value


def _refresh_margin(value: object) -> float:
    return check_seconds("refresh_margin", value)


def _http_client(value: object) -> httpx.AsyncClient | None:
    if value is not None and not isinstance(value, httpx.AsyncClient):
        raise ConfigurationError(
            f"http_client must be an httpx.AsyncClient, not {type(value).__name__}: it sends "
            "the token requests, which go through httpx (pass an httpx.AsyncClient, or nothing)"
        )
    return value


def _retry(value: object) -> RetryPolicy:
    if value is None:
        return RetryPolicy()
    if not isinstance(value, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy, not {type(value).__name__}")
    return value


def _timeout(value: object) -> float | httpx.Timeout:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = check_seconds("timeout", value)
        if seconds <= 0:
            raise ConfigurationError(f"timeout must be > 0, not {value!r}")
        return seconds
    phases = ("connect", "read", "write", "pool")
    if not all(hasattr(value, phase) for phase in phases):
        raise ConfigurationError(
            f"timeout must be a number of seconds or an httpx.Timeout, not {value!r}"
        )
    parts = [getattr(value, phase) for phase in phases]
    if any(part is None for part in parts):
        raise ConfigurationError(
            "timeout must bound every phase (connect, read, write, pool): "
            "a token request that can hang forever would hang every caller"
        )
    connect, read, write, pool = (check_seconds("timeout", part) for part in parts)
    return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)


def _origins(value: object) -> frozenset[Origin]:
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, Iterable):
        raise ConfigurationError(
            f"extra_origins must be a list of origins, not {type(value).__name__}"
        )
    return frozenset(map(parse_origin, value))


def _assumed(value: object) -> int | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EXPIRES_IN
    ):
        raise ConfigurationError(
            f"assumed_expires_in must be a positive whole number of seconds or None, not {value!r}"
        )
    return value


def _ratio(value: object) -> float | None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1
    ):
        raise ConfigurationError(
            f"advisory_ratio must be a number in (0, 1] or None, not {value!r}"
        )
    return value


def _clock(value: object) -> Callable[[], float] | None:
    if value is not None and not callable(value):
        raise ConfigurationError(f"clock must be a callable, not {type(value).__name__}")
    return value


def _store(value: object) -> TokenStore | None:
    if value is not None and not isinstance(value, TokenStore):
        raise ConfigurationError(
            f"store must be a TokenStore (get, publish, acquire, release, discard), "
            f"not {type(value).__name__}"
        )
    return value


@attrs.frozen(kw_only=True)
class Settings:
    """What a :class:`~payme_auth.PaymeAuth` is made of (its arguments, checked).

    See :class:`~payme_auth.PaymeAuth` for what each one means.
    """

    client_id: str = attrs.field(converter=_client_id)
    client_secret: str = attrs.field(converter=_client_secret, repr=False)
    environment: Environment = attrs.field(default=Environment.PREPROD, converter=_environment)
    scopes: tuple[str, ...] = attrs.field(default=DEFAULT_SCOPES, converter=normalize_scopes)
    refresh_margin: float = attrs.field(default=60.0, converter=_refresh_margin)
    timeout: float | httpx.Timeout = attrs.field(default=10.0, converter=_timeout)
    http_client: httpx.AsyncClient | None = attrs.field(default=None, converter=_http_client)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, converter=_retry)
    extra_origins: frozenset[Origin] = attrs.field(default=frozenset(), converter=_origins)
    assumed_expires_in: int | None = attrs.field(default=300, converter=_assumed)
    advisory_ratio: float | None = attrs.field(default=2 / 3, converter=_ratio)
    clock: Callable[[], float] | None = attrs.field(default=None, converter=_clock)
    store: TokenStore | None = attrs.field(default=None, converter=_store)

    @property
    def origins(self) -> frozenset[Origin]:
        """The origins that receive the token: the API's and the extra ones."""
        return frozenset({self.environment.api_origin, *self.extra_origins})

    @property
    def http_timeout(self) -> httpx.Timeout:
        """The timeout of each phase of a token request, for httpx."""
        timeout = self.timeout
        return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)

    @property
    def attempt_timeout(self) -> float:
        """A bound on one whole token request: *timeout* seconds, or the sum of its phases."""
        timeout = self.timeout
        if not isinstance(timeout, httpx.Timeout):
            return timeout
        phases = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        return float(sum(phase for phase in phases if phase is not None))

    def provider(self) -> TokenProvider:
        """A token provider fetching with these settings."""
        clock = self.clock or time.monotonic
        fetcher = TokenFetcher(
            environment=self.environment,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scopes=self.scopes,
            timeout=self.http_timeout,
            attempt_timeout=self.attempt_timeout,
            http_client=self.http_client,
            assumed_expires_in=self.assumed_expires_in,
            clock=clock,
            retry=self.retry,
        )
        source: TokenSource = fetcher
        if self.store is not None:
            source = SharedFetcher(
                fetcher,
                self.store,
                store_key(
                    token_url=self.environment.token_url,
                    audience=self.environment.audience,
                    client_id=self.client_id,
                    scopes=self.scopes,
                    client_secret=self.client_secret,
                ),
                attempt_timeout=self.attempt_timeout,
                refresh_margin=self.refresh_margin,
                clock=clock,
                wall_clock=self.clock or time.time,
            )
        return TokenProvider(
            source,
            refresh_margin=self.refresh_margin,
            advisory_ratio=self.advisory_ratio,
            longest_fetch=self.retry.longest_fetch(self.attempt_timeout),
            clock=clock,
        )
