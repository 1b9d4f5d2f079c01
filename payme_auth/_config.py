"""Settings: Pay-me's environments, its scopes, and the checks on both.

Rules:
- A URL carries no user name or password (they would end up in logs) and no fragment.
- Plain ``http://`` is allowed only to loopback hosts (an emulator on 127.0.0.1); anything
  that leaves the machine carries the client secret or a token, so it must be ``https://``.
- The API origin that receives the token is the audience's scheme, host and port.
- Proxies come from the environment as httpx reads them (``HTTP_PROXY``, ``HTTPS_PROXY``,
  ``ALL_PROXY``, ``NO_PROXY``, upper or lower case). httpx builds a transport for every one
  of them, whatever ``NO_PROXY`` says, so one it cannot use is a configuration error even
  when the token URL would not go through it.
"""

from __future__ import annotations

import enum
import importlib.util
import ipaddress
import os
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import attrs
import httpx

from ._errors import ConfigurationError

__all__ = [
    "API_VERSION",
    "Environment",
    "Origin",
    "Scope",
    "normalize_scopes",
    "origin_of",
    "proxy_problem",
]

API_VERSION = "1709847567"
"""The ``ALG-API-VERSION`` header value the current Pay-me docs require."""

_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]
"""A URL's origin: ``(scheme, host, port)``, lower-cased, with the default port filled in."""


class Scope(str, enum.Enum):
    """The scopes Pay-me documents. Any other scope string is accepted too.

    ``create:token`` is required in every token request, so payme_auth always adds it.
    """

    CREATE_TOKEN = "create:token"
    POST_CHARGES = "post:charges"
    GET_CHARGES = "get:charges"
    DELETE_CHARGES = "delete:charges"

    def __str__(self) -> str:
        return self.value


DEFAULT_SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)


def is_loopback(host: str) -> bool:
    """Tell whether *host* names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_url(value: object, what: str) -> httpx.URL:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty URL string, not {value!r}")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} is not a valid URL: {value!r}") from exc
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ConfigurationError(f"{what} must be an absolute http(s) URL, not {value!r}")
    if url.userinfo:
        raise ConfigurationError(f"{what} must not contain a user name or password")
    if url.fragment:
        raise ConfigurationError(f"{what} must not contain a fragment: {value!r}")
    if url.scheme == "http" and not is_loopback(url.host):
        raise ConfigurationError(
            f"{what} must use https:// (plain http:// is allowed only to loopback hosts): {value!r}"
        )
    return url


def origin_of(url: httpx.URL) -> Origin:
    """Return the origin of *url*: scheme, host and port (default port filled in)."""
    scheme = url.scheme
    return (scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme, 0))


def parse_origin(value: str) -> Origin:
    """Parse an origin such as ``"https://api.alignet.io"`` (no path, query or fragment)."""
    url = _parse_url(value, "an API origin")
    if url.path not in ("", "/") or url.query:
        raise ConfigurationError(
            f"an API origin is a scheme, host and optional port, with no path: {value!r}"
        )
    return origin_of(url)


def _check_version(_instance: object, _attribute: object, value: Any) -> None:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise ConfigurationError(f"api_version must be a string of digits, not {value!r}")


def _check_token_url(_instance: object, _attribute: object, value: Any) -> None:
    _parse_url(value, "token_url")


def _check_audience(_instance: object, _attribute: object, value: Any) -> None:
    _parse_url(value, "audience")


@attrs.frozen(kw_only=True)
class Environment:
    """Where tokens come from and which API they are for.

    Use :attr:`PREPROD` or :attr:`PRODUCTION`, or build one for anything else (an emulator,
    a legacy host)::

        Environment(token_url="http://127.0.0.1:8080/token", audience="http://127.0.0.1:8080/")

    Attributes:
        token_url: the URL the token request is POSTed to.
        audience: the ``audience`` sent in the token request: the API base URL of the same
            environment. The token is attached only to requests for its origin.
        api_version: the ``ALG-API-VERSION`` header value.
        name: a label for logs and messages.
    """

    PREPROD: ClassVar[Environment]
    """Pay-me pre-production (``auth.preprod.alignet.io``, ``api.preprod.alignet.io``)."""
    PRODUCTION: ClassVar[Environment]
    """Pay-me production (``auth.alignet.io``, ``api.alignet.io``)."""

    token_url: str = attrs.field(validator=_check_token_url)
    audience: str = attrs.field(validator=_check_audience)
    api_version: str = attrs.field(default=API_VERSION, validator=_check_version)
    name: str = "custom"

    @property
    def api_origin(self) -> Origin:
        """The origin (scheme, host, port) of the API the token is for."""
        return origin_of(httpx.URL(self.audience))

    @property
    def api_base_url(self) -> str:
        """The API base URL (the audience without its trailing slash)."""
        return self.audience.rstrip("/")

    @classmethod
    def from_name(cls, name: str) -> Environment:
        """Return :attr:`PREPROD` for ``"preprod"`` or :attr:`PRODUCTION` for ``"production"``."""
        key = name.strip().lower().replace("-", "").replace("_", "")
        found = _NAMED.get(key)
        if found is None:
            raise ConfigurationError(
                f"unknown Pay-me environment {name!r}: use 'preprod' or 'production', "
                "or give a token URL and an audience"
            )
        return found


Environment.PREPROD = Environment(
    token_url="https://auth.preprod.alignet.io/token",
    audience="https://api.preprod.alignet.io/",
    name="preprod",
)
Environment.PRODUCTION = Environment(
    token_url="https://auth.alignet.io/token",
    audience="https://api.alignet.io/",
    name="production",
)
_NAMED = {
    "preprod": Environment.PREPROD,
    "preproduction": Environment.PREPROD,
    "production": Environment.PRODUCTION,
    "prod": Environment.PRODUCTION,
}


def _check_scope(scope: str) -> str:
    if not scope or not scope.isascii() or not scope.isprintable() or " " in scope:
        raise ConfigurationError(
            f"a scope is a non-empty string of visible ASCII characters, not {scope!r}"
        )
    return scope


def normalize_scopes(scopes: Iterable[str | Scope] | str | None) -> tuple[str, ...]:
    """Return the scopes to request: ``create:token`` first, duplicates removed, order kept.

    A single string is split on white space (``"create:token post:charges"``). ``None``
    means all four documented scopes.
    """
    if scopes is None:
        return DEFAULT_SCOPES
    if isinstance(scopes, str):
        items: list[str] = scopes.split()
    elif not isinstance(scopes, Iterable):
        raise ConfigurationError(
            f"scopes must be a list of scopes or one space-separated string, not {scopes!r}"
        )
    else:
        items = []
        for scope in scopes:
            if not isinstance(scope, str):
                raise ConfigurationError(f"a scope must be a string or a Scope, not {scope!r}")
            items.append(str(scope))
    ordered = dict.fromkeys([Scope.CREATE_TOKEN.value, *map(_check_scope, items)])
    return tuple(ordered)


def env_settings(
    environ: Mapping[str, str] | None = None, *, skip: Iterable[str] = ()
) -> dict[str, object]:
    """Read the ``PAYME_*`` variables into :class:`~payme_auth.PaymeAuth` keyword arguments.

    ``PAYME_CLIENT_ID`` and ``PAYME_CLIENT_SECRET`` are required; ``PAYME_ENVIRONMENT``
    (``preprod``, the default, or ``production``) or both ``PAYME_TOKEN_URL`` and
    ``PAYME_AUDIENCE`` choose the environment; ``PAYME_API_VERSION`` overrides the
    ``ALG-API-VERSION`` header; ``PAYME_SCOPES`` lists scopes separated by spaces or commas.
    Settings named in *skip* (given some other way) are not read at all.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    settings: dict[str, object] = {}
    for name, key in (("PAYME_CLIENT_ID", "client_id"), ("PAYME_CLIENT_SECRET", "client_secret")):
        value = get(name)
        if value is not None:
            settings[key] = value

    skip = frozenset(skip)
    if "environment" not in skip:
        settings["environment"] = _env_environment(get)
    scopes = get("PAYME_SCOPES")
    if scopes is not None and "scopes" not in skip:
        settings["scopes"] = normalize_scopes(scopes.replace(",", " "))
    return settings


def _env_environment(get: Callable[[str], str | None]) -> Environment:
    token_url, audience = get("PAYME_TOKEN_URL"), get("PAYME_AUDIENCE")
    named = get("PAYME_ENVIRONMENT")
    version = get("PAYME_API_VERSION")
    if token_url or audience:
        if not (token_url and audience):
            raise ConfigurationError(
                "PAYME_TOKEN_URL and PAYME_AUDIENCE must be set together for a custom environment"
            )
        if named is not None and named.lower() != "custom":
            raise ConfigurationError(
                f"PAYME_ENVIRONMENT={named!r} conflicts with PAYME_TOKEN_URL/PAYME_AUDIENCE: "
                "set one or the other"
            )
        return Environment(
            token_url=token_url, audience=audience, api_version=version or API_VERSION
        )
    environment = Environment.from_name(named) if named else Environment.PREPROD
    if version is not None:
        environment = attrs.evolve(environment, api_version=version)
    return environment


_PROXY_SCHEMES = {"http": None, "https": None, "socks5": "socksio", "socks5h": "socksio"}


def proxy_problem() -> str | None:
    """Say what is wrong with the proxy variables httpx would use, or ``None``.

    The text names the variable and never shows its value, which may hold a password.
    """
    # The standard library's reading, which is httpx's: a lower-case name wins.
    found = urllib.request.getproxies_environment()
    for scheme in ("http", "https", "all"):
        value = found.get(scheme)
        if not value:
            continue
        names = [n for n, v in os.environ.items() if n.lower() == f"{scheme}_proxy" and v == value]
        name = min(names, key=str.isupper, default=f"{scheme.upper()}_PROXY")
        try:
            url = httpx.URL(value if "://" in value else f"http://{value}")
        except (httpx.InvalidURL, ValueError, TypeError):
            return f"{name} is not a valid proxy URL"
        if url.scheme not in _PROXY_SCHEMES:
            return f"{name} has the proxy scheme {url.scheme!r}, which httpx cannot use"
        package = _PROXY_SCHEMES[url.scheme]
        if package and importlib.util.find_spec(package) is None:
            return (
                f"{name} names a {url.scheme} proxy, which needs the {package} package "
                "(pip install 'httpx[socks]')"
            )
    return None


def check_proxy_environment() -> None:
    """Raise :class:`~payme_auth.ConfigurationError` if httpx cannot use the proxy variables."""
    problem = proxy_problem()
    if problem is not None:
        raise ConfigurationError(
            f"{problem}: fix or unset it (token requests use the proxies of the environment, "
            "as httpx does)"
        )
