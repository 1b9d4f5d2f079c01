"""The test helpers' values: faults, counters, credentials, mock records, argument checks."""

from __future__ import annotations

import http
import json
import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal, TypedDict

import attrs
import httpx

from .._errors import ConfigurationError

__all__ = [
    "AnswerKind",
    "CredentialArguments",
    "Credentials",
    "EmulatorStats",
    "Fault",
    "TokenCall",
    "check_delay",
    "check_expires_in",
    "check_int",
    "check_number",
    "check_probability",
    "check_scope",
    "check_text",
    "check_times",
    "text_field",
]


def check_number(*, integer: bool) -> Callable[[Any, Any, Any], None]:
    kinds = (int,) if integer else (int, float)

    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) not in kinds or not 0 <= value < math.inf:
            kind = "an int" if integer else "a finite number"
            raise ValueError(f"{attribute.name} must be {kind} >= 0, not {value!r}")

    return check


def check_probability(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An attrs validator: *value* is an int or float from 0 to 1 (``bool`` is refused)."""
    if type(value) not in (int, float) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a number from 0 to 1, not {value!r}")


def _check_status(_instance: object, _attribute: object, value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        raise ValueError(f"a fault status must be an int from 200 to 599, not {value!r}")


def _check_reset(instance: Fault, _attribute: object, value: bool) -> None:
    if type(value) is not bool:
        raise ValueError(f"a fault's reset must be a bool, not {value!r}")
    # h11 frames 204 and 304 answers as empty: there would be nothing left to cut short.
    if value and (not instance.body or instance.status in (204, 304)):
        raise ValueError("a reset fault needs a non-empty body and a status that allows one")


def _default_fault_body(fault: Fault) -> bytes:
    try:
        phrase = http.HTTPStatus(fault.status).phrase
    except ValueError:
        phrase = "Error"
    return json.dumps({"message": phrase}).encode()


def _freeze_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    frozen = {str(name).lower(): str(value) for name, value in dict(headers).items()}
    frozen.pop("content-length", None)
    frozen.setdefault("content-type", "application/json")
    for name, value in frozen.items():
        (name + value).encode("latin-1")  # fail here, not while answering
    return MappingProxyType(frozen)


@attrs.frozen(kw_only=True)
class Fault:
    """An answer that :meth:`PaymeEmulator.inject` makes ``POST /token`` give instead of a token.

    Attributes:
        status: the HTTP status, 200 to 599 (a 200 with a bad body tests answer parsing).
        body: the raw body; by default ``{"message": "<reason phrase>"}``.
        headers: response headers, e.g. ``{"Retry-After": "1"}``; names are lower-cased and
            ``content-type`` is ``application/json`` unless given.
        delay: seconds to wait (after ``token_latency``) before answering.
        reset: break the connection mid-answer: send the status, the headers and a
            ``Content-Length`` for the whole body, then only the first half of the body,
            and never finish. Served by uvicorn, an httpx client gets
            :class:`httpx.RemoteProtocolError` (and uvicorn logs ``ASGI callable returned
            without completing response.`` on ``uvicorn.error``); in-process,
            :class:`httpx.ASGITransport` raises :class:`AssertionError` instead. Needs a
            non-empty body and a status other than 204 or 304.
    """

    status: int = attrs.field(default=503, validator=_check_status)
    body: bytes = attrs.field(default=attrs.Factory(_default_fault_body, takes_self=True))
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_headers, hash=False)
    delay: float = attrs.field(default=0.0, validator=check_number(integer=False))
    reset: bool = attrs.field(default=False, validator=_check_reset)


@attrs.frozen(kw_only=True)
class EmulatorStats:
    """What a :class:`PaymeEmulator` has seen: a snapshot from :attr:`PaymeEmulator.stats`.

    Attributes:
        token_requests: every ``POST /token`` whose body was received.
        tokens_issued: tokens handed out.
        token_failures: ``POST /token`` answered without a token (refused, invalid, too
            large, an injected fault, or a random failure from ``token_failure_rate``).
        api_requests: requests to a ``/charges`` route with its method.
        api_unauthorized: API requests answered 401.
        api_forbidden: API requests answered 403.
    """

    token_requests: int = 0
    tokens_issued: int = 0
    token_failures: int = 0
    api_requests: int = 0
    api_unauthorized: int = 0
    api_forbidden: int = 0


class CredentialArguments(TypedDict):
    """The keyword arguments :meth:`Credentials.as_kwargs` returns (typed for ``**``)."""

    client_id: str
    client_secret: str


@attrs.frozen(kw_only=True)
class Credentials:
    """A client id and secret to build a :class:`~payme_auth.PaymeAuth` with in tests.

    The secret is left out of ``repr``; pass both on with :meth:`as_kwargs`::

        auth = PaymeAuth(**credentials.as_kwargs(), environment=environment)

    Attributes:
        client_id: the client id.
        client_secret: the client secret.
    """

    client_id: str
    client_secret: str = attrs.field(repr=False)

    def as_kwargs(self) -> CredentialArguments:
        """``{"client_id": ..., "client_secret": ...}``, for ``PaymeAuth(**...)``."""
        return {"client_id": self.client_id, "client_secret": self.client_secret}


AnswerKind = Literal["token", "refusal", "failure", "response", "disconnect", "hang"]
"""What the mock did with a token request (:attr:`TokenCall.answer`)."""


def _mask(body: Mapping[str, Any] | None) -> str:
    if body is None or "client_secret" not in body:
        return repr(body)
    return repr({**body, "client_secret": "***"})


@attrs.frozen(kw_only=True)
class TokenCall:
    """One request the mock received, and what it answered.

    Attributes:
        url: the URL the request was sent to.
        body: the parsed JSON body as sent (``client_secret`` included, masked in
            ``repr``), or ``None`` when the body was not a JSON object.
        answer: what it got: ``"token"``, ``"refusal"`` (4xx), ``"failure"`` (a transient
            408, 425, 429 or 5xx), ``"response"`` (one given to
            :meth:`~payme_auth.testing.PaymeTokenMock.respond`),
            ``"disconnect"`` (a connection error) or ``"hang"`` (no answer).
        status: the HTTP status answered, or ``None`` for a disconnect or a hang.
        token: the access token issued, or ``None`` (not shown in ``repr``).
        request: the :class:`httpx.Request` itself (headers and all).
    """

    url: str
    body: Mapping[str, Any] | None = attrs.field(repr=_mask)
    answer: AnswerKind
    status: int | None
    token: str | None = attrs.field(repr=False)
    request: httpx.Request = attrs.field(repr=False, eq=False)

    @property
    def client_id(self) -> str | None:
        """The ``client_id`` sent, if the body had one."""
        return text_field(self.body, "client_id")

    @property
    def audience(self) -> str | None:
        """The ``audience`` sent, if the body had one."""
        return text_field(self.body, "audience")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes requested, in the order sent (empty if the body had none)."""
        scope = text_field(self.body, "scope")
        return tuple(scope.split()) if scope else ()


def text_field(body: Mapping[str, Any] | None, key: str) -> str | None:
    """The string at *key* in a request body, or ``None``."""
    value = None if body is None else body.get(key)
    return value if isinstance(value, str) else None


# Argument checks for PaymeTokenMock: every bad value is a ConfigurationError.


def check_times(times: object) -> int:
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ConfigurationError(f"times must be an int >= 1, not {times!r}")
    return times


def check_delay(delay: object, name: str = "delay") -> float:
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {delay!r}")
    if not math.isfinite(delay) or delay < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, not {delay!r}")
    return float(delay)


def check_expires_in(value: object) -> int | str | None:
    if value is None or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"expires_in must be an int >= 0, a string of digits or None, not {value!r}"
        )
    return value


def check_scope(scope: object) -> str | None:
    if scope is None:
        return None
    if isinstance(scope, str):
        return scope
    if isinstance(scope, Iterable) and all(isinstance(item, str) for item in scope):
        return " ".join(scope)
    raise ConfigurationError(f"scope must be a string, a list of strings or None, not {scope!r}")


def check_int(name: str, value: object, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        limit = f"from {low} to {high}" if math.isfinite(high) else f">= {low}"
        raise ConfigurationError(f"{name} must be an int {limit}, not {value!r}")
    return value


def check_text(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise ConfigurationError(f"{name} must be a{'' if empty else ' non-empty'} string")
    return value
