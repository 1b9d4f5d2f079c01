"""Pay-me's token protocol, with no I/O: requests out, answers in, decisions back.

Rules:
- Nothing here awaits, sleeps, reads a clock, an environment variable or a random source:
  times and random draws are arguments, so every rule is tested with plain values.
- The request is exactly the documented one: a JSON body with the six fields ``action``,
  ``grant_type``, ``audience``, ``client_id``, ``client_secret`` and ``scope``, and the
  headers ``Content-Type: application/json`` and ``ALG-API-VERSION``.
- Answers are read tolerantly only where Pay-me's own documents disagree (``expires_in`` as
  a numeric string, ``success`` as ``"true"``) and strictly everywhere else.
- A missing ``expires_in`` (the 200 schema does not require it) means the token is assumed
  to live ``assumed_expires_in`` seconds (five minutes by default), a deliberately short
  guess that keeps renewals frequent; with ``assumed_expires_in=None`` it is an error.
- Failures are classified once, here: a refusal (4xx) is final, an overloaded or unreachable
  endpoint (408, 429, 5xx, transport errors) is worth another attempt after a backoff.
- Text that comes from the server is shortened, stripped of control characters and scrubbed
  of the client secret and of the answer's token before it reaches an exception: in every
  spelling a server may echo them in (see :func:`spellings`), and inside any base64 run.
- An error carries no traceback out of here: the frames that raised it hold the answer,
  which may echo the secret, and error trackers record the locals of every frame.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._config import Environment
from ._errors import (
    InsufficientScopeError,
    InvalidCredentialsError,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from ._token import AccessToken

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Failure",
    "TokenRequest",
    "build_token_request",
    "parse_retry_after",
    "read_token_response",
    "spellings",
]

MAX_RESPONSE_BYTES = 256 * 1024
"""Token answers larger than this are not read further (a real one is about 1 KiB)."""

MAX_EXPIRES_IN = 366 * 24 * 3600
"""The longest lifetime believed; a larger ``expires_in`` is a broken answer."""

MAX_TOKEN_LENGTH = 16 * 1024
_DETAIL_LENGTH = 200
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_DIGITS = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_RETRYABLE_STATUS = frozenset({408, 425, 429})
_URL_SAFE = str.maketrans("-_", "+/")
_HIDDEN = "***"


@attrs.frozen(kw_only=True)
class TokenRequest:
    """A token request ready to send. Its body holds the client secret: never log it."""

    url: str
    headers: Mapping[str, str]
    content: bytes = attrs.field(repr=False)


def build_token_request(
    environment: Environment, client_id: str, client_secret: str, scopes: Iterable[str]
) -> TokenRequest:
    """Build Pay-me's documented ``client_credentials`` token request."""
    body = {
        "action": "authorize",
        "grant_type": "client_credentials",
        "audience": environment.audience,
        "client_id": client_id,
        "client_secret": client_secret,
        "scope": " ".join(scopes),
    }
    return TokenRequest(
        url=environment.token_url,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            # A token answer is about a kilobyte: compression buys nothing, and an
            # uncompressed body is what the size limit measures.
            "Accept-Encoding": "identity",
            "ALG-API-VERSION": environment.api_version,
        },
        content=json.dumps(body, separators=(",", ":")).encode(),
    )


@attrs.frozen(kw_only=True)
class Failure:
    """A token answer that carried no token.

    Attributes:
        error: the error to raise if this is the last word.
        retryable: whether another attempt may succeed.
        retry_after: the server's ``Retry-After`` in seconds, if any.
    """

    error: TokenError
    retryable: bool = False
    retry_after: float | None = None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Read a ``Retry-After`` header (seconds or an HTTP date) as seconds from *now*.

    *now* is the wall clock (seconds since the epoch), used only for the date form.
    An unreadable value is ignored (``None``).
    """
    if value is None:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about local time
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def spellings(secret: str) -> frozenset[str]:
    """The ways *secret* may come back in a server's text.

    As it is; JSON-escaped with and without ``ensure_ascii``, with ``/`` escaped as ``\\/``,
    and escaped twice; its UTF-8 read as Latin-1; and each of these URL-encoded (``%XX``,
    with ``/`` kept or not, and form style).
    Base64 is caught otherwise: :func:`clean_text` decodes every base64 run it finds.
    """
    as_json = json.dumps(secret)[1:-1]
    escaped = {
        secret,
        as_json,
        as_json.replace("/", "\\/"),
        json.dumps(as_json)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.encode().decode("latin-1"),
    }
    quote, plus = urllib.parse.quote, urllib.parse.quote_plus
    quoted = {q for form in escaped for q in (quote(form, safe=""), quote(form), plus(form))}
    return frozenset(form for form in escaped | quoted if form)


def _hides(run: str, needles: Iterable[bytes]) -> bool:
    """Whether the base64 text *run*, read from any of its first four places, holds a needle."""
    text = run.rstrip("=").translate(_URL_SAFE)
    for start in range(4):
        part = text[start:]
        part = part[: len(part) - (len(part) % 4 == 1)]
        try:
            decoded = base64.b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            continue
        if any(needle in decoded for needle in needles):
            return True
    return False


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every spelling of every secret in *text* (control characters already gone)."""
    raw = {form for secret in secrets if secret for form in spellings(secret)}
    if not raw:
        return text
    # Longest first, so that no shorter spelling cuts a longer one in two; case-blind, for
    # hexadecimal escapes (\u00F1, %C3%B1) in either case.
    forms = sorted({_CONTROL.sub(" ", form) for form in raw}, key=len, reverse=True)
    text = re.sub("|".join(map(re.escape, forms)), _HIDDEN, text, flags=re.IGNORECASE)
    needles = [form.encode() for form in raw]
    # n bytes take at least 4n/3 base64 characters: shorter runs cannot hide a needle.
    shortest = max(2, -(-4 * min(map(len, needles)) // 3))
    runs = re.compile(f"[A-Za-z0-9+/_-]{{{shortest},}}=*")
    return runs.sub(
        lambda match: _HIDDEN if _hides(match.group(), needles) else match.group(), text
    )


def clean_text(text: object, secrets: Iterable[str] = ()) -> str | None:
    """Make server text safe to show: a short single line with no secret in it."""
    if not isinstance(text, (str, int, float)) or isinstance(text, bool):
        return None
    # Control characters first: a secret with a space in it must not hide behind a tab.
    cleaned = scrub(_CONTROL.sub(" ", str(text)), secrets).strip()
    if len(cleaned) > _DETAIL_LENGTH:
        cleaned = cleaned[: _DETAIL_LENGTH - 1] + "…"
    return cleaned or None


def _pay_me_status(data: Mapping[str, Any]) -> tuple[object, object]:
    """Find Pay-me's ``<section>.meta.status`` code and first message, wherever it is."""
    sections = [data, *(value for value in data.values() if isinstance(value, Mapping))]
    for section in sections:
        meta = section.get("meta")
        status = meta.get("status") if isinstance(meta, Mapping) else None
        if isinstance(status, Mapping):
            message: object = status.get("message")
            messages = status.get("message_ilgn")
            if isinstance(messages, list) and messages and isinstance(messages[0], Mapping):
                message = messages[0].get("value")
            return status.get("code"), message
    return None, None


@attrs.frozen(kw_only=True)
class _Details:
    code: str | None = None
    error: str | None = None
    detail: str | None = None


def _details(data: object, secrets: Iterable[str]) -> _Details:
    if not isinstance(data, Mapping):
        return _Details()
    secrets = tuple(secrets)
    code, message = _pay_me_status(data)
    detail = (
        clean_text(message, secrets)
        or clean_text(data.get("error_description"), secrets)
        or clean_text(data.get("message"), secrets)
    )
    return _Details(
        code=clean_text(code, secrets),
        error=clean_text(data.get("error"), secrets),
        detail=detail,
    )


_NOT_JSON = object()


def _decode(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _refusal(status: int, data: object, secrets: Iterable[str]) -> Failure:
    found = _details(data, secrets)
    kind: type[TokenRefusedError]
    if status == 401:
        kind, message = (
            InvalidCredentialsError,
            ("Pay-me refused the client credentials or the requested scopes"),
        )
    elif status == 403:
        kind, message = InsufficientScopeError, "Pay-me refused the requested scopes"
    else:
        kind, message = TokenRefusedError, "Pay-me rejected the token request"
    return Failure(
        error=kind(
            message,
            status_code=status,
            code=found.code,
            error=found.error,
            detail=found.detail,
        )
    )


def _failure_for_status(
    status: int,
    headers: Mapping[str, str],
    data: object,
    *,
    now: float,
    secrets: Iterable[str],
) -> Failure:
    if status in _RETRYABLE_STATUS or 500 <= status <= 599:
        found = _details(data, secrets)
        return Failure(
            error=TokenError(
                f"it answered HTTP {status}",
                status_code=status,
                code=found.code,
                error=found.error,
                detail=found.detail,
            ),
            retryable=True,
            retry_after=parse_retry_after(headers.get("retry-after"), now=now),
        )
    if 400 <= status <= 499:
        return _refusal(status, data, secrets)
    if 300 <= status <= 399:
        where = clean_text(headers.get("location"), secrets) or "elsewhere"
        return Failure(
            error=TokenResponseError(
                f"the token endpoint redirected (HTTP {status}) to {where}: check the token URL",
                status_code=status,
            )
        )
    return Failure(
        error=TokenResponseError(f"the token endpoint answered HTTP {status}", status_code=status)
    )


def _expires_in(value: object, assumed: int | None, status: int) -> int:
    if value is None:
        if assumed is None:
            raise TokenResponseError("the token answer has no expires_in", status_code=status)
        return assumed
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        # Never hand int() thousands of digits: it refuses (and would be slow) past a limit.
        seconds = int(digits) if len(digits) <= len(str(MAX_EXPIRES_IN)) else MAX_EXPIRES_IN + 1
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        raise TokenResponseError(
            f"the token answer's expires_in is not a whole number of seconds: "
            f"{type(value).__name__}",
            status_code=status,
        )
    if not 1 <= seconds <= MAX_EXPIRES_IN:
        raise TokenResponseError(
            f"the token answer's expires_in is out of range: {seconds}", status_code=status
        )
    return seconds


def _token_from(
    data: Mapping[str, Any],
    *,
    status: int,
    requested_scopes: Iterable[str],
    obtained_at: float,
    assumed_expires_in: int | None,
    secrets: Iterable[str],
) -> AccessToken:
    success = data.get("success", True)
    if success is False or success == "false":
        found = _details(data, secrets)
        raise TokenResponseError(
            "the token endpoint answered success=false",
            status_code=status,
            code=found.code,
            error=found.error,
            detail=found.detail,
        )
    if success is not True and success != "true":
        raise TokenResponseError(
            "the token answer's success field is neither true nor false", status_code=status
        )
    raw_code, _ = _pay_me_status(data)
    if raw_code is not None and (not isinstance(raw_code, str) or raw_code.strip() != "00"):
        found = _details(data, secrets)
        raise TokenResponseError(
            "the token answer reports a non-success status",
            status_code=status,
            code=found.code,
            detail=found.detail,
        )
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenResponseError("the token answer has no access_token", status_code=status)
    if len(value) > MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(value):
        raise TokenResponseError(
            "the token answer's access_token is not a valid header value", status_code=status
        )
    token_type = data.get("token_type")
    if token_type is not None and (
        not isinstance(token_type, str) or token_type.lower() != "bearer"
    ):
        raise TokenResponseError(
            f"the token type is {clean_text(token_type, secrets)!r}, not Bearer",
            status_code=status,
        )
    scope = data.get("scope")
    if scope is None:
        granted = frozenset(requested_scopes)
    elif isinstance(scope, str):
        granted = frozenset(scope.split())
    else:
        raise TokenResponseError("the token answer's scope is not a string", status_code=status)
    return AccessToken(
        value=value,
        token_type="Bearer",
        scope=granted,
        expires_in=_expires_in(data.get("expires_in"), assumed_expires_in, status),
        obtained_at=obtained_at,
    )


def read_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    truncated: bool = False,
    requested_scopes: Iterable[str],
    obtained_at: float,
    now: float,
    assumed_expires_in: int | None = 300,
    secrets: Iterable[str] = (),
) -> AccessToken | Failure:
    """Turn the token endpoint's answer into a token, or a classified :class:`Failure`.

    Args:
        status: the HTTP status.
        headers: the response headers (case-insensitive mapping, such as ``httpx.Headers``).
        body: the body, at most :data:`MAX_RESPONSE_BYTES` of it.
        truncated: whether the body was longer than what was read.
        requested_scopes: what was asked for (the granted scopes when the answer is silent).
        obtained_at: the monotonic clock when the request was sent.
        now: the wall clock, to read a ``Retry-After`` date.
        assumed_expires_in: the lifetime assumed when ``expires_in`` is missing, or ``None``
            to treat that as an error.
        secrets: strings that must not appear in error messages, in any spelling; the
            answer's own ``access_token`` is added to them.
    """
    data = _decode(body)
    token = data.get("access_token") if isinstance(data, Mapping) else None
    secrets = (*secrets, token) if isinstance(token, str) and token else tuple(secrets)
    if not 200 <= status <= 299:
        return _failure_for_status(status, headers, data, now=now, secrets=secrets)
    if truncated:
        return Failure(
            error=TokenResponseError(
                f"the token answer is larger than {MAX_RESPONSE_BYTES} bytes", status_code=status
            )
        )
    if not isinstance(data, Mapping):
        what = "not JSON" if data is _NOT_JSON else "not a JSON object"
        return Failure(error=TokenResponseError(f"the token answer is {what}", status_code=status))
    try:
        return _token_from(
            data,
            status=status,
            requested_scopes=requested_scopes,
            obtained_at=obtained_at,
            assumed_expires_in=assumed_expires_in,
            secrets=secrets,
        )
    except TokenResponseError as error:
        # Its traceback's frames hold the answer (see the rules above).
        return Failure(error=error.with_traceback(None))
