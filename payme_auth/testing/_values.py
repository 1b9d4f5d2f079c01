"""The emulator's values: injected faults and counter snapshots."""

from __future__ import annotations

import http
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["EmulatorStats", "Fault", "check_number", "check_probability"]


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
