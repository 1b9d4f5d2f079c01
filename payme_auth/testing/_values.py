"""The emulator's values: injected faults and counter snapshots."""

from __future__ import annotations

import http
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

__all__ = ["EmulatorStats", "Fault", "check_number"]


def check_number(*, integer: bool) -> Callable[[Any, Any, Any], None]:
    kinds = (int,) if integer else (int, float)

    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) not in kinds or not 0 <= value < math.inf:
            kind = "an int" if integer else "a finite number"
            raise ValueError(f"{attribute.name} must be {kind} >= 0, not {value!r}")

    return check


def _check_status(_instance: object, _attribute: object, value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        raise ValueError(f"a fault status must be an int from 200 to 599, not {value!r}")


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
    """

    status: int = attrs.field(default=503, validator=_check_status)
    body: bytes = attrs.field(default=attrs.Factory(_default_fault_body, takes_self=True))
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_headers, hash=False)
    delay: float = attrs.field(default=0.0, validator=check_number(integer=False))


@attrs.frozen(kw_only=True)
class EmulatorStats:
    """What a :class:`PaymeEmulator` has seen: a snapshot from :attr:`PaymeEmulator.stats`.

    Attributes:
        token_requests: every ``POST /token`` whose body was received.
        tokens_issued: tokens handed out.
        token_failures: ``POST /token`` answered without a token (refused, invalid, too
            large, or an injected fault).
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
