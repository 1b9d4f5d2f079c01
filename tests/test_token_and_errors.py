"""The AccessToken value, the exception tree, and the public surface of the package."""

from __future__ import annotations
import __future__

import ast
import copy
import hashlib
import inspect
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest

import payme_auth
from payme_auth import (
    AccessToken,
    AuthClosedError,
    ConfigurationError,
    InsufficientScopeError,
    InvalidCredentialsError,
    PaymeAuthError,
    TokenEndpointUnavailableError,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from payme_auth import _errors as errors_module
from payme_auth._token import fingerprint

from .conftest import TOKEN_MARK, new_token_value

# -- AccessToken ------------------------------------------------------------------------------


def make_token(value: str | None = None, **overrides: object) -> AccessToken:
    """A token obtained at 100.0 living 8600 s; keywords replace fields."""
    fields: dict[str, object] = {
        "value": value or new_token_value(),
        "scope": ["post:charges", "create:token"],
        "expires_in": 8600,
        "obtained_at": 100.0,
    }
    fields.update(overrides)
    return AccessToken(**fields)  # type: ignore[arg-type]


def test_token_repr_and_str_hide_the_value() -> None:
    """repr() and str() show type, sorted scopes, lifetime and fingerprint, never the value."""
    token = make_token("TOKEN-SECRET-abc.def.ghi")
    digest = hashlib.sha256(b"TOKEN-SECRET-abc.def.ghi").hexdigest()[:12]
    expected = (
        "AccessToken(token_type='Bearer', scope='create:token post:charges', "
        f"expires_in=8600, fingerprint='{digest}')"
    )
    assert repr(token) == expected
    assert str(token) == expected
    assert f"{token}" == expected
    assert TOKEN_MARK not in repr(token) + str(token) + f"{token!r}" + repr([token])


def test_token_fingerprint() -> None:
    """The fingerprint is the first 12 hex digits of SHA-256, stable and distinct per value."""
    token = make_token("abc")
    assert token.fingerprint == hashlib.sha256(b"abc").hexdigest()[:12]
    assert token.fingerprint == fingerprint("abc")
    assert re.fullmatch(r"[0-9a-f]{12}", token.fingerprint)
    assert make_token("abc").fingerprint == token.fingerprint
    assert make_token("abd").fingerprint != token.fingerprint


def test_token_expiry_arithmetic() -> None:
    """expires_at = obtained_at + expires_in; remaining counts down; expiry is at expires_at."""
    token = make_token(expires_in=60, obtained_at=1000.5)
    assert token.expires_at == 1060.5
    assert token.remaining(1000.5) == 60.0
    assert token.remaining(1030.0) == 30.5
    assert token.remaining(1070.5) == -10.0
    assert token.is_expired(1000.5) is False
    assert token.is_expired(1060.4) is False
    assert token.is_expired(1060.5) is True
    assert token.is_expired(2000.0) is True


def test_token_authorization_header() -> None:
    """authorization is "Bearer " and the value."""
    assert make_token("abc.def").authorization == "Bearer abc.def"


def test_token_defaults_and_scope_conversion() -> None:
    """token_type defaults to Bearer; the scope becomes a frozenset."""
    token = make_token(scope=("a", "b", "a"))
    assert token.token_type == "Bearer"
    assert token.scope == frozenset({"a", "b"})
    assert isinstance(token.scope, frozenset)


def test_token_is_frozen_keyword_only_and_hashable() -> None:
    """A token cannot be changed, is built with keywords only, and equal tokens hash alike."""
    token = make_token("abc")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        token.value = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        token.expires_in = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        AccessToken("abc", "Bearer", ["x"], 1, 0.0)  # type: ignore[call-arg]
    twin = make_token("abc")
    assert token == twin
    assert hash(token) == hash(twin)
    assert make_token("abc", obtained_at=101.0) != token


# -- errors ------------------------------------------------------------------------------------

ERROR_CLASSES: list[type[PaymeAuthError]] = [
    PaymeAuthError,
    ConfigurationError,
    AuthClosedError,
    TokenError,
    TokenRefusedError,
    InvalidCredentialsError,
    InsufficientScopeError,
    TokenResponseError,
    TokenEndpointUnavailableError,
]


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (PaymeAuthError, (Exception,)),
        (ConfigurationError, (PaymeAuthError, ValueError)),
        (AuthClosedError, (PaymeAuthError, RuntimeError)),
        (TokenError, (PaymeAuthError,)),
        (TokenRefusedError, (TokenError,)),
        (InvalidCredentialsError, (TokenRefusedError,)),
        (InsufficientScopeError, (TokenRefusedError,)),
        (TokenResponseError, (TokenError,)),
        (TokenEndpointUnavailableError, (TokenError,)),
    ],
)
def test_error_hierarchy(cls: type[Exception], bases: tuple[type[BaseException], ...]) -> None:
    """Each error has exactly the bases drawn in the _errors docstring."""
    assert cls.__bases__ == bases


def _drawn_tree() -> dict[str, str]:
    """Read the tree drawn in payme_auth._errors' docstring as {class: parent}."""
    doc = errors_module.__doc__
    assert doc is not None
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        found = re.match(r"^(?P<lead>[\s│├└─]*)(?P<name>[A-Z]\w*Error)\b", line)
        if not found:
            continue
        depth = len(found["lead"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[found["name"]] = stack[-1][1]
        stack.append((depth, found["name"]))
    return parents


def test_error_hierarchy_matches_the_drawing() -> None:
    """The docstring's drawing names every error class, each under its real parent."""
    drawn = _drawn_tree()
    assert set(drawn) | {"PaymeAuthError"} == {cls.__name__ for cls in ERROR_CLASSES}
    for name, parent in drawn.items():
        cls = getattr(payme_auth, name)
        assert cls.__bases__[0].__name__ == parent, name


def test_every_error_class_is_exported_and_caught_by_the_base() -> None:
    """Every exception class in _errors is public and a PaymeAuthError."""
    defined = {
        name
        for name, value in vars(errors_module).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert defined == {cls.__name__ for cls in ERROR_CLASSES}
    assert set(errors_module.__all__) == defined
    for cls in ERROR_CLASSES:
        assert issubclass(cls, PaymeAuthError)
        assert getattr(payme_auth, cls.__name__) is cls


def test_configuration_and_closed_errors_are_builtin_kinds() -> None:
    """ConfigurationError is a ValueError; AuthClosedError a RuntimeError; neither a TokenError."""
    assert isinstance(ConfigurationError("x"), ValueError)
    assert isinstance(AuthClosedError("x"), RuntimeError)
    assert not issubclass(ConfigurationError, TokenError)
    assert not issubclass(AuthClosedError, TokenError)
    assert str(ConfigurationError("bad timeout")) == "bad timeout"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "no token"),
        ({"status_code": 401}, "no token (HTTP=401)"),
        ({"code": "01"}, "no token (code=01)"),
        ({"error": "access_denied"}, "no token (error=access_denied)"),
        ({"detail": "Unauthorized"}, "no token - Unauthorized"),
        ({"detail": ""}, "no token"),
        (
            {"status_code": 400, "code": "01", "error": "invalid_request", "detail": "Falta"},
            "no token (HTTP=400, code=01, error=invalid_request) - Falta",
        ),
        ({"status_code": 503, "detail": "down"}, "no token (HTTP=503) - down"),
    ],
)
@pytest.mark.parametrize(
    "cls",
    [
        TokenError,
        TokenRefusedError,
        InvalidCredentialsError,
        InsufficientScopeError,
        TokenResponseError,
    ],
)
def test_token_error_str(cls: type[TokenError], kwargs: dict[str, object], expected: str) -> None:
    """str() is the message, then (HTTP=, code=, error=) when known, then "- detail"."""
    error = cls("no token", **kwargs)  # type: ignore[arg-type]
    assert str(error) == expected
    assert repr(error) == f"{cls.__name__}({expected!r})"
    assert error.args == ("no token",)
    assert error.status_code == kwargs.get("status_code")
    assert error.code == kwargs.get("code")
    assert error.error == kwargs.get("error")
    assert error.detail == kwargs.get("detail")


def test_token_error_str_without_args() -> None:
    """A TokenError whose args were emptied falls back to its class name."""
    error = TokenResponseError("x", status_code=200)
    error.args = ()
    assert str(error) == "TokenResponseError (HTTP=200)"


def test_unavailable_error_fields() -> None:
    """TokenEndpointUnavailableError carries attempts and Retry-After besides the details."""
    error = TokenEndpointUnavailableError(
        "the token endpoint is unavailable", attempts=3, retry_after=12.5, status_code=503
    )
    assert (error.attempts, error.retry_after, error.status_code) == (3, 12.5, 503)
    assert (error.code, error.error, error.detail) == (None, None, None)
    assert str(error) == "the token endpoint is unavailable (HTTP=503)"
    bare = TokenEndpointUnavailableError("down", attempts=1)
    assert (bare.attempts, bare.retry_after, bare.status_code) == (1, None, None)


def _full_error(cls: type[TokenError]) -> TokenError:
    details: dict[str, object] = {
        "status_code": 401,
        "code": "01",
        "error": "access_denied",
        "detail": "Unauthorized",
    }
    if cls is TokenEndpointUnavailableError:
        details.update(attempts=4, retry_after=2.5)
    return cls("refused", **details)  # type: ignore[arg-type]


def _same_error(copied: TokenError, original: TokenError) -> None:
    assert type(copied) is type(original)
    assert copied is not original
    assert copied.args == original.args
    assert str(copied) == str(original)
    assert vars(copied) == vars(original)
    for name in ("status_code", "code", "error", "detail"):
        assert getattr(copied, name) == getattr(original, name)


TOKEN_ERROR_CLASSES: list[type[TokenError]] = [
    TokenError,
    TokenRefusedError,
    InvalidCredentialsError,
    InsufficientScopeError,
    TokenResponseError,
    TokenEndpointUnavailableError,
]


@pytest.mark.parametrize("cls", TOKEN_ERROR_CLASSES)
def test_token_errors_pickle_with_their_details(cls: type[TokenError]) -> None:
    """Pickling a TokenError keeps its type, message and every detail."""
    original = _full_error(cls)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copied = pickle.loads(pickle.dumps(original, protocol=protocol))  # noqa: S301
        _same_error(copied, original)
    if isinstance(original, TokenEndpointUnavailableError):
        assert copied.attempts == 4
        assert copied.retry_after == 2.5


@pytest.mark.parametrize("cls", TOKEN_ERROR_CLASSES)
def test_token_errors_copy_with_their_details(cls: type[TokenError]) -> None:
    """copy.copy and copy.deepcopy keep a TokenError's type, message and details."""
    original = _full_error(cls)
    _same_error(copy.copy(original), original)
    _same_error(copy.deepcopy(original), original)


def test_unavailable_error_copy_keeps_attempts() -> None:
    """copy.copy of TokenEndpointUnavailableError keeps attempts and retry_after."""
    original = TokenEndpointUnavailableError("down", attempts=2, retry_after=None)
    copied = copy.copy(original)
    assert (copied.attempts, copied.retry_after) == (2, None)


@pytest.mark.parametrize("cls", [PaymeAuthError, ConfigurationError, AuthClosedError])
def test_plain_errors_pickle(cls: type[PaymeAuthError]) -> None:
    """The errors without details pickle and copy like ordinary exceptions."""
    original = cls("closed")
    for copied in (pickle.loads(pickle.dumps(original)), copy.copy(original)):  # noqa: S301
        assert type(copied) is cls
        assert copied.args == ("closed",)


def test_token_errors_are_raisable_and_catchable_by_base() -> None:
    """A subclass error is caught as TokenError and as PaymeAuthError."""
    with pytest.raises(PaymeAuthError) as caught:
        raise InvalidCredentialsError("no", status_code=401)
    assert isinstance(caught.value, TokenRefusedError)
    assert isinstance(caught.value, TokenError)
    assert caught.value.status_code == 401


# -- the public surface --------------------------------------------------------------------------

EXPECTED_ALL = [
    "API_VERSION",
    "AccessToken",
    "AuthClosedError",
    "AuthStats",
    "ConfigurationError",
    "Environment",
    "InsufficientScopeError",
    "InvalidCredentialsError",
    "MemoryTokenStore",
    "PaymeAuth",
    "PaymeAuthError",
    "RetryPolicy",
    "Scope",
    "SharedToken",
    "TokenEndpointUnavailableError",
    "TokenError",
    "TokenRefusedError",
    "TokenResponseError",
    "TokenStore",
    "__version__",
]


def _public_names() -> set[str]:
    """Names the package namespace exposes: no underscore, not a submodule nor a __future__ flag."""
    return {
        name
        for name, value in vars(payme_auth).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    } | {"__version__"}


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, has no duplicates, and lists exactly the expected API."""
    assert payme_auth.__all__ == sorted(payme_auth.__all__)
    assert len(set(payme_auth.__all__)) == len(payme_auth.__all__)
    assert payme_auth.__all__ == EXPECTED_ALL
    for name in payme_auth.__all__:
        assert hasattr(payme_auth, name), name


def test_all_is_exactly_the_public_names() -> None:
    """__all__ is exactly the sorted set of public names in the package namespace."""
    assert payme_auth.__all__ == sorted(_public_names())


def _attribute_docstrings(module: types.ModuleType) -> set[str]:
    """Module-level names followed by a string literal (an attribute docstring)."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    found: set[str] = set()
    for statement, following in zip(tree.body, tree.body[1:], strict=False):
        is_doc = (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
            and following.value.value.strip()
        )
        if not is_doc:
            continue
        if isinstance(statement, ast.Assign):
            found.update(t.id for t in statement.targets if isinstance(t, ast.Name))
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            found.add(statement.target.id)
    return found


@pytest.mark.parametrize("name", [name for name in EXPECTED_ALL if name != "__version__"])
def test_every_public_name_has_a_docstring(name: str) -> None:
    """Each exported class has its own docstring; each exported constant an attribute docstring."""
    value = getattr(payme_auth, name)
    if isinstance(value, type):
        doc = vars(value).get("__doc__")
        assert isinstance(doc, str), name
        assert doc.strip(), name
    else:
        from payme_auth import _config

        assert name in _attribute_docstrings(_config), name


@pytest.mark.parametrize("name", [name for name in EXPECTED_ALL if name[0].isupper()])
def test_public_methods_have_docstrings(name: str) -> None:
    """Every public method and property defined on an exported class has a docstring."""
    value = getattr(payme_auth, name)
    if not isinstance(value, type) or issubclass(value, BaseException):
        return
    for attribute, member in vars(value).items():
        if attribute.startswith("_"):
            continue
        target = member.fget if isinstance(member, property) else member
        if isinstance(target, (classmethod, staticmethod)):
            target = target.__func__
        if callable(target):
            assert inspect.getdoc(target), f"{name}.{attribute}"


def test_version_is_a_string() -> None:
    """__version__ is a non-empty string (the installed package's version)."""
    assert isinstance(payme_auth.__version__, str)
    assert payme_auth.__version__
    assert re.match(r"^\d+(\.\d+)*", payme_auth.__version__)


def test_package_is_typed() -> None:
    """The package ships a py.typed marker."""
    assert (Path(inspect.getfile(payme_auth)).parent / "py.typed").is_file()


def test_version_is_the_installed_distributions() -> None:
    """__version__ is a literal (free at import) that matches the package metadata."""
    from importlib.metadata import version

    assert payme_auth.__version__ == version("payme-auth")


@pytest.mark.parametrize("module", ["importlib.metadata", "asyncio"])
def test_import_leaves_costly_modules_unloaded(module: str) -> None:
    """Importing payme_auth loads neither importlib.metadata nor asyncio (about 10 ms each):
    the version is a literal, and asyncio is only looked up, once an event loop runs it."""
    program = f"import sys, payme_auth; print({module!r} in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False"
