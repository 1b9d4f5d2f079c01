"""A local Pay-me: the token endpoint and a small protected API, as a raw ASGI 3 app.

Rules:
- ``POST /token`` answers the first failure in this order: an injected :class:`Fault`
  (FIFO, served after the request is counted; one with ``reset=True`` breaks the connection
  mid-answer, see ``_asgi``); a 503 with probability ``token_failure_rate``, drawn from
  ``rng``; a body over :data:`MAX_BODY_SIZE` (413); a ``Content-Type`` other than
  ``application/json`` (400); a missing or other ``ALG-API-VERSION`` (400); a body that is
  not a JSON object of exactly the six documented string fields (400); ``action`` or
  ``grant_type`` not the documented value (400); another ``audience`` (400); a ``scope``
  without ``create:token`` (400); an unknown client or a wrong secret (401); a scope the
  client may not have (401). Other methods get 405. Refusals use Pay-me's
  ``authorization.meta.status`` envelope and never echo the request.
- The API (``/charges`` routes) checks the bearer token first (401: missing, unknown,
  expired or revoked), then its scope (403), then ``ALG-API-VERSION`` (400): a gateway
  authorizes before its backend reads the request.
- Tokens are opaque random strings that really expire, on :attr:`PaymeEmulator.clock`.
- Served from another thread, the app shares its state with the test driving it: that state
  sits behind one ``threading.Lock``, never held across an ``await``.
- Waiting is ``anyio.sleep``, so the app runs under asyncio and trio alike.
- Every request is logged once it is answered, on one line at DEBUG on the
  ``payme_auth.testing.emulator`` logger: method, path, status and the client id (from the
  token request's body, or the bearer token's grant). Never a secret, never a token.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import attrs

from .._config import API_VERSION, DEFAULT_SCOPES
from ._asgi import (
    MAX_BODY_SIZE,
    DisconnectedError,
    Message,
    Receive,
    Send,
    read_body,
    send_answer,
    send_json,
)
from ._values import EmulatorStats, Fault, check_number, check_probability

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "MAX_BODY_SIZE",
    "PaymeEmulator",
]

DEFAULT_CLIENT_ID = "demo-client-id"
"""The client id a :class:`PaymeEmulator` accepts unless told otherwise."""

DEFAULT_CLIENT_SECRET = "demo-client-secret"
"""The client secret a :class:`PaymeEmulator` accepts unless told otherwise."""

logger = logging.getLogger("payme_auth.testing.emulator")
"""One DEBUG line per request served (``payme-auth emulator`` prints them)."""

_CREATE_TOKEN = "create:token"
_LOGGED_CHARS = 120
_TOKEN_FIELDS = {"action", "grant_type", "audience", "client_id", "client_secret", "scope"}
_UNKNOWN_CLIENT_SECRET = secrets.token_bytes(32)
# Number of path segments after "/charges" -> (method, scope needed, Pay-me action).
_ROUTES = {
    0: ("POST", "post:charges", "authorize"),
    2: ("DELETE", "delete:charges", "reverse"),
    3: ("GET", "get:charges", "query"),
}
_NO_STORE = (("cache-control", "no-store"), ("pragma", "no-cache"))
_RANDOM_FAILURE = Fault(status=503)


def _status_meta(code: str, text: str) -> dict[str, Any]:
    message = [{"locale": "es_PE", "value": text}]
    return {"meta": {"status": {"code": code, "message_ilgn": message}}}


def _authorization(code: str, text: str) -> dict[str, Any]:
    return {"authorization": _status_meta(code, text)}


def _refusal(status: int, reason: str) -> tuple[int, dict[str, Any]]:
    return status, {"action": "authorize", "success": False, **_authorization("01", reason)}


def _scope_tuple(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(scopes.split() if isinstance(scopes, str) else scopes)


_COUNTERS = tuple(attrs.fields_dict(EmulatorStats))
# What reset() restores: every attribute that may be changed after construction.
_KNOBS = (
    "token_lifetime",
    "token_latency",
    "api_latency",
    "token_failure_rate",
    "rng",
    "audience",
    "api_version",
    "clock",
)


@attrs.frozen
class _Grant:
    scopes: frozenset[str]
    expires_at: float
    client_id: str


@attrs.define
class _Served:
    """What one request got, for its log line."""

    status: int | None = None
    client_id: str | None = None


def _loggable(text: str) -> str:
    """*text* made safe for one log line: printable, and not too long."""
    if not text.isprintable():
        text = ascii(text)[1:-1]
    return text if len(text) <= _LOGGED_CHARS else text[: _LOGGED_CHARS - 3] + "..."


def _client_of(body: bytes | None) -> str | None:
    """The ``client_id`` a token request's body names, if it names one."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return None
    client_id = data.get("client_id") if isinstance(data, dict) else None
    return client_id if isinstance(client_id, str) else None


@attrs.define(kw_only=True, eq=False)
class PaymeEmulator:
    """An ASGI app that behaves like Pay-me's token endpoint and its ``/charges`` API.

    Use it in-process, or on a socket with :func:`~payme_auth.testing.run_emulator`::

        emulator = PaymeEmulator(token_lifetime=60)
        transport = httpx.ASGITransport(app=emulator)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            ...

    The first three attributes set up the first client (more with :meth:`add_client`) and
    cannot be changed afterwards. The others are knobs, checked when set, that may be changed
    at any time, from any thread.

    Attributes:
        client_id: the first client's id.
        client_secret: its secret (compared in constant time; never shown in ``repr``).
        scopes: the scopes it may be granted; ``create:token`` always is.
        token_lifetime: the ``expires_in`` issued, in seconds; tokens really expire then.
        token_latency: seconds to wait before answering ``POST /token``.
        api_latency: seconds to wait before answering an API call.
        token_failure_rate: the probability, from 0 to 1, that a ``POST /token`` not answered
            by an injected fault gets a 503 instead (counted in ``token_failures``).
        rng: where :attr:`token_failure_rate` draws from; pass ``random.Random(seed)`` to
            make the failures repeatable.
        audience: the ``audience`` required; ``None`` means the request's own origin with a
            trailing slash (``"http://127.0.0.1:8000/"``).
        api_version: the ``ALG-API-VERSION`` required on every call.
        clock: where "now" comes from (monotonic seconds); replace it to move time in tests.
    """

    client_id: str = attrs.field(default=DEFAULT_CLIENT_ID, on_setattr=attrs.setters.frozen)
    client_secret: str = attrs.field(
        default=DEFAULT_CLIENT_SECRET, repr=False, on_setattr=attrs.setters.frozen
    )
    scopes: tuple[str, ...] = attrs.field(
        default=DEFAULT_SCOPES, converter=_scope_tuple, on_setattr=attrs.setters.frozen
    )
    token_lifetime: int = attrs.field(default=8600, validator=check_number(integer=True))
    token_latency: float = attrs.field(default=0.0, validator=check_number(integer=False))
    api_latency: float = attrs.field(default=0.0, validator=check_number(integer=False))
    token_failure_rate: float = attrs.field(default=0.0, validator=check_probability)
    rng: random.Random = attrs.field(factory=random.Random, repr=False)
    audience: str | None = None
    api_version: str = API_VERSION
    clock: Callable[[], float] = attrs.field(default=time.monotonic, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _clients: dict[str, tuple[bytes, frozenset[str]]] = attrs.field(
        init=False, factory=dict, repr=False
    )
    _tokens: dict[str, _Grant] = attrs.field(init=False, factory=dict, repr=False)
    _faults: collections.deque[Fault] = attrs.field(
        init=False, factory=collections.deque, repr=False
    )
    _counts: dict[str, int] = attrs.field(init=False, repr=False)
    _initial: tuple[dict[str, Any], tuple[Any, ...]] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self.add_client(self.client_id, self.client_secret, scopes=self.scopes)
        knobs = {name: getattr(self, name) for name in _KNOBS}
        self._initial = (knobs, self.rng.getstate())

    def reset(self) -> None:
        """Put the emulator back as it was built, for the next test on a shared server.

        Every knob gets its constructor value again (``rng`` its first state, so seeded
        failures repeat), clients added since are forgotten and the first one restored,
        injected faults are dropped, every token is revoked and the counters go to zero.
        """
        knobs, rng_state = self._initial
        for name, value in knobs.items():
            setattr(self, name, value)
        self.rng.setstate(rng_state)
        with self._lock:
            self._clients.clear()
            self._faults.clear()
            self._tokens.clear()
        self.add_client(self.client_id, self.client_secret, scopes=self.scopes)
        self.reset_stats()

    def add_client(
        self, client_id: str, client_secret: str, *, scopes: Iterable[str] = DEFAULT_SCOPES
    ) -> None:
        """Accept *client_id* with *client_secret* (replacing it if known), for *scopes*.

        *scopes* may also be one space-separated string; ``create:token`` is always added.
        """
        allowed = frozenset([_CREATE_TOKEN, *_scope_tuple(scopes)])
        for value in (client_id, client_secret, *allowed):
            if type(value) is not str or not value:
                raise ValueError("client ids, secrets and scopes must be non-empty strings")
        with self._lock:
            self._clients[client_id] = (client_secret.encode(), allowed)

    def remove_client(self, client_id: str) -> None:
        """Forget *client_id*: its token requests get 401 from now on (its tokens stay valid)."""
        with self._lock:
            self._clients.pop(client_id, None)

    def inject(self, fault: Fault, *, times: int = 1) -> None:
        """Make the next *times* ``POST /token`` requests get *fault* instead of a token."""
        if type(times) is not int or times < 1:
            raise ValueError(f"times must be an int >= 1, not {times!r}")
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> int:
        """Drop the injected faults not served yet; return how many there were."""
        with self._lock:
            count = len(self._faults)
            self._faults.clear()
        return count

    def revoke_tokens(self) -> int:
        """Make the API reject (401) every token issued so far; return how many were live."""
        with self._lock:
            now = self.clock()
            count = sum(grant.expires_at > now for grant in self._tokens.values())
            self._tokens.clear()
        return count

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters (see :class:`EmulatorStats`)."""
        with self._lock:
            return EmulatorStats(**self._counts)

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(_COUNTERS, 0)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """Serve one ASGI 3 connection: ``lifespan`` and ``http`` (other types are ignored)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            try:
                await self._http(scope, receive, send)
            except DisconnectedError:
                return

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        served = _Served()

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                served.status = message["status"]
            await send(message)

        try:
            await self._route(scope, receive, send_and_note, served)
        finally:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s %s client=%s",
                    _loggable(str(scope["method"])),
                    _loggable(str(scope["path"])),
                    served.status or "-",
                    _loggable(served.client_id) if served.client_id else "-",
                )

    async def _route(self, scope: Message, receive: Receive, send: Send, served: _Served) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        method, segments = scope["method"], scope["path"].split("/")[1:]
        if segments == ["token"]:
            route: tuple[str, str, str] | None = ("POST", "", "")
        elif segments[0] == "charges" and all(segments):
            route = _ROUTES.get(len(segments) - 1)
        else:
            route = None
        if route is None:
            await send_json(send, 404, {"message": "Not Found"})
        elif method != route[0]:
            await send_json(send, 405, {"message": "Method Not Allowed"}, [("allow", route[0])])
        elif not route[1]:
            await self._token_endpoint(scope, headers, receive, send, served)
        else:
            await self._api(headers, receive, send, route[1:], segments[1:], served=served)

    async def _token_endpoint(
        self,
        scope: Message,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
        served: _Served,
    ) -> None:
        body = await read_body(receive)
        served.client_id = _client_of(body)
        with self._lock:
            self._counts["token_requests"] += 1
            fault = self._faults.popleft() if self._faults else None
            rate = self.token_failure_rate
            if fault is None and rate > 0 and self.rng.random() < rate:
                fault = _RANDOM_FAILURE
        await anyio.sleep(self.token_latency)
        if fault is not None:
            await anyio.sleep(fault.delay)
            self._count("token_failures")
            extra = fault.headers.items()
            await send_answer(send, fault.status, fault.body, extra, cut_short=fault.reset)
            return
        if body is None:
            status, payload = 413, {"message": "Request Entity Too Large"}
        else:
            status, payload = self._authorize(scope, headers, body)
        if status != 200:
            self._count("token_failures")
        await send_json(send, status, payload, _NO_STORE)

    def _expected_audience(self, scope: Message, headers: Mapping[str, str]) -> str | None:
        if self.audience is not None:
            return self.audience
        host = headers.get("host")
        return None if host is None else f"{scope.get('scheme', 'http')}://{host.lower()}/"

    def _authorize(
        self, scope: Message, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
            return _refusal(400, "Content-Type must be application/json")
        if headers.get("alg-api-version") != self.api_version:
            return _refusal(400, "the ALG-API-VERSION header is missing or not supported")
        try:
            data = json.loads(body)
        except ValueError:
            return _refusal(400, "the body is not valid JSON")
        if not isinstance(data, dict) or data.keys() != _TOKEN_FIELDS:
            return _refusal(400, f"the body must have exactly the fields {sorted(_TOKEN_FIELDS)}")
        if not all(isinstance(value, str) for value in data.values()):
            return _refusal(400, "every field of the body must be a string")
        if data["action"] != "authorize":
            return _refusal(400, "action must be 'authorize'")
        if data["grant_type"] != "client_credentials":
            return _refusal(400, "grant_type must be 'client_credentials'")
        if data["audience"] != self._expected_audience(scope, headers):
            return _refusal(400, "audience does not match this environment")
        requested = tuple(dict.fromkeys(data["scope"].split()))
        if _CREATE_TOKEN not in requested:
            return _refusal(400, "scope must include create:token")
        with self._lock:
            secret, allowed = self._clients.get(data["client_id"], (None, frozenset[str]()))
        matches = hmac.compare_digest(
            data["client_secret"].encode(), secret or _UNKNOWN_CLIENT_SECRET
        )
        if secret is None or not matches:
            return _refusal(401, "client_id or client_secret is not valid")
        if not allowed.issuperset(requested):
            return _refusal(401, "a requested scope is not allowed for this client")
        token, lifetime = secrets.token_urlsafe(32), self.token_lifetime
        with self._lock:
            now = self.clock()
            self._tokens = {t: g for t, g in self._tokens.items() if g.expires_at > now}
            self._tokens[token] = _Grant(frozenset(requested), now + lifetime, data["client_id"])
            self._counts["tokens_issued"] += 1
        return 200, {
            "action": "authorize",
            "success": True,
            "access_token": token,
            "scope": " ".join(requested),
            "expires_in": lifetime,
            "token_type": "Bearer",
            **_authorization("00", "Access Token creado"),
        }

    def _grant_for(self, authorization: str | None) -> _Grant | None:
        scheme, _, token = (authorization or "").partition(" ")
        with self._lock:
            grant = self._tokens.get(token.strip())
            now = self.clock()
        if scheme.lower() != "bearer" or grant is None or now >= grant.expires_at:
            return None
        return grant

    async def _api(
        self,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
        route: tuple[str, str],
        params: list[str],
        *,
        served: _Served,
    ) -> None:
        body = await read_body(receive)
        self._count("api_requests")
        await anyio.sleep(self.api_latency)
        needed, action = route
        grant = self._grant_for(headers.get("authorization"))
        served.client_id = None if grant is None else grant.client_id
        if grant is None:
            self._count("api_unauthorized")
            challenge = [("www-authenticate", 'Bearer error="invalid_token"')]
            await send_json(send, 401, {"message": "Unauthorized"}, challenge)
        elif needed not in grant.scopes:
            self._count("api_forbidden")
            challenge = [
                ("www-authenticate", f'Bearer error="insufficient_scope" scope="{needed}"')
            ]
            await send_json(send, 403, {"message": "Forbidden"}, challenge)
        elif headers.get("alg-api-version") != self.api_version:
            await send_json(send, 400, {"message": "ALG-API-VERSION is missing or not supported"})
        elif body is None:
            await send_json(send, 413, {"message": "Request Entity Too Large"})
        else:
            await send_json(send, 200, _charge_answer(action, params, body))


def _charge_answer(action: str, params: list[str], body: bytes) -> dict[str, Any]:
    names = ("merchant_code", "merchant_operation_number", "transaction_id")
    transaction: dict[str, Any] = dict(zip(names, params, strict=False))
    if action == "authorize":
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            transaction.update({key: data[key] for key in names[:2] if key in data})
        transaction["transaction_id"] = secrets.token_hex(8)
    transaction["state"] = "ANULADO" if action == "reverse" else "AUTORIZADO"
    transaction.update(_status_meta("00", "Operación exitosa"))
    if action == "query":
        return {"action": action, "success": True, "transactions": [transaction]}
    return {"action": action, "success": True, "transaction": transaction}
