"""Where ``token`` and ``check`` get their settings: command-line flags, then ``PAYME_*``.

Rules:
- A flag wins over its variable. Environment flags (``--environment``, or ``--token-url``
  with ``--audience``) replace the environment variables as a whole, so a stale
  ``PAYME_ENVIRONMENT`` cannot clash with them.
- Every setting is judged on its own, so ``check`` can list all that is wrong at once;
  each problem names the variable or flag to fix.
- The client secret is read from a file, from stdin (``-``; without echo on a terminal),
  from ``PAYME_CLIENT_SECRET`` or, discouraged, from a flag. It is never shown.
"""

from __future__ import annotations

import difflib
import getpass
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import attrs
import httpx

from . import _settings
from ._cli import EXIT_USAGE, Finding
from ._config import DEFAULT_SCOPES, Environment, env_settings, normalize_scopes
from ._errors import ConfigurationError

__all__ = [
    "CredentialOptions",
    "Resolution",
    "Settings",
    "audience_mismatch",
    "resolve",
    "scope_warning",
    "token_url_fix",
]

_SECRET_FILE_LIMIT = 4096
_ENV_VARIABLES = ("PAYME_ENVIRONMENT", "PAYME_TOKEN_URL", "PAYME_AUDIENCE", "PAYME_API_VERSION")
_FIELD_VARIABLES = {
    "token_url": "PAYME_TOKEN_URL",
    "audience": "PAYME_AUDIENCE",
    "api_version": "PAYME_API_VERSION",
}
# Pay-me token hosts and the API host their tokens are for (the current and the legacy
# generations, from Pay-me's documents and official samples).
_API_HOST_FOR_TOKEN_HOST = {
    "auth.preprod.alignet.io": "api.preprod.alignet.io",
    "auth.alignet.io": "api.alignet.io",
    "auth.wip.alignet.io": "api.dev.alignet.io",
}


@attrs.frozen(kw_only=True)
class CredentialOptions:
    """The command-line flags that choose credentials and environment (``None``: not given)."""

    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    client_secret_file: str | None = None
    environment: str | None = None
    token_url: str | None = None
    audience: str | None = None
    api_version: str | None = None
    scopes: Sequence[str] | None = None


@attrs.frozen(kw_only=True)
class Settings:
    """Everything needed to ask for a token, validated.

    Attributes:
        client_id: the client id.
        client_secret: the client secret (never shown).
        environment: where tokens come from and which API they are for.
        scopes: the scopes to request, ``create:token`` first.
        url_fix: what to check when the token URL turns out wrong (the flag or variables
            it came from), as words that follow "check".
    """

    client_id: str
    client_secret: str = attrs.field(repr=False)
    environment: Environment
    scopes: tuple[str, ...]
    url_fix: str = "the environment: PAYME_ENVIRONMENT, or PAYME_TOKEN_URL with PAYME_AUDIENCE"


@attrs.frozen(kw_only=True)
class Resolution:
    """What :func:`resolve` found: a finding per setting, and the settings if all are fine.

    Attributes:
        findings: one per setting, in order; problems name what to fix.
        settings: the validated settings, or ``None`` when a finding is a problem.
        secrets: the secrets read (to scrub from any output), even when a problem stopped
            the resolution.
    """

    findings: tuple[Finding, ...]
    settings: Settings | None
    secrets: tuple[str, ...] = attrs.field(repr=False)

    @property
    def problems(self) -> tuple[Finding, ...]:
        """The findings that are problems."""
        return tuple(finding for finding in self.findings if finding.is_problem)


def _read_secret(path: str, stdin: TextIO) -> str:
    if path == "-":
        if stdin.isatty():
            return getpass.getpass("Pay-me client secret: ")
        text = stdin.read(_SECRET_FILE_LIMIT + 1)
        where = "stdin"
    else:
        try:
            with Path(path).open(encoding="utf-8") as file:
                text = file.read(_SECRET_FILE_LIMIT + 1)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigurationError(
                f"cannot read the client secret file {path}: {reason}"
            ) from None
        where = f"the client secret file {path}"
    if len(text) > _SECRET_FILE_LIMIT:
        raise ConfigurationError(f"{where} is longer than {_SECRET_FILE_LIMIT} characters")
    # One line: the trailing line break that editors and `echo` add is not part of it.
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigurationError(f"{where} holds no client secret")
    if "\n" in secret:
        raise ConfigurationError(f"{where} must hold the client secret on a single line")
    return secret


def _name_variable(message: str, environ: Mapping[str, str]) -> str:
    if "PAYME_" in message:
        return message
    if message.startswith("unknown Pay-me environment"):
        return f"PAYME_ENVIRONMENT: {message}"
    for field, variable in _FIELD_VARIABLES.items():
        if message.startswith(field):
            return f"{variable}: {message}"
    given = [name for name in _ENV_VARIABLES if environ.get(name, "").strip()]
    return f"{'/'.join(given)}: {message}" if given else message


def _environment(options: CredentialOptions, environ: Mapping[str, str]) -> tuple[Environment, str]:
    """Return the environment and where it came from, or raise ConfigurationError."""
    if options.token_url or options.audience:
        if not (options.token_url and options.audience):
            raise ConfigurationError("--token-url and --audience must be given together")
        if options.environment:
            raise ConfigurationError(
                "--environment conflicts with --token-url/--audience: give one or the other"
            )
        try:
            environment = Environment(token_url=options.token_url, audience=options.audience)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--token-url/--audience: {exc}") from None
        source = "--token-url/--audience"
    elif options.environment:
        environment = Environment.from_name(options.environment)
        source = "--environment"
    else:
        subset = {name: environ[name] for name in _ENV_VARIABLES if name in environ}
        try:
            found = env_settings(subset, skip=("scopes",))["environment"]
        except ConfigurationError as exc:
            raise ConfigurationError(_name_variable(str(exc), environ)) from None
        assert isinstance(found, Environment)  # noqa: S101 - env_settings' contract
        given = [name for name in _ENV_VARIABLES if environ.get(name, "").strip()]
        source = "/".join(given) if given else "the default"
        environment = found
    if options.api_version:
        try:
            environment = attrs.evolve(environment, api_version=options.api_version)
        except ConfigurationError as exc:
            raise ConfigurationError(f"--api-version: {exc}") from None
    return environment, source


def token_url_fix(source: str) -> str:
    """What to check when the token URL from *source* (as :func:`resolve` names it) is wrong."""
    if source.startswith("--token-url"):
        return "--token-url"
    if "PAYME_TOKEN_URL" in source:
        return "PAYME_TOKEN_URL in the environment"
    if source == "--environment":
        return "--environment, or give --token-url with --audience"
    if "PAYME_ENVIRONMENT" in source:
        return "PAYME_ENVIRONMENT in the environment, or set PAYME_TOKEN_URL with PAYME_AUDIENCE"
    return "the environment: PAYME_ENVIRONMENT, or PAYME_TOKEN_URL with PAYME_AUDIENCE"


def scope_warning(scope: str) -> str | None:
    """Say that *scope* is not a scope Pay-me documents, with the documented one it is
    closest to, if any; ``None`` for a documented scope.

    Unknown scopes stay allowed (Pay-me may add some): this is a warning, not a problem.
    """
    if scope in DEFAULT_SCOPES:
        return None
    near = difflib.get_close_matches(scope.lower(), DEFAULT_SCOPES, n=1, cutoff=0.8)
    if near:
        guess = f"did you mean {near[0]}?"
    else:
        guess = f"the documented scopes are {' '.join(DEFAULT_SCOPES)}"
    return (
        f"scope {scope!r} is not one Pay-me documents ({guess}); it is sent as given, "
        "and the token endpoint may refuse it"
    )


def audience_mismatch(environment: Environment) -> str | None:
    """Tell whether a known Pay-me token host is paired with another environment's audience.

    Returns the problem in words, or ``None`` when the pair is right or not a known host.
    """
    token_host = httpx.URL(environment.token_url).host.lower()
    expected = _API_HOST_FOR_TOKEN_HOST.get(token_host)
    audience_host = httpx.URL(environment.audience).host.lower()
    if expected is None or audience_host == expected:
        return None
    return (
        f"audience {environment.audience} does not belong to the token URL's environment: "
        f"{token_host} issues tokens for https://{expected}/"
    )


def _scopes(options: CredentialOptions, environ: Mapping[str, str]) -> tuple[str, ...]:
    if options.scopes:
        text, source = " ".join(options.scopes), "--scope"
    else:
        text, source = environ.get("PAYME_SCOPES", "").strip(), "PAYME_SCOPES"
        if not text:
            return normalize_scopes(None)
    try:
        return normalize_scopes(text.replace(",", " "))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None


def _client_secret(
    options: CredentialOptions, environ: Mapping[str, str], stdin: TextIO
) -> tuple[str, str]:
    """Return *(secret, where it came from)*, or raise ConfigurationError."""
    if options.client_secret_file:
        secret = _read_secret(options.client_secret_file, stdin)
        where = "stdin" if options.client_secret_file == "-" else options.client_secret_file
        return secret, f"read from {where}"
    if options.client_secret:
        return options.client_secret, "from --client-secret"
    secret = environ.get("PAYME_CLIENT_SECRET", "").strip()
    if not secret:
        raise ConfigurationError(
            "PAYME_CLIENT_SECRET is not set (nor given with --client-secret-file)"
        )
    return secret, "from PAYME_CLIENT_SECRET"


def resolve(options: CredentialOptions, environ: Mapping[str, str], stdin: TextIO) -> Resolution:
    """Judge every setting from *options* and *environ*; build the settings if all are fine."""
    findings: list[Finding] = []
    secrets: list[str] = []

    def problem(text: str) -> None:
        findings.append(Finding.problem(text, EXIT_USAGE))

    client_id = options.client_id or environ.get("PAYME_CLIENT_ID", "").strip() or None
    if client_id is None:
        problem("PAYME_CLIENT_ID is not set (nor given with --client-id)")
    else:
        source = "--client-id" if options.client_id else "PAYME_CLIENT_ID"
        findings.append(Finding.ok(f"client id {client_id!r} (from {source})"))

    secret: str | None = None
    try:
        secret, source = _client_secret(options, environ, stdin)
    except ConfigurationError as exc:
        problem(str(exc))
    else:
        secrets.append(secret)
        findings.append(Finding.ok(f"client secret {source} (not shown)"))

    environment: Environment | None = None
    url_fix = token_url_fix("")
    try:
        environment, source = _environment(options, environ)
    except ConfigurationError as exc:
        problem(str(exc))
    else:
        url_fix = token_url_fix(source)
        findings.append(
            Finding.ok(
                f"environment {environment.name} (from {source}): token URL "
                f"{environment.token_url}, audience {environment.audience}, "
                f"ALG-API-VERSION {environment.api_version}"
            )
        )
        mismatch = audience_mismatch(environment)
        if mismatch is not None:
            problem(mismatch)

    scopes: tuple[str, ...] | None = None
    try:
        scopes = _scopes(options, environ)
    except ConfigurationError as exc:
        problem(str(exc))
    else:
        findings.append(Finding.ok(f"scopes to request: {' '.join(scopes)}"))
        warnings = (scope_warning(scope) for scope in scopes)
        findings.extend(Finding.warning(text) for text in warnings if text is not None)

    settings: Settings | None = None
    if (
        client_id
        and secret
        and environment
        and scopes
        and not any(finding.is_problem for finding in findings)
    ):
        settings = _validated(client_id, secret, environment, scopes, problem)
        if settings is not None:
            settings = attrs.evolve(settings, url_fix=url_fix)
    return Resolution(findings=tuple(findings), settings=settings, secrets=tuple(secrets))


def _validated(
    client_id: str,
    secret: str,
    environment: Environment,
    scopes: tuple[str, ...],
    problem: Callable[[str], None],
) -> Settings | None:
    try:
        # The checks every PaymeAuth is made with (lengths, spaces, printable characters).
        _settings.Settings(
            client_id=client_id, client_secret=secret, environment=environment, scopes=scopes
        )
    except ConfigurationError as exc:
        problem(str(exc))
        return None
    return Settings(
        client_id=client_id, client_secret=secret, environment=environment, scopes=scopes
    )
