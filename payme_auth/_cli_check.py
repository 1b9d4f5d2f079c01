"""``payme-auth check``: is the configuration right, and does Pay-me accept it?

Rules:
- Settings first (see ``_cli_settings``); with any problem there, nothing is sent. A proxy
  variable httpx cannot use is such a problem too.
- The token endpoint is then asked directly, one request at a time and never retried, so
  that what is wrong is seen as it is: the transport error (DNS, connection, TLS, timeout)
  or the HTTP answer, and its ``Date`` header, which the provider does not keep.
- HTTP 404 or 405 means the token URL is wrong, not the credentials: a configuration
  problem, naming where the URL came from.
- A refusal (HTTP 401 or 403) is taken apart: one request with ``create:token`` alone
  tells refused credentials from refused scopes, then one per other scope names each
  scope refused. A 400 that speaks of the audience is an audience mismatch.
- The local clock is compared with the answer's ``Date``; beyond :data:`MAX_CLOCK_SKEW`
  seconds it is a problem (TLS certificates and token times are judged by clocks).
- Every request is bounded by the timeout; at most :data:`MAX_SCOPE_PROBES` scopes are
  tried one by one.
"""

from __future__ import annotations

import datetime
import email.utils
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

import anyio
import attrs
import httpx

from ._cli import (
    EXIT_BAD_ANSWER,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Finding,
    is_wrong_url,
    wrong_url_text,
)
from ._cli_settings import Settings
from ._config import Scope, proxy_problem
from ._errors import (
    InsufficientScopeError,
    InvalidCredentialsError,
    TokenRefusedError,
    TokenResponseError,
)
from ._protocol import Failure, build_token_request, read_token_response
from ._reading import read_capped
from ._token import AccessToken

__all__ = [
    "MAX_CLOCK_SKEW",
    "MAX_SCOPE_PROBES",
    "clock_skew",
    "describe_skew",
    "describe_transport_error",
    "exit_code_of",
    "run_check",
    "write_findings",
]

MAX_CLOCK_SKEW = 30.0
"""Seconds the local clock may differ from the token server's before it is a problem."""

MAX_SCOPE_PROBES = 8
"""The most scopes tried one by one to find which were refused."""

_CREATE_TOKEN = Scope.CREATE_TOKEN.value


def clock_skew(date_header: str | None, local: float) -> float | None:
    """Seconds the server's clock is ahead of the local one (negative: behind).

    *date_header* is the answer's ``Date`` (an HTTP date); *local* is the local wall clock
    (seconds since the epoch) when the answer came. ``None`` when there is no readable date.
    """
    if not date_header:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - local


def describe_skew(skew: float | None, *, limit: float = MAX_CLOCK_SKEW) -> Finding:
    """The finding for a measured clock *skew* (see :func:`clock_skew`)."""
    if skew is None:
        return Finding.note("the answer had no readable Date header: the clock was not compared")
    # A Date has whole seconds, and servers refresh it about once a second.
    seconds = round(abs(skew))
    if abs(skew) <= limit:
        return Finding.ok(f"the local clock is within {max(seconds, 1)} s of the token server's")
    side = "behind" if skew > 0 else "ahead of"
    return Finding.problem(
        f"the local clock is {seconds} s {side} the token server's (more than {limit:g} s): "
        "set the time right (NTP)",
        EXIT_FAILURE,
    )


def _causes(error: BaseException) -> Iterator[BaseException]:
    """*error*, its causes and contexts, and the members of exception groups among them."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        members = getattr(current, "exceptions", None)
        if isinstance(members, Sequence):
            pending.extend(m for m in members if isinstance(m, BaseException))
        pending.extend(x for x in (current.__cause__, current.__context__) if x is not None)


def describe_transport_error(error: BaseException, url: str, timeout: float) -> str:
    """Say in plain words why *url* could not be reached, from the error httpx raised."""
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    where = f"{parsed.host}:{port}"
    causes = list(_causes(error))
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return f"the host name {parsed.host} cannot be resolved (DNS): {cause.strerror}"
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = (
                getattr(cause, "verify_message", None)
                or getattr(cause, "reason", None)
                or cause.strerror
                or str(cause)
            )
            return f"the TLS certificate of {where} is not trusted: {reason}"
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or cause.strerror or str(cause)
            return (
                f"the TLS handshake with {where} failed ({reason}): is it serving https "
                "on that port?"
            )
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return f"the connection to {where} was refused: nothing listens on that port"
    if isinstance(error, httpx.ConnectTimeout):
        return f"connecting to {where} timed out after {timeout:g} s"
    if isinstance(error, httpx.TimeoutException):
        return f"{where} accepted the connection but did not answer within {timeout:g} s"
    if isinstance(error, httpx.RemoteProtocolError):
        return f"{where} broke off the answer or did not speak HTTP: {error}"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{where} cannot be reached: {cause.strerror}"
    text = str(error)
    return f"{where} cannot be reached: {type(error).__name__}{': ' + text if text else ''}"


@attrs.frozen(kw_only=True)
class _Probe:
    """One token request and what came of it."""

    outcome: AccessToken | Failure | None
    unreachable: str | None = None
    status: int | None = None
    date: str | None = None
    received_at: float = 0.0
    elapsed: float = 0.0


async def _probe(
    client: httpx.AsyncClient, settings: Settings, scopes: Sequence[str], limit: float
) -> _Probe:
    request = build_token_request(
        settings.environment, settings.client_id, settings.client_secret, scopes
    )
    started = time.monotonic()
    try:
        with anyio.fail_after(limit):
            async with client.stream(
                "POST",
                request.url,
                headers=request.headers,
                content=request.content,
                follow_redirects=False,
            ) as response:
                body, truncated = await read_capped(response)
    except TimeoutError:
        return _Probe(
            outcome=None,
            unreachable=f"{request.url} did not answer completely within {limit:g} s",
        )
    except httpx.TransportError as exc:
        return _Probe(outcome=None, unreachable=describe_transport_error(exc, request.url, limit))
    except httpx.HTTPError as exc:  # an undecodable body and the like
        error = TokenResponseError(f"the token answer could not be read ({type(exc).__name__})")
        return _Probe(outcome=Failure(error=error), elapsed=time.monotonic() - started)
    received_at = time.time()
    outcome = read_token_response(
        response.status_code,
        response.headers,
        body,
        truncated=truncated,
        requested_scopes=scopes,
        obtained_at=started,
        now=received_at,
        secrets=(settings.client_secret,),
    )
    return _Probe(
        outcome=outcome,
        status=response.status_code,
        date=response.headers.get("date"),
        received_at=received_at,
        elapsed=time.monotonic() - started,
    )


def _granted(token: AccessToken, requested: Sequence[str]) -> Finding:
    missing = [scope for scope in requested if scope not in token.scope]
    granted = " ".join(sorted(token.scope)) or "(none)"
    if missing:
        return Finding.problem(
            f"scopes requested but not granted: {' '.join(missing)} (granted: {granted})",
            EXIT_FAILURE,
        )
    return Finding.ok(f"scopes granted: {granted}")


async def _diagnose_refusal(
    client: httpx.AsyncClient, settings: Settings, first: TokenRefusedError, limit: float
) -> list[Finding]:
    """Tell refused credentials from refused scopes, by asking for fewer scopes."""
    others = [scope for scope in settings.scopes if scope != _CREATE_TOKEN]
    if not others:
        return [Finding.problem(f"credentials refused: {first}", EXIT_REFUSED)]
    alone = await _probe(client, settings, (_CREATE_TOKEN,), limit)
    if not isinstance(alone.outcome, AccessToken):
        if isinstance(alone.outcome, Failure) and isinstance(
            alone.outcome.error, (InvalidCredentialsError, InsufficientScopeError)
        ):
            return [
                Finding.problem(
                    f"credentials refused (even for {_CREATE_TOKEN} alone): {first}",
                    EXIT_REFUSED,
                )
            ]
        return [Finding.problem(f"the token request was refused: {first}", EXIT_REFUSED)]
    findings = [Finding.ok(f"credentials accepted (for {_CREATE_TOKEN} alone)")]
    refused: list[str] = []
    for scope in others[:MAX_SCOPE_PROBES]:
        tried = await _probe(client, settings, (_CREATE_TOKEN, scope), limit)
        if isinstance(tried.outcome, Failure) and isinstance(
            tried.outcome.error, TokenRefusedError
        ):
            refused.append(scope)
    untried = others[MAX_SCOPE_PROBES:]
    if refused:
        text = f"scope refused for this client: {' '.join(refused)}"
    else:
        text = "the scopes were refused together, though each was granted alone"
    if untried:
        text += f" (not tried one by one: {' '.join(untried)})"
    findings.append(Finding.problem(f"{text} - {first}", EXIT_REFUSED))
    return findings


def _answer_findings(probe: _Probe, settings: Settings) -> tuple[list[Finding], bool]:
    """Findings for the first answer, and whether it was a refusal worth taking apart."""
    outcome = probe.outcome
    if isinstance(outcome, AccessToken):
        return [
            Finding.ok(
                f"credentials accepted: token {outcome.fingerprint} "
                f"(expires in {outcome.expires_in} s)"
            ),
            _granted(outcome, settings.scopes),
        ], False
    assert isinstance(outcome, Failure)  # noqa: S101 - reached only with an answer
    error = outcome.error
    if outcome.retryable:
        return [Finding.problem(f"the token endpoint is unavailable: {error}", EXIT_UNAVAILABLE)], (
            False
        )
    if isinstance(error, (InvalidCredentialsError, InsufficientScopeError)):
        return [], True
    if is_wrong_url(error) and probe.status is not None:
        text = wrong_url_text(settings.environment.token_url, probe.status, settings.url_fix)
        return [Finding.problem(text, EXIT_USAGE)], False
    if isinstance(error, TokenRefusedError):
        if "audience" in (error.detail or "").lower():
            return [
                Finding.problem(
                    f"audience {settings.environment.audience} refused by the token endpoint: "
                    f"{error}",
                    EXIT_REFUSED,
                )
            ], False
        return [Finding.problem(f"the token request was refused: {error}", EXIT_REFUSED)], False
    return [Finding.problem(f"the token answer is unusable: {error}", EXIT_BAD_ANSWER)], False


async def run_check(
    settings: Settings,
    *,
    limit: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Finding]:
    """Ask the token endpoint for a token with *settings*; return what was found.

    Each request may take up to *limit* seconds. *transport* replaces the network (tests).
    """
    url = settings.environment.token_url
    problem = proxy_problem()
    if problem is not None:  # the token fetch would fail the same way: nothing is sent
        return [
            Finding.problem(
                f"proxy setting unusable: {problem}; fix or unset it (token requests use "
                "the proxies of the environment, as httpx does)",
                EXIT_FAILURE,
            )
        ]
    async with httpx.AsyncClient(timeout=limit, transport=transport) as client:
        first = await _probe(client, settings, settings.scopes, limit)
        if first.outcome is None:
            return [
                Finding.problem(
                    f"the token URL is unreachable: {first.unreachable}", EXIT_UNAVAILABLE
                )
            ]
        status = f" (HTTP {first.status})" if first.status is not None else ""
        findings = [
            Finding.ok(f"the token URL {url} answered{status} in {first.elapsed * 1000:.0f} ms"),
            describe_skew(clock_skew(first.date, first.received_at)),
        ]
        more, refused = _answer_findings(first, settings)
        findings.extend(more)
        if refused:
            assert isinstance(first.outcome, Failure)  # noqa: S101 - a refusal has one
            error = first.outcome.error
            assert isinstance(error, TokenRefusedError)  # noqa: S101 - classified above
            findings.extend(await _diagnose_refusal(client, settings, error, limit))
    return findings


def exit_code_of(findings: Sequence[Finding]) -> int:
    """The exit code for *findings*: that of the first problem, or 0."""
    for finding in findings:
        if finding.is_problem:
            return finding.exit_code
    return EXIT_OK


def write_findings(findings: Sequence[Finding], out: TextIO) -> int:
    """Write *findings* and a summary line to *out*; return the exit code."""
    for finding in findings:
        out.write(finding.line() + "\n")
    problems = sum(finding.is_problem for finding in findings)
    warnings = sum(finding.is_warning for finding in findings)
    checked = sum(finding.mark == "ok" for finding in findings)
    also = f", {warnings} warning{'s' if warnings > 1 else ''}" if warnings else ""
    if problems:
        out.write(f"summary: {problems} problem{'s' if problems > 1 else ''} found{also}\n")
    else:
        out.write(f"summary: all {checked} checks passed{also}\n")
    return exit_code_of(findings)
