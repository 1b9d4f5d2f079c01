"""Settings: environments, scopes, origins, env vars, and PaymeAuth's constructor checks."""

from __future__ import annotations

import math
from typing import Any

import attrs
import httpx
import pytest

from payme_auth import (
    API_VERSION,
    ConfigurationError,
    Environment,
    PaymeAuth,
    PaymeAuthError,
    RetryPolicy,
    Scope,
)
from payme_auth._config import (
    DEFAULT_SCOPES,
    env_settings,
    is_loopback,
    normalize_scopes,
    origin_of,
    parse_origin,
)
from payme_auth._protocol import MAX_EXPIRES_IN

from .conftest import CLIENT_ID, CLIENT_SECRET

ALL_SCOPES = ("create:token", "post:charges", "get:charges", "delete:charges")
PAYME_VARIABLES = (
    "PAYME_CLIENT_ID",
    "PAYME_CLIENT_SECRET",
    "PAYME_ENVIRONMENT",
    "PAYME_TOKEN_URL",
    "PAYME_AUDIENCE",
    "PAYME_API_VERSION",
    "PAYME_SCOPES",
)


# -- Environment ---------------------------------------------------------------------------


def test_api_version_is_the_documented_value() -> None:
    """API_VERSION is the ALG-API-VERSION the current docs require."""
    assert API_VERSION == "1709847567"


def test_preprod_environment_values() -> None:
    """PREPROD has the documented token URL, audience, version and name."""
    env = Environment.PREPROD
    assert env.token_url == "https://auth.preprod.alignet.io/token"
    assert env.audience == "https://api.preprod.alignet.io/"
    assert env.api_version == "1709847567"
    assert env.name == "preprod"
    assert env.api_origin == ("https", "api.preprod.alignet.io", 443)
    assert env.api_base_url == "https://api.preprod.alignet.io"


def test_production_environment_values() -> None:
    """PRODUCTION has the documented token URL, audience, version and name."""
    env = Environment.PRODUCTION
    assert env.token_url == "https://auth.alignet.io/token"
    assert env.audience == "https://api.alignet.io/"
    assert env.api_version == "1709847567"
    assert env.name == "production"
    assert env.api_origin == ("https", "api.alignet.io", 443)
    assert env.api_base_url == "https://api.alignet.io"


def test_custom_environment_defaults() -> None:
    """A custom environment gets the current API version and the name 'custom'."""
    env = Environment(
        token_url="https://auth.wip.alignet.io/token", audience="https://api.dev.alignet.io"
    )
    assert env.api_version == API_VERSION
    assert env.name == "custom"
    assert env.api_origin == ("https", "api.dev.alignet.io", 443)
    assert env.api_base_url == "https://api.dev.alignet.io"


def test_custom_environment_keeps_every_field() -> None:
    """A custom environment keeps the token URL, audience, legacy version and name given."""
    env = Environment(
        token_url="https://auth.pp.alignet.io/token",
        audience="https://api.pp.alignet.io/",
        api_version="1618440906",
        name="legacy",
    )
    assert (env.token_url, env.audience, env.api_version, env.name) == (
        "https://auth.pp.alignet.io/token",
        "https://api.pp.alignet.io/",
        "1618440906",
        "legacy",
    )


def test_environment_is_frozen_and_keyword_only() -> None:
    """Environment cannot be changed after creation nor built positionally."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Environment.PREPROD.token_url = "https://evil.example/token"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Environment("https://a.example/token", "https://a.example/")  # type: ignore[call-arg]


def test_environments_compare_by_value() -> None:
    """Two environments with the same fields are equal."""
    assert (
        Environment(
            token_url="https://auth.alignet.io/token",
            audience="https://api.alignet.io/",
            name="production",
        )
        == Environment.PRODUCTION
    )
    assert Environment.PREPROD != Environment.PRODUCTION


@pytest.mark.parametrize(
    ("token_url", "audience", "origin"),
    [
        ("http://127.0.0.1:8080/token", "http://127.0.0.1:8080/", ("http", "127.0.0.1", 8080)),
        ("http://127.0.0.1/token", "http://127.0.0.1/", ("http", "127.0.0.1", 80)),
        ("http://[::1]:9000/token", "http://[::1]:9000/", ("http", "::1", 9000)),
        ("http://localhost/token", "http://localhost/", ("http", "localhost", 80)),
        ("http://LOCALHOST:81/token", "http://LocalHost:81", ("http", "localhost", 81)),
        ("http://api.localhost/token", "http://api.localhost/", ("http", "api.localhost", 80)),
        ("https://auth.example/token", "https://API.Example:443/", ("https", "api.example", 443)),
        (
            "https://auth.example/token",
            "https://api.example:8443/v1/",
            ("https", "api.example", 8443),
        ),
    ],
)
def test_loopback_http_and_https_environments_are_allowed(
    token_url: str, audience: str, origin: tuple[str, str, int]
) -> None:
    """http:// to loopback hosts and https:// anywhere are allowed; origins get their port."""
    env = Environment(token_url=token_url, audience=audience)
    assert env.api_origin == origin


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("token_url", "http://auth.alignet.io/token", "must use https://"),
        ("audience", "http://api.alignet.io/", "must use https://"),
        ("token_url", "http://10.0.0.1/token", "must use https://"),
        ("token_url", "http://localhost.evil.example/token", "must use https://"),
        ("token_url", "https://user:pass@auth.alignet.io/token", "user name or password"),
        ("audience", "https://user@api.alignet.io/", "user name or password"),
        ("token_url", "https://auth.alignet.io/token#frag", "fragment"),
        ("audience", "https://api.alignet.io/#x", "fragment"),
        ("token_url", "/token", "absolute http(s) URL"),
        ("audience", "api.alignet.io", "absolute http(s) URL"),
        ("token_url", "https:///token", "absolute http(s) URL"),
        ("token_url", "ftp://auth.alignet.io/token", "absolute http(s) URL"),
        ("token_url", "https://[::1/token", "not a valid URL"),
        ("token_url", "", "non-empty URL string"),
        ("audience", "   ", "non-empty URL string"),
        ("token_url", None, "non-empty URL string"),
        ("audience", b"https://api.alignet.io/", "non-empty URL string"),
    ],
)
def test_environment_url_validation(field: str, value: object, fragment: str) -> None:
    """Every invalid token URL or audience is a ConfigurationError naming the field."""
    fields: dict[str, Any] = {
        "token_url": "https://auth.alignet.io/token",
        "audience": "https://api.alignet.io/",
        field: value,
    }
    with pytest.raises(ConfigurationError) as caught:
        Environment(**fields)
    assert str(caught.value).startswith(field)
    assert fragment in str(caught.value)


def test_url_errors_do_not_show_the_password() -> None:
    """A URL with a password is refused without repeating the password."""
    with pytest.raises(ConfigurationError) as caught:
        Environment(token_url="https://id:hunter2@auth.alignet.io/token", audience="https://a.io/")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("version", ["", "17098a", "1.0", " 1709847567", "١٧٠٩", 1709847567, None])
def test_api_version_must_be_ascii_digits(version: object) -> None:
    """api_version must be a non-empty string of ASCII digits."""
    with pytest.raises(ConfigurationError, match="api_version must be a string of digits"):
        Environment(
            token_url="https://auth.alignet.io/token",
            audience="https://api.alignet.io/",
            api_version=version,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("preprod", Environment.PREPROD),
        ("PREPROD", Environment.PREPROD),
        ("pre-prod", Environment.PREPROD),
        ("pre_production", Environment.PREPROD),
        (" preproduction ", Environment.PREPROD),
        ("production", Environment.PRODUCTION),
        ("Prod", Environment.PRODUCTION),
    ],
)
def test_environment_from_name(name: str, expected: Environment) -> None:
    """from_name accepts the two environments' names, ignoring case, dashes and underscores."""
    assert Environment.from_name(name) is expected


@pytest.mark.parametrize("name", ["", "dev", "sandbox", "custom", "staging"])
def test_environment_from_unknown_name(name: str) -> None:
    """An unknown environment name is a ConfigurationError listing the valid names."""
    with pytest.raises(ConfigurationError, match="unknown Pay-me environment") as caught:
        Environment.from_name(name)
    assert "'preprod' or 'production'" in str(caught.value)


# -- loopback and origins -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("a.localhost", True),
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("notlocalhost", False),
        ("localhost.example", False),
        ("10.0.0.1", False),
        ("::2", False),
        ("api.alignet.io", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    """Only localhost names, 127.0.0.0/8 and ::1 are loopback."""
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("https://api.alignet.io", ("https", "api.alignet.io", 443)),
        ("https://api.alignet.io/", ("https", "api.alignet.io", 443)),
        ("https://API.alignet.io:443", ("https", "api.alignet.io", 443)),
        ("https://api.alignet.io:8443", ("https", "api.alignet.io", 8443)),
        ("http://127.0.0.1", ("http", "127.0.0.1", 80)),
        ("http://[::1]:8080", ("http", "::1", 8080)),
    ],
)
def test_parse_origin(value: str, origin: tuple[str, str, int]) -> None:
    """An origin is scheme, lower-cased host and port, with the default port filled in."""
    assert parse_origin(value) == origin


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("https://api.alignet.io/charges", "with no path"),
        ("https://api.alignet.io/?x=1", "with no path"),
        ("http://api.alignet.io", "must use https://"),
        ("https://u:p@api.alignet.io", "user name or password"),
        ("api.alignet.io", "absolute http(s) URL"),
    ],
)
def test_parse_origin_refuses(value: str, fragment: str) -> None:
    """An origin with a path, a query, plain http to a remote host or credentials is refused."""
    with pytest.raises(ConfigurationError, match="an API origin") as caught:
        parse_origin(value)
    assert fragment in str(caught.value)


def test_origin_of_fills_default_ports() -> None:
    """origin_of fills in 443 for https and 80 for http."""
    assert origin_of(httpx.URL("https://x.example/a")) == ("https", "x.example", 443)
    assert origin_of(httpx.URL("http://localhost/a")) == ("http", "localhost", 80)
    assert origin_of(httpx.URL("https://x.example:444/")) == ("https", "x.example", 444)


# -- scopes ----------------------------------------------------------------------------------


def test_scope_values() -> None:
    """Scope has the four documented scopes; str() gives the wire value."""
    assert [scope.value for scope in Scope] == list(ALL_SCOPES)
    assert str(Scope.POST_CHARGES) == "post:charges"
    assert f"{Scope.GET_CHARGES}" == "get:charges"
    assert isinstance(Scope.DELETE_CHARGES, str)
    assert Scope("delete:charges") is Scope.DELETE_CHARGES
    assert DEFAULT_SCOPES == ALL_SCOPES


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (None, ALL_SCOPES),
        ([], ("create:token",)),
        ("", ("create:token",)),
        (["post:charges"], ("create:token", "post:charges")),
        ([Scope.GET_CHARGES, Scope.POST_CHARGES], ("create:token", "get:charges", "post:charges")),
        (
            ["get:charges", "create:token", "post:charges", "get:charges"],
            ("create:token", "get:charges", "post:charges"),
        ),
        ("post:charges  get:charges\tdelete:charges", ("create:token", *ALL_SCOPES[1:])),
        ("create:token", ("create:token",)),
        (("x:y", Scope.CREATE_TOKEN, "x:y"), ("create:token", "x:y")),
        (iter(["a:b"]), ("create:token", "a:b")),
    ],
)
def test_normalize_scopes(scopes: Any, expected: tuple[str, ...]) -> None:
    """create:token comes first, duplicates go, order is kept, a single string is split."""
    result = normalize_scopes(scopes)
    assert result == expected
    assert all(type(scope) is str for scope in result)


@pytest.mark.parametrize(
    ("scopes", "fragment"),
    [
        (["post:charges", 5], "must be a string or a Scope"),
        ([None], "must be a string or a Scope"),
        ([b"post:charges"], "must be a string or a Scope"),
        (b"post:charges", "must be a string or a Scope"),
        ([""], "non-empty string of visible ASCII"),
        (["post charges"], "non-empty string of visible ASCII"),
        (["post:\ncharges"], "non-empty string of visible ASCII"),
        (["crédito"], "non-empty string of visible ASCII"),
        ("post:charges crédito", "non-empty string of visible ASCII"),
    ],
)
def test_normalize_scopes_refuses_bad_items(scopes: Any, fragment: str) -> None:
    """A scope that is not a non-empty visible ASCII string is a ConfigurationError."""
    with pytest.raises(ConfigurationError) as caught:
        normalize_scopes(scopes)
    assert fragment in str(caught.value)


# -- environment variables --------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PAYME_* variable is set, whatever the machine running the tests has."""
    for name in PAYME_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _set(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_env_settings_with_nothing_set(clean_env: pytest.MonkeyPatch) -> None:
    """With no variable set, only the default environment (PREPROD) is chosen."""
    assert env_settings() == {"environment": Environment.PREPROD}


def test_env_settings_reads_a_given_mapping() -> None:
    """env_settings reads the mapping given instead of os.environ."""
    settings = env_settings({"PAYME_CLIENT_ID": " id ", "PAYME_CLIENT_SECRET": CLIENT_SECRET})
    assert settings == {
        "client_id": "id",
        "client_secret": CLIENT_SECRET,
        "environment": Environment.PREPROD,
    }


def test_env_settings_every_variable_of_a_named_environment() -> None:
    """Id, secret, environment name, API version and scopes are all read."""
    settings = env_settings(
        {
            "PAYME_CLIENT_ID": CLIENT_ID,
            "PAYME_CLIENT_SECRET": CLIENT_SECRET,
            "PAYME_ENVIRONMENT": "production",
            "PAYME_API_VERSION": "1618440906",
            "PAYME_SCOPES": "post:charges, get:charges,delete:charges",
        }
    )
    assert settings == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "environment": attrs.evolve(Environment.PRODUCTION, api_version="1618440906"),
        "scopes": ("create:token", "post:charges", "get:charges", "delete:charges"),
    }


def test_env_settings_custom_environment() -> None:
    """PAYME_TOKEN_URL and PAYME_AUDIENCE together make a custom environment."""
    settings = env_settings(
        {
            "PAYME_TOKEN_URL": "http://127.0.0.1:8080/token",
            "PAYME_AUDIENCE": "http://127.0.0.1:8080/",
            "PAYME_ENVIRONMENT": "Custom",
        }
    )
    assert settings["environment"] == Environment(
        token_url="http://127.0.0.1:8080/token", audience="http://127.0.0.1:8080/"
    )


def test_env_settings_custom_environment_with_api_version() -> None:
    """PAYME_API_VERSION applies to a custom environment too."""
    settings = env_settings(
        {
            "PAYME_TOKEN_URL": "https://auth.wip.alignet.io/token",
            "PAYME_AUDIENCE": "https://api.dev.alignet.io",
            "PAYME_API_VERSION": "1618440906",
        }
    )
    env = settings["environment"]
    assert isinstance(env, Environment)
    assert env.api_version == "1618440906"
    assert env.name == "custom"


def test_env_settings_blank_values_count_as_unset() -> None:
    """Variables holding only white space are ignored."""
    settings = env_settings(
        {
            "PAYME_CLIENT_ID": "  ",
            "PAYME_CLIENT_SECRET": "",
            "PAYME_ENVIRONMENT": " ",
            "PAYME_TOKEN_URL": "",
            "PAYME_SCOPES": "  ",
        }
    )
    assert settings == {"environment": Environment.PREPROD}


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"PAYME_TOKEN_URL": "https://a.example/token"}, "must be set together"),
        ({"PAYME_AUDIENCE": "https://a.example/"}, "must be set together"),
        (
            {
                "PAYME_TOKEN_URL": "https://a.example/token",
                "PAYME_AUDIENCE": "https://a.example/",
                "PAYME_ENVIRONMENT": "production",
            },
            "conflicts with PAYME_TOKEN_URL/PAYME_AUDIENCE",
        ),
        ({"PAYME_ENVIRONMENT": "staging"}, "unknown Pay-me environment 'staging'"),
        ({"PAYME_ENVIRONMENT": "custom"}, "unknown Pay-me environment 'custom'"),
        ({"PAYME_API_VERSION": "v2"}, "api_version must be a string of digits"),
        ({"PAYME_SCOPES": "post:charges;get:chárges"}, "visible ASCII"),
        (
            {
                "PAYME_TOKEN_URL": "http://auth.example/token",
                "PAYME_AUDIENCE": "https://a.example/",
            },
            "token_url must use https://",
        ),
    ],
)
def test_env_settings_errors(variables: dict[str, str], fragment: str) -> None:
    """Incomplete, conflicting or invalid variables are a ConfigurationError that says why."""
    with pytest.raises(ConfigurationError) as caught:
        env_settings(variables)
    assert fragment in str(caught.value)


def test_from_env_reads_every_variable(clean_env: pytest.MonkeyPatch) -> None:
    """PaymeAuth.from_env builds a PaymeAuth from the PAYME_* variables."""
    _set(
        clean_env,
        PAYME_CLIENT_ID=CLIENT_ID,
        PAYME_CLIENT_SECRET=CLIENT_SECRET,
        PAYME_ENVIRONMENT="production",
        PAYME_API_VERSION="1618440906",
        PAYME_SCOPES="post:charges",
    )
    auth = PaymeAuth.from_env()
    assert auth.client_id == CLIENT_ID
    assert auth._settings.client_secret == CLIENT_SECRET
    assert auth.environment == attrs.evolve(Environment.PRODUCTION, api_version="1618440906")
    assert auth.scopes == ("create:token", "post:charges")


def test_from_env_custom_environment(clean_env: pytest.MonkeyPatch) -> None:
    """from_env uses PAYME_TOKEN_URL and PAYME_AUDIENCE for a custom environment."""
    _set(
        clean_env,
        PAYME_CLIENT_ID=CLIENT_ID,
        PAYME_CLIENT_SECRET=CLIENT_SECRET,
        PAYME_TOKEN_URL="http://localhost:8080/token",
        PAYME_AUDIENCE="http://localhost:8080/",
    )
    auth = PaymeAuth.from_env()
    assert auth.environment.token_url == "http://localhost:8080/token"
    assert auth.applies_to(httpx.URL("http://localhost:8080/charges"))
    assert auth.scopes == ALL_SCOPES


def test_from_env_defaults(clean_env: pytest.MonkeyPatch) -> None:
    """With only the id and secret set, from_env picks PREPROD and all four scopes."""
    _set(clean_env, PAYME_CLIENT_ID=CLIENT_ID, PAYME_CLIENT_SECRET=CLIENT_SECRET)
    auth = PaymeAuth.from_env()
    assert auth.environment is Environment.PREPROD
    assert auth.scopes == ALL_SCOPES


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ({"PAYME_CLIENT_SECRET": CLIENT_SECRET}, "PAYME_CLIENT_ID"),
        ({"PAYME_CLIENT_ID": CLIENT_ID}, "PAYME_CLIENT_SECRET"),
        ({"PAYME_CLIENT_ID": CLIENT_ID, "PAYME_CLIENT_SECRET": "   "}, "PAYME_CLIENT_SECRET"),
    ],
)
def test_from_env_missing_credentials(
    clean_env: pytest.MonkeyPatch, present: dict[str, str], missing: str
) -> None:
    """A missing id or secret is a ConfigurationError naming the variable."""
    _set(clean_env, **present)
    with pytest.raises(ConfigurationError) as caught:
        PaymeAuth.from_env()
    assert str(caught.value) == f"{missing} is not set"


def test_from_env_nothing_set_names_the_id(clean_env: pytest.MonkeyPatch) -> None:
    """With nothing set, the first complaint is about PAYME_CLIENT_ID."""
    with pytest.raises(ConfigurationError, match=r"^PAYME_CLIENT_ID is not set$"):
        PaymeAuth.from_env()


def test_from_env_conflict_is_an_error(clean_env: pytest.MonkeyPatch) -> None:
    """A named environment plus a token URL and audience is refused by from_env."""
    _set(
        clean_env,
        PAYME_CLIENT_ID=CLIENT_ID,
        PAYME_CLIENT_SECRET=CLIENT_SECRET,
        PAYME_ENVIRONMENT="preprod",
        PAYME_TOKEN_URL="https://a.example/token",
        PAYME_AUDIENCE="https://a.example/",
    )
    with pytest.raises(ConfigurationError, match="conflicts with"):
        PaymeAuth.from_env()


def test_from_env_overrides_win(clean_env: pytest.MonkeyPatch) -> None:
    """Keyword arguments replace what the variables say and pass other settings."""
    _set(
        clean_env,
        PAYME_CLIENT_ID="env-id",
        PAYME_CLIENT_SECRET="env-secret",
        PAYME_ENVIRONMENT="production",
        PAYME_SCOPES="get:charges",
    )
    auth = PaymeAuth.from_env(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        environment=Environment.PREPROD,
        scopes=["post:charges"],
        timeout=5.0,
    )
    assert auth.client_id == CLIENT_ID
    assert auth._settings.client_secret == CLIENT_SECRET
    assert auth.environment is Environment.PREPROD
    assert auth.scopes == ("create:token", "post:charges")
    assert auth._settings.http_timeout == httpx.Timeout(5.0)


def test_from_env_overrides_supply_missing_credentials(clean_env: pytest.MonkeyPatch) -> None:
    """An id and secret given as keywords make the variables unnecessary."""
    auth = PaymeAuth.from_env(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert auth.client_id == CLIENT_ID
    assert auth.environment is Environment.PREPROD


def test_from_env_validates_the_secret_without_showing_it(clean_env: pytest.MonkeyPatch) -> None:
    """An invalid secret from the environment is refused without being shown."""
    _set(clean_env, PAYME_CLIENT_ID=CLIENT_ID, PAYME_CLIENT_SECRET=CLIENT_SECRET + "\x07")
    with pytest.raises(ConfigurationError, match="client_secret") as caught:
        PaymeAuth.from_env()
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in repr(caught.value)


# -- PaymeAuth constructor ------------------------------------------------------------------


def make_auth(**overrides: Any) -> PaymeAuth:
    """A PaymeAuth with valid credentials; keywords replace any argument."""
    arguments: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    arguments.update(overrides)
    return PaymeAuth(**arguments)


def test_constructor_defaults() -> None:
    """A PaymeAuth defaults to PREPROD, the four scopes, a 10 s timeout and 3 attempts."""
    auth = make_auth()
    assert auth.client_id == CLIENT_ID
    assert auth.environment is Environment.PREPROD
    assert auth.scopes == ALL_SCOPES
    assert auth._settings.http_timeout == httpx.Timeout(10.0)
    assert auth._settings.attempt_timeout == 10.0
    assert auth._settings.retry == RetryPolicy()
    assert auth._settings.refresh_margin == 60.0
    assert auth.applies_to(httpx.URL("https://api.preprod.alignet.io/charges"))
    assert not auth.applies_to(httpx.URL("https://api.alignet.io/charges"))


def test_constructor_accepts_extra_origins() -> None:
    """Extra origins, one string or several, also receive the token."""
    auth = make_auth(extra_origins="https://paymentapi.preprod.alignet.io")
    assert auth.applies_to(httpx.URL("https://paymentapi.preprod.alignet.io/x"))
    auth = make_auth(extra_origins=["https://a.example:8443", "http://127.0.0.1:9"])
    assert auth.applies_to(httpx.URL("https://a.example:8443/"))
    assert auth.applies_to(httpx.URL("http://127.0.0.1:9/"))
    assert not auth.applies_to(httpx.URL("https://a.example/"))


def test_repr_shows_no_secret() -> None:
    """repr() and str() of a PaymeAuth show the id, environment and scopes, not the secret."""
    auth = make_auth(scopes="post:charges")
    expected = (
        f"PaymeAuth(client_id={CLIENT_ID!r}, environment='preprod', "
        "scopes='create:token post:charges')"
    )
    assert repr(auth) == expected
    assert str(auth) == expected


@pytest.mark.parametrize(
    ("timeout", "http_timeout", "deadline"),
    [
        (5.0, httpx.Timeout(5.0), 5.0),
        (3, httpx.Timeout(3.0), 3.0),
        (0.25, httpx.Timeout(0.25), 0.25),
        (
            httpx.Timeout(1.0, connect=2.0, read=3.0, write=4.0, pool=5.0),
            httpx.Timeout(1.0, connect=2.0, read=3.0, write=4.0, pool=5.0),
            14.0,
        ),
        (httpx.Timeout(2.0), httpx.Timeout(2.0), 8.0),
    ],
)
def test_timeout_forms(
    timeout: float | httpx.Timeout, http_timeout: httpx.Timeout, deadline: float
) -> None:
    """A number bounds the whole attempt; an httpx.Timeout bounds each phase (sum = the attempt)."""
    auth = make_auth(timeout=timeout)
    assert auth._settings.http_timeout == http_timeout
    assert auth._settings.attempt_timeout == deadline


BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"client_id": 123}, "client_id must be a string, not int"),
    ({"client_id": None}, "client_id must be a string, not NoneType"),
    ({"client_id": ""}, "client_id must be non-empty"),
    ({"client_id": " id"}, "client_id must be non-empty, with no surrounding spaces: ' id'"),
    ({"client_id": "id\n"}, "client_id must be non-empty"),
    ({"client_id": "i\x00d"}, "client_id must be at most 1024 printable characters"),
    ({"client_id": "i" * 1025}, "client_id must be at most 1024 printable characters"),
    ({"client_secret": b"secret"}, "client_secret must be a string, not bytes"),
    ({"client_secret": ""}, "client_secret must be non-empty"),
    ({"environment": "preprod"}, "environment must be an Environment, not str"),
    ({"environment": None}, "environment must be an Environment, not NoneType"),
    ({"scopes": ["post:charges", 5]}, "a scope must be a string or a Scope"),
    ({"scopes": ["post charges"]}, "visible ASCII"),
    ({"scopes": "post:charges crédito"}, "visible ASCII"),
    ({"refresh_margin": -1}, "refresh_margin must be a finite number >= 0"),
    ({"refresh_margin": math.nan}, "refresh_margin must be a finite number >= 0"),
    ({"refresh_margin": math.inf}, "refresh_margin must be a finite number >= 0"),
    ({"refresh_margin": "60"}, "refresh_margin must be a number of seconds"),
    ({"refresh_margin": True}, "refresh_margin must be a number of seconds"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"timeout": 0.0}, "timeout must be > 0"),
    ({"timeout": -1.0}, "timeout must be a finite number >= 0"),
    ({"timeout": math.inf}, "timeout must be a finite number >= 0"),
    ({"timeout": math.nan}, "timeout must be a finite number >= 0"),
    ({"timeout": "10"}, "timeout must be a number of seconds"),
    ({"timeout": None}, "timeout must be a number of seconds"),
    ({"timeout": False}, "timeout must be a number of seconds"),
    ({"timeout": httpx.Timeout(None)}, "timeout must bound every phase"),
    ({"timeout": httpx.Timeout(5.0, read=None)}, "timeout must bound every phase"),
    ({"timeout": httpx.Timeout(5.0, connect=None)}, "timeout must bound every phase"),
    ({"timeout": httpx.Timeout(5.0, write=None)}, "timeout must bound every phase"),
    ({"timeout": httpx.Timeout(5.0, pool=None)}, "timeout must bound every phase"),
    ({"http_client": "client"}, "http_client must be an httpx.AsyncClient, not str"),
    ({"retry": {"attempts": 3}}, "retry must be a RetryPolicy, not dict"),
    ({"retry": 3}, "retry must be a RetryPolicy, not int"),
    ({"extra_origins": ["https://a.example/path"]}, "with no path"),
    ({"extra_origins": "http://evil.example"}, "must use https://"),
    ({"extra_origins": [5]}, "must be a non-empty URL string"),
    ({"assumed_expires_in": 0}, "assumed_expires_in must be a positive whole number"),
    ({"assumed_expires_in": -300}, "assumed_expires_in must be a positive whole number"),
    ({"assumed_expires_in": True}, "assumed_expires_in must be a positive whole number"),
    ({"assumed_expires_in": 300.0}, "assumed_expires_in must be a positive whole number"),
    ({"assumed_expires_in": "300"}, "assumed_expires_in must be a positive whole number"),
    ({"assumed_expires_in": MAX_EXPIRES_IN + 1}, "assumed_expires_in must be a positive"),
]


@pytest.mark.parametrize(("arguments", "fragment"), BAD_ARGUMENTS)
def test_constructor_refuses_bad_arguments(arguments: dict[str, Any], fragment: str) -> None:
    """Every bad argument is a ConfigurationError (a ValueError) that never shows the secret."""
    with pytest.raises(ConfigurationError) as caught:
        make_auth(**arguments)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, PaymeAuthError)
    assert fragment in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)
    assert CLIENT_SECRET not in repr(caught.value)


def test_constructor_refuses_a_sync_http_client() -> None:
    """A synchronous httpx.Client as http_client is a ConfigurationError."""
    with (
        httpx.Client() as client,
        pytest.raises(ConfigurationError, match=r"http_client must be an httpx\.AsyncClient"),
    ):
        make_auth(http_client=client)


@pytest.mark.parametrize(
    "secret",
    [
        f" {CLIENT_SECRET}",
        f"{CLIENT_SECRET} ",
        f"{CLIENT_SECRET}\n",
        f"{CLIENT_SECRET}\x00",
        f"{CLIENT_SECRET}\u200b",
        CLIENT_SECRET * 60,
    ],
)
def test_a_bad_secret_is_not_shown(secret: str) -> None:
    """A refused client secret never appears in the error, in any form."""
    with pytest.raises(ConfigurationError, match=r"^client_secret must") as caught:
        make_auth(client_secret=secret)
    message = str(caught.value) + repr(caught.value) + repr(caught.value.args)
    assert CLIENT_SECRET not in message
    assert secret.strip() not in message


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"scopes": 5}, "scope"),
        ({"extra_origins": 5}, "extra_origins"),
        ({"clock": 5}, "clock"),
    ],
)
def test_constructor_refuses_wrong_types(arguments: dict[str, Any], fragment: str) -> None:
    """A non-iterable scopes or extra_origins, or a non-callable clock, is a ConfigurationError."""
    with pytest.raises(ConfigurationError) as caught:
        make_auth(**arguments)
    assert fragment in str(caught.value)


def test_constructor_accepts_valid_edge_values() -> None:
    """Zero refresh margin, the longest assumed lifetime and no assumption at all are accepted."""
    assert make_auth(refresh_margin=0)._settings.refresh_margin == 0.0
    assert make_auth(assumed_expires_in=MAX_EXPIRES_IN)._settings.assumed_expires_in == (
        MAX_EXPIRES_IN
    )
    assert make_auth(assumed_expires_in=None)._settings.assumed_expires_in is None
    assert make_auth(assumed_expires_in=1)._settings.assumed_expires_in == 1
    policy = RetryPolicy(attempts=1)
    assert make_auth(retry=policy)._settings.retry is policy


def test_a_sync_client_sends_no_token_to_another_origin() -> None:
    """httpx.Client(auth=PaymeAuth(...)): a request to another origin goes out untouched,
    and no token is fetched for it."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    auth = make_auth()
    with httpx.Client(auth=auth, transport=httpx.MockTransport(handler)) as client:
        client.get("https://elsewhere.example/")
    assert [request.headers.get("Authorization") for request in sent] == [None]
    assert "ALG-API-VERSION" not in sent[0].headers
    assert auth.stats().token_requests == 0
