"""What every ``payme-auth`` command shares: exit codes, findings, and how errors are told.

Rules:
- Every outcome has its own exit code, a module constant, so scripts can tell a refusal
  from an outage without reading the text.
- An error is one line on stderr, ``payme-auth: error: ...``, with no traceback unless
  ``--debug`` asks for it; any secret the command knows is scrubbed from it first.
- Output goes to the streams passed in, never to ``print``: the commands are tested
  in-process and used from scripts.
"""

from __future__ import annotations

import datetime
import logging
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO

import attrs

from ._errors import (
    ConfigurationError,
    TokenEndpointUnavailableError,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from ._log import attached

__all__ = [
    "EXIT_BAD_ANSWER",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "WRONG_URL_STATUSES",
    "CommandError",
    "Finding",
    "debug_logging",
    "exit_code_for",
    "format_expiry",
    "is_wrong_url",
    "report_error",
    "scrub",
    "wrong_url_text",
]

EXIT_OK = 0
"""Success; for ``check``, every finding was fine."""

EXIT_FAILURE = 1
"""Something else went wrong: the demo failed, the emulator could not listen, ``check``
found a problem with no more specific code (a skewed clock, a scope not granted), or an
unexpected error."""

EXIT_USAGE = 2
"""A usage error or a bad configuration: a missing or invalid setting, an unreadable
secret file, a missing optional dependency. Nothing was sent."""

EXIT_REFUSED = 3
"""The token endpoint refused the request: wrong credentials, a scope not allowed, a wrong
audience (:class:`~payme_auth.TokenRefusedError` and its subclasses)."""

EXIT_UNAVAILABLE = 4
"""The token endpoint could not be reached or stayed unavailable (DNS, connection, TLS,
timeout, HTTP 408/429/5xx: :class:`~payme_auth.TokenEndpointUnavailableError`)."""

EXIT_BAD_ANSWER = 5
"""The token endpoint answered, but not with a usable token
(:class:`~payme_auth.TokenResponseError`)."""

EXIT_INTERRUPTED = 130
"""Interrupted with Ctrl-C (SIGINT), as shells report it."""


class CommandError(Exception):
    """A command failed for a reason its message says plainly; ends with *exit_code*."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_for(error: BaseException) -> int:
    """Return the exit code for *error*, raised by a command."""
    if isinstance(error, CommandError):
        return error.exit_code
    if isinstance(error, (ConfigurationError, ImportError)):
        return EXIT_USAGE
    if isinstance(error, TokenRefusedError):
        return EXIT_REFUSED
    if isinstance(error, TokenEndpointUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, TokenResponseError):
        return EXIT_BAD_ANSWER
    if isinstance(error, TokenError):
        # Only its subclasses are raised; a bare one is an endpoint that gave no token.
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in *text* by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def report_error(error: BaseException, err: TextIO, *, secrets: Iterable[str], debug: bool) -> int:
    """Write *error* to *err* as one line (and its traceback with *debug*); return its code."""
    secrets = tuple(secrets)
    code = exit_code_for(error)
    if debug:
        lines = traceback.format_exception(type(error), error, error.__traceback__)
        err.write(scrub("".join(lines), secrets))
    if isinstance(error, TokenError):
        message = f"{error} (run 'payme-auth check' for a diagnosis)"
    elif isinstance(error, (ConfigurationError, ImportError, CommandError)):
        message = str(error)
    else:
        message = f"unexpected {type(error).__name__}: {error}"
        if not debug:
            message += " (run with --debug for the traceback)"
    err.write(f"payme-auth: error: {scrub(' '.join(message.split()), secrets)}\n")
    return code


@attrs.frozen(kw_only=True)
class Finding:
    """One line of ``payme-auth check``: something found fine, a problem, a warning, or a note.

    Attributes:
        mark: ``"ok"``, ``"problem"``, ``"warning"`` or ``"note"`` (a warning or a note
            changes no exit code).
        text: what was found, in plain words, with no secret in it.
        exit_code: for a problem, the exit code it calls for.
    """

    mark: str
    text: str
    exit_code: int = EXIT_OK

    @classmethod
    def ok(cls, text: str) -> Finding:
        """Something checked and found fine."""
        return cls(mark="ok", text=text)

    @classmethod
    def problem(cls, text: str, exit_code: int) -> Finding:
        """Something wrong, and the exit code it calls for."""
        return cls(mark="problem", text=text, exit_code=exit_code)

    @classmethod
    def warning(cls, text: str) -> Finding:
        """Something that is allowed but looks wrong (a scope Pay-me does not document)."""
        return cls(mark="warning", text=text)

    @classmethod
    def note(cls, text: str) -> Finding:
        """Something worth saying that is neither fine nor wrong."""
        return cls(mark="note", text=text)

    @property
    def is_problem(self) -> bool:
        """Whether this finding is a problem."""
        return self.mark == "problem"

    @property
    def is_warning(self) -> bool:
        """Whether this finding is a warning."""
        return self.mark == "warning"

    def line(self) -> str:
        """The finding as printed: the mark, padded, then the text."""
        return f"{self.mark:<8} {self.text}"


WRONG_URL_STATUSES = {404: "Not Found", 405: "Method Not Allowed"}
"""Token endpoint statuses that mean the token URL itself is wrong, not the credentials."""


def is_wrong_url(error: BaseException) -> bool:
    """Whether *error* is the token endpoint's answer that its URL is wrong (HTTP 404, 405)."""
    return isinstance(error, TokenRefusedError) and error.status_code in WRONG_URL_STATUSES


def wrong_url_text(url: str, status: int, fix: str) -> str:
    """Say that *url* answered *status* (404 or 405) because it is the wrong URL; *fix* is
    where the URL came from, as "check ..." words."""
    reason = WRONG_URL_STATUSES.get(status, "")
    return (
        f"the token URL {url} answered HTTP {status} {reason}: there is no token endpoint "
        f"at that URL; check {fix}"
    )


def format_expiry(remaining: float, now: datetime.datetime) -> tuple[datetime.datetime, str]:
    """Return the UTC wall-clock expiry of a token with *remaining* seconds, and "in N min".

    *now* is the current time (aware). Below two minutes the delay is told in seconds.
    """
    expires = (now + datetime.timedelta(seconds=remaining)).astimezone(datetime.timezone.utc)
    expires = expires.replace(microsecond=0)
    if remaining <= 0:
        return expires, "expired"
    if remaining < 120:
        return expires, f"in {int(remaining)} s"
    return expires, f"in {int(remaining // 60)} min"


@contextmanager
def debug_logging(err: TextIO, *, enabled: bool) -> Iterator[None]:
    """While active and *enabled*, show payme_auth's DEBUG log on *err* (it holds no secret).

    Not *enabled*, the log is kept off the terminal (Python would otherwise print its
    warnings there), so that an error is told once, by the command's own line. Handlers
    configured elsewhere (a test's log capture) still receive it.
    """
    handler: logging.Handler
    if enabled:
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    with attached(handler, level=logging.DEBUG if enabled else None):
        yield
