"""An in-process stand-in for Pay-me's token endpoint, on respx: tests with no network.

Rules:
- Only the token URLs are routed (pre-production's and production's unless told). Any
  other request is left to the other respx routers that are active: respx offers a request
  to each in turn, and a router built with ``assert_all_mocked=True`` (this one) hands on
  a request that none of its routes match. If no router takes it, respx raises
  ``AllMockedAssertionError``: nothing reaches the network.
- Answers come from one FIFO queue shared by every mocked URL; when it is empty, a token
  of the documented shape is issued. Two checks come first and use up no queued answer:
  a body that is not a JSON object gets 400 and, when the mock was given credentials,
  other credentials get 401.
- Every request is recorded with its parsed body as sent (the client secret included: it
  is the test's own) and what it was answered; a record's ``repr`` masks the secret and
  leaves out the token.
- respx is imported when a mock is built, not before: it is an optional dependency
  (``payme-auth[testing]``).
- Waiting (``delay``, :meth:`PaymeTokenMock.hang`, the gate of :meth:`PaymeTokenMock.hold`)
  is anyio's, so asyncio and trio both work; answers that wait are for async clients only
  (PaymeAuth is one).
- A request held at the gate is counted in ``arrived`` at once, but takes its answer (the
  next queued one) and its record only once released: ``calls`` are the requests answered.
"""

from __future__ import annotations

import enum
import http
import itertools
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import httpx

from .._config import Environment
from .._errors import ConfigurationError
from ._values import (
    AnswerKind,
    TokenCall,
    check_delay,
    check_expires_in,
    check_int,
    check_scope,
    check_text,
    check_times,
    text_field,
)

if TYPE_CHECKING:
    import respx

__all__ = ["DEFAULT_EXPIRES_IN", "PaymeTokenMock"]

DEFAULT_EXPIRES_IN = 8600
_TRANSIENT = frozenset({408, 425, 429})
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_serial = itertools.count(1)


class _Default(enum.Enum):
    VALUE = enum.auto()


_DEFAULT = _Default.VALUE


@attrs.frozen(kw_only=True)
class _Plan:
    """A queued answer. A new response is built for each request it serves."""

    kind: AnswerKind
    delay: float = 0.0
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    content: bytes = attrs.field(default=b"", repr=False)
    expires_in: int | str | _Default | None = _DEFAULT
    scope: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    build: Callable[[httpx.Request], httpx.Response] | None = None


def _envelope(code: str, message: str, **fields: object) -> dict[str, object]:
    status = {"code": code, "message_ilgn": [{"locale": "es_PE", "value": message}]}
    return {"action": "authorize", **fields, "authorization": {"meta": {"status": status}}}


def _json_plan(kind: AnswerKind, status: int, payload: object, **headers: str) -> _Plan:
    content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    fields = {"content-type": "application/json", **_NO_STORE, **headers}
    return _Plan(kind=kind, status=status, headers=tuple(fields.items()), content=content)


def _refusal(status: int, code: str, message: str) -> _Plan:
    return _json_plan("refusal", status, _envelope(code, message, success=False))


def _environments(value: object) -> tuple[Environment, ...]:
    if value is None:
        return (Environment.PREPROD, Environment.PRODUCTION)
    if isinstance(value, Environment):
        return (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"environments must be an Environment or a list of them, not {value!r}"
        )
    found = tuple(value)
    for item in found:
        if not isinstance(item, Environment):
            raise ConfigurationError(f"environments must hold Environment values, not {item!r}")
    if not found:
        raise ConfigurationError("environments must name at least one Environment")
    return found


class PaymeTokenMock:
    """A mock of Pay-me's token endpoint for tests, built on respx; no network is used.

    Use it as a context manager around the code under test::

        with PaymeTokenMock() as mock:
            mock.fail(503, retry_after=0)  # the first request gets a 503, the next a token
            async with PaymeAuth("id", "secret") as auth:
                token = await auth.get_token()
        assert mock.call_count == 2
        assert token.value == mock.tokens[-1]

    Queue answers with :meth:`issue`, :meth:`refuse`, :meth:`fail`, :meth:`respond`,
    :meth:`disconnect` and :meth:`hang`; each serves one request, in order. With nothing
    queued, a token is issued. Read what was asked in :attr:`calls` and :attr:`requests`.
    Hold the requests unanswered with :meth:`hold` until :meth:`release`, to have many
    callers waiting on one request at a moment of the test's choosing.

    Only the token URLs are mocked. Mock the Pay-me API (and anything else your code calls)
    with routes of your own: in another active respx router (``respx_mock``, ``with
    respx.mock:``), which respx asks in turn, or in the one given as *router*.

    Args:
        environments: the environments whose token URL to mock: one or several. Default:
            :attr:`Environment.PREPROD <payme_auth.Environment.PREPROD>` and
            :attr:`Environment.PRODUCTION <payme_auth.Environment.PRODUCTION>`.
        router: a respx router to add the routes to, instead of starting one of the mock's
            own; it must be started by its owner (the mock only adds and removes routes).
            Its routes match in the order they were added.
        client_id: with *client_secret*, the only credentials accepted; others get a 401
            refusal, like a wrong secret. Default: any credentials are accepted.
        client_secret: see *client_id*.
        expires_in: the ``expires_in`` of tokens issued by default, in seconds.
        token_prefix: how the tokens it makes up begin (a serial number and random
            characters follow): a mark to look for, say, in log records that must hold no
            token.
        assert_all_used: at a clean exit, fail (``AssertionError``) if queued answers were
            never used: a test that queued them expected them to be asked for.

    Raises:
        ConfigurationError: an argument is invalid.
        ImportError: respx is not installed (install ``payme-auth[testing]``).
    """

    def __init__(
        self,
        environments: Environment | Iterable[Environment] | None = None,
        *,
        router: respx.Router | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        expires_in: int = DEFAULT_EXPIRES_IN,
        token_prefix: str = "mock-token-",  # noqa: S107 - a mark, not a password
        assert_all_used: bool = True,
    ) -> None:
        try:
            import respx
        except ImportError as exc:
            raise ImportError(
                "PaymeTokenMock needs respx: install payme-auth[testing]", name="respx"
            ) from exc
        given: object = router
        if given is not None and not isinstance(given, respx.Router):
            raise ConfigurationError(f"router must be a respx router, not {router!r}")
        if client_id is None and client_secret is None:
            self._credentials: tuple[str, str] | None = None
        elif client_id is None or client_secret is None:
            raise ConfigurationError("give client_id and client_secret together, or neither")
        else:
            self._credentials = (
                check_text("client_id", client_id),
                check_text("client_secret", client_secret),
            )
        self._expires_in = check_int("expires_in", expires_in, 1)
        self._token_prefix = check_text("token_prefix", token_prefix)
        self.environments = _environments(environments)
        """The environments whose token URL is mocked."""
        self._token_urls = tuple(dict.fromkeys(env.token_url for env in self.environments))
        self._assert_all_used = assert_all_used
        self._given_router = router
        self._router: respx.Router | None = None
        self._own_router: respx.MockRouter | None = None
        self._route_names: list[str] = []
        self._lock = threading.Lock()
        self._queue: list[_Plan] = []
        self._calls: list[TokenCall] = []
        self._gate: _Gate | None = None
        self._arrived = 0
        self._held = 0

    def __repr__(self) -> str:
        names = ", ".join(env.name for env in self.environments)
        return (
            f"PaymeTokenMock(environments=[{names}], calls={self.call_count}, "
            f"pending={self.pending}, active={self.active})"
        )

    # -- queueing answers --------------------------------------------------------------------

    def issue(
        self,
        *,
        expires_in: int | str | _Default | None = _DEFAULT,
        scope: str | Iterable[str] | None = None,
        token: str | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> PaymeTokenMock:
        """Queue a token answer of the documented shape.

        Args:
            expires_in: its ``expires_in``: seconds as an int or as a string of digits
                (Pay-me documents both), or ``None`` to leave the field out. Default: the
                mock's *expires_in*.
            scope: the granted scope, a string or a list; default: the scope requested.
            token: the ``access_token``; default: a new random one.
            times: how many requests get this answer (each a different token unless
                *token* is given).
            delay: seconds to wait before answering.

        Returns the mock, so that calls chain: ``mock.fail().issue(expires_in=60)``.
        """
        if token is not None:
            check_text("token", token)
        expires = expires_in if expires_in is _DEFAULT else check_expires_in(expires_in)
        plan = _Plan(
            kind="token",
            delay=check_delay(delay),
            expires_in=expires,
            scope=check_scope(scope),
            token=token,
        )
        return self._enqueue(plan, times)

    def refuse(
        self,
        status: int = 401,
        *,
        code: str = "01",
        message: str = "client_id or client_secret is not valid",
        times: int = 1,
        delay: float = 0.0,
    ) -> PaymeTokenMock:
        """Queue a refusal: an HTTP 4xx with Pay-me's ``authorization.meta.status`` envelope.

        PaymeAuth raises :class:`~payme_auth.InvalidCredentialsError` for 401,
        :class:`~payme_auth.InsufficientScopeError` for 403 and
        :class:`~payme_auth.TokenRefusedError` for the others, and never retries them.
        408, 425 and 429 are transient: queue them with :meth:`fail`.
        """
        check_int("a refusal's status", status, 400, 499)
        if status in _TRANSIENT:
            raise ConfigurationError(f"{status} is transient (it is retried): use fail({status})")
        plan = _refusal(
            status, check_text("code", code), check_text("message", message, empty=True)
        )
        return self._enqueue(attrs.evolve(plan, delay=check_delay(delay)), times)

    def fail(
        self,
        status: int = 503,
        *,
        retry_after: float | str | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> PaymeTokenMock:
        """Queue a transient failure: HTTP 5xx, 408, 425 or 429, which PaymeAuth retries.

        Args:
            status: the HTTP status.
            retry_after: a ``Retry-After`` header: seconds, or the header's text as is (an
                HTTP date, or something unreadable to test that it is ignored).
            times: how many requests get it (``times=3`` exhausts PaymeAuth's default
                attempts: :class:`~payme_auth.TokenEndpointUnavailableError`).
            delay: seconds to wait before answering.
        """
        check_int("a failure's status", status, 100, 599)
        if not (status >= 500 or status in _TRANSIENT):
            raise ConfigurationError(
                f"a failure's status is 408, 425, 429 or 5xx, not {status}: use refuse() for a 4xx"
            )
        headers: dict[str, str] = {}
        if isinstance(retry_after, str):
            headers["retry-after"] = retry_after
        elif retry_after is not None:
            headers["retry-after"] = f"{check_delay(retry_after, 'retry_after'):g}"
        plan = _json_plan("failure", status, {"message": _phrase(status)}, **headers)
        return self._enqueue(attrs.evolve(plan, delay=check_delay(delay)), times)

    def respond(
        self,
        response: httpx.Response | Callable[[httpx.Request], httpx.Response],
        *,
        times: int = 1,
        delay: float = 0.0,
    ) -> PaymeTokenMock:
        """Queue an answer of your own making: any status, headers and body.

        For example, a 200 whose body is not a token::

            mock.respond(httpx.Response(200, json={"success": False}))

        Or a function that builds the answer from the request, called once for each request
        it serves: for a streamed body, or one that depends on what was sent::

            async def chunks():
                yield b'{"access_token": "'
                yield b"x" * 1_000_000

            mock.respond(lambda request: httpx.Response(200, content=chunks()))

        The function must return an :class:`httpx.Response`; anything else, or an exception
        it raises, reaches the client as an error of its request.

        Raises:
            ConfigurationError: *response* is neither an :class:`httpx.Response` with its
                body in memory nor a callable.
        """
        if callable(response) and not isinstance(response, httpx.Response):
            plan = _Plan(kind="response", delay=check_delay(delay), build=response)
            return self._enqueue(plan, times)
        if not isinstance(response, httpx.Response):
            raise ConfigurationError(
                f"response must be an httpx.Response or a function, not {response!r}"
            )
        try:
            content = response.read()
        except (httpx.StreamError, RuntimeError) as exc:
            raise ConfigurationError(
                "response must have its body in memory, not streamed: pass a function that "
                "builds it for each request"
            ) from exc
        plan = _Plan(
            kind="response",
            delay=check_delay(delay),
            status=response.status_code,
            headers=tuple(response.headers.multi_items()),
            content=content,
        )
        return self._enqueue(plan, times)

    def disconnect(self, *, times: int = 1, delay: float = 0.0) -> PaymeTokenMock:
        """Queue a connection failure: the client gets :class:`httpx.ConnectError` (retried)."""
        return self._enqueue(_Plan(kind="disconnect", delay=check_delay(delay)), times)

    def hang(self, *, times: int = 1) -> PaymeTokenMock:
        """Queue a request that is never answered: only the client's timeout ends it.

        PaymeAuth gives up an attempt after its ``timeout`` and retries; give it a short one
        (``PaymeAuth(..., timeout=0.1)``) to keep the test fast.
        """
        return self._enqueue(_Plan(kind="hang"), times)

    # -- holding requests --------------------------------------------------------------------

    def hold(self) -> PaymeTokenMock:
        """Hold the requests that arrive from now on, unanswered, until :meth:`release`.

        A held request is counted in :attr:`arrived` and :attr:`held` at once; it takes its
        answer (the next queued one, or a token) and enters :attr:`calls` only when released.
        One that its client gives up while held (a timeout, a cancellation) gets neither.
        Holding while already holding changes nothing. For async clients only::

            mock.hold()
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(auth.get_token)
                while mock.held == 0:  # the one token request is in
                    await anyio.sleep(0.01)
                mock.release()
            assert mock.arrived == 1

        Returns the mock, so that calls chain: ``mock.hold().refuse(401)``.
        """
        with self._lock:
            if self._gate is None:
                self._gate = _Gate()
        return self

    def release(self) -> None:
        """Answer the held requests, and let those that arrive later through at once.

        Call it from the event loop the requests are sent on.

        Raises:
            RuntimeError: the mock is not holding requests (no :meth:`hold` since the last
                release).
        """
        with self._lock:
            gate, self._gate = self._gate, None
        if gate is None:
            raise RuntimeError("release() without hold(): no request is being held")
        gate.open()

    @property
    def held(self) -> int:
        """How many requests are waiting at the gate of :meth:`hold` now."""
        with self._lock:
            return self._held

    @property
    def arrived(self) -> int:
        """The number of requests that arrived, counting those in :attr:`calls`, those
        :attr:`held` now, and those whose client gave up while they were held."""
        with self._lock:
            return self._arrived

    def _enqueue(self, plan: _Plan, times: int) -> PaymeTokenMock:
        count = check_times(times)
        with self._lock:
            self._queue.extend([plan] * count)
        return self

    # -- what was asked ----------------------------------------------------------------------

    @property
    def calls(self) -> tuple[TokenCall, ...]:
        """Every request received, oldest first."""
        with self._lock:
            return tuple(self._calls)

    @property
    def requests(self) -> tuple[Mapping[str, Any], ...]:
        """The parsed JSON bodies of the requests received (those that were JSON objects)."""
        return tuple(call.body for call in self.calls if call.body is not None)

    @property
    def call_count(self) -> int:
        """How many requests were received."""
        with self._lock:
            return len(self._calls)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The access tokens issued, oldest first."""
        return tuple(call.token for call in self.calls if call.token is not None)

    @property
    def pending(self) -> int:
        """How many queued answers are still waiting for a request."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Drop the queued answers and forget the requests received (held ones still wait)."""
        with self._lock:
            self._queue.clear()
            self._calls.clear()
            self._arrived = self._held

    # -- life cycle --------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the mock's routes are in place (between :meth:`start` and :meth:`stop`)."""
        return self._router is not None

    def start(self) -> None:
        """Add the routes (and start the mock's own router, unless one was given).

        Raises:
            RuntimeError: the mock is already started.
        """
        import respx

        if self._router is not None:
            raise RuntimeError("this PaymeTokenMock is already started")
        own = None
        router = self._given_router
        if router is None:
            router = own = respx.MockRouter(assert_all_mocked=True, assert_all_called=False)
        names = [
            f"payme-token-mock-{id(self):x}-{number}" for number in range(len(self._token_urls))
        ]
        for name, url in zip(names, self._token_urls, strict=True):
            router.post(url=url, name=name).side_effect = self._answer
        if own is not None:
            own.start()
        self._router, self._own_router, self._route_names = router, own, names

    def stop(self, *, check: bool = True) -> None:
        """Remove the routes (stopping the mock's own router); a second call does nothing.

        With *check* and *assert_all_used*, raise ``AssertionError`` if queued answers were
        never used (they are dropped either way).
        """
        router, own = self._router, self._own_router
        self._router = self._own_router = None
        if router is None:
            return
        if own is not None:
            own.stop(quiet=True)
        else:
            for name in self._route_names:
                router.pop(name, None)
        with self._lock:
            unused, self._queue = self._queue, []
        if check and self._assert_all_used and unused:
            kinds = ", ".join(plan.kind for plan in unused)
            raise AssertionError(
                f"PaymeTokenMock: {len(unused)} queued answer(s) never asked for: {kinds}"
            )

    def __enter__(self) -> PaymeTokenMock:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(check=exc_type is None)

    # -- answering ---------------------------------------------------------------------------

    def _answer(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        """respx's side effect: wait at the gate if one is closed, then settle."""
        with self._lock:
            self._arrived += 1
            gate = self._gate
            if gate is not None:
                self._held += 1
        if gate is None:
            return self._settle(request)
        return self._settle_when_released(gate, request)

    async def _settle_when_released(self, gate: _Gate, request: httpx.Request) -> httpx.Response:
        try:
            await gate.wait()
        finally:
            with self._lock:
                self._held -= 1
        outcome = self._settle(request)
        return outcome if isinstance(outcome, httpx.Response) else await outcome

    def _settle(self, request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        """Decide, record, then answer (now or after a wait)."""
        try:
            parsed = json.loads(request.content)
        except (ValueError, httpx.RequestNotRead):  # not JSON, or a stream never read
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        with self._lock:
            plan = self._decide(body)
        # The test's own function runs outside the lock: it may read the mock.
        built = None if plan.build is None else _built(plan.build, request)
        with self._lock:
            token = self._token_for(plan)
            response = self._response_for(plan, body, token) if built is None else built
            status = None if response is None else response.status_code
            self._calls.append(
                TokenCall(
                    url=str(request.url),
                    body=body,
                    answer=plan.kind,
                    status=status,
                    token=token,
                    request=request,
                )
            )
        if plan.kind == "hang":
            return _never()
        if response is None:
            error = httpx.ConnectError("connection refused (PaymeTokenMock)", request=request)
            if plan.delay:
                return _later(plan.delay, error)
            raise error
        if plan.delay:
            return _later(plan.delay, response)
        return response

    def _decide(self, body: Mapping[str, Any] | None) -> _Plan:
        if body is None:
            return _refusal(400, "01", "the body must be a JSON object")
        sent = (body.get("client_id"), body.get("client_secret"))
        if self._credentials is not None and sent != self._credentials:
            return _refusal(401, "01", "client_id or client_secret is not valid")
        return self._queue.pop(0) if self._queue else _Plan(kind="token")

    def _token_for(self, plan: _Plan) -> str | None:
        if plan.kind != "token":
            return None
        return plan.token or f"{self._token_prefix}{next(_serial)}-{secrets.token_urlsafe(12)}"

    def _response_for(
        self, plan: _Plan, body: Mapping[str, Any] | None, token: str | None
    ) -> httpx.Response | None:
        if plan.kind in ("disconnect", "hang"):
            return None
        if plan.kind != "token":
            return httpx.Response(plan.status, headers=list(plan.headers), content=plan.content)
        expires_in = self._expires_in if plan.expires_in is _DEFAULT else plan.expires_in
        scope = plan.scope if plan.scope is not None else text_field(body, "scope") or ""
        fields: dict[str, object] = {"success": True, "access_token": token, "scope": scope}
        if expires_in is not None:
            fields["expires_in"] = expires_in
        fields["token_type"] = "Bearer"
        payload = _envelope("00", "Access Token creado", **fields)
        return httpx.Response(200, json=payload, headers=_NO_STORE)


class _Gate:
    """Where held requests wait: one anyio event per waiter, made in its own event loop."""

    def __init__(self) -> None:
        self._open = False
        self._events: list[anyio.Event] = []

    async def wait(self) -> None:
        if not self._open:
            event = anyio.Event()
            self._events.append(event)
            await event.wait()

    def open(self) -> None:
        self._open = True
        for event in self._events:
            event.set()


def _built(
    build: Callable[[httpx.Request], httpx.Response], request: httpx.Request
) -> httpx.Response:
    response = build(request)
    if not isinstance(response, httpx.Response):
        raise TypeError(f"a respond() function must return an httpx.Response, not {response!r}")
    return response


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _later(delay: float, outcome: httpx.Response | Exception) -> httpx.Response:
    await anyio.sleep(delay)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def _never() -> httpx.Response:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover
