"""``payme-auth token``: get one access token and tell a person (or a script) about it.

Rules:
- Without ``--show-token`` the token itself is never written, only its fingerprint.
- ``--show-token`` alone writes the raw token and a newline, nothing else, so that
  ``$(payme-auth token --show-token)`` is exactly the token.
- Expiry is told as a UTC wall-clock time: the token's remaining life (on the monotonic
  clock it was measured with) added to the wall clock now.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any, TextIO

import attrs

from ._auth import PaymeAuth
from ._cli import format_expiry
from ._cli_settings import Settings
from ._policy import RetryPolicy
from ._token import AccessToken

__all__ = ["TokenOptions", "run_token", "summary"]


@attrs.frozen(kw_only=True)
class TokenOptions:
    """How ``token`` fetches and shows the token.

    Attributes:
        show_token: write the raw token (alone, or in the JSON summary with *as_json*).
        as_json: write a JSON summary instead of lines of text.
        timeout: seconds for one token request.
        attempts: how many token requests to make at most (transient failures are retried).
    """

    show_token: bool = False
    as_json: bool = False
    timeout: float = 10.0
    attempts: int = 3


def summary(
    settings: Settings, token: AccessToken, *, remaining: float, now: datetime.datetime
) -> dict[str, Any]:
    """The token's description, free of secrets: what ``--json`` prints (without the token)."""
    expires, _ = format_expiry(remaining, now)
    environment = settings.environment
    return {
        "environment": {
            "name": environment.name,
            "token_url": environment.token_url,
            "audience": environment.audience,
            "api_version": environment.api_version,
        },
        "client_id": settings.client_id,
        "token_type": token.token_type,
        "scopes": sorted(token.scope),
        "expires_in": token.expires_in,
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
        "remaining_seconds": max(0, int(remaining)),
        "fingerprint": token.fingerprint,
    }


def _text(described: dict[str, Any], remaining: float, now: datetime.datetime) -> str:
    environment = described["environment"]
    expires, delay = format_expiry(remaining, now)
    rows = [
        ("environment", environment["name"]),
        ("token URL", environment["token_url"]),
        ("audience", environment["audience"]),
        ("client id", described["client_id"]),
        ("scopes", " ".join(described["scopes"]) or "(none)"),
        ("expires", f"{expires:%Y-%m-%d %H:%M:%S} UTC ({delay})"),
        ("fingerprint", f"{described['fingerprint']} (a hash of the token, safe to share)"),
    ]
    return "".join(f"{name + ':':<13}{value}\n" for name, value in rows)


async def run_token(settings: Settings, options: TokenOptions, out: TextIO) -> int:
    """Fetch a token with *settings* and write what *options* ask for to *out*; return 0.

    Raises:
        TokenError: no token could be had (its subclass says why).
        ConfigurationError: a setting is invalid.
    """
    async with PaymeAuth(
        settings.client_id,
        settings.client_secret,
        environment=settings.environment,
        scopes=settings.scopes,
        timeout=options.timeout,
        retry=RetryPolicy(attempts=options.attempts),
    ) as auth:
        token = await auth.get_token()
        remaining = token.remaining(time.monotonic())
    now = datetime.datetime.now(datetime.timezone.utc)
    if options.show_token and not options.as_json:
        out.write(f"{token.value}\n")
        return 0
    described = summary(settings, token, remaining=remaining, now=now)
    if options.as_json:
        if options.show_token:
            described["access_token"] = token.value
        out.write(json.dumps(described, indent=2) + "\n")
    else:
        out.write(_text(described, remaining, now))
    return 0
