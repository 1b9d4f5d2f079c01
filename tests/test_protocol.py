"""The sans-I/O protocol: the token request, reading answers, failures, retries, margins."""

from __future__ import annotations

import base64
import email.utils
import json
import math
import urllib.parse
from typing import Any

import attrs
import httpx
import pytest

from payme_auth import (
    AccessToken,
    ConfigurationError,
    Environment,
    InsufficientScopeError,
    InvalidCredentialsError,
    RetryPolicy,
    TokenError,
    TokenRefusedError,
    TokenResponseError,
)
from payme_auth import _protocol as protocol
from payme_auth._policy import effective_margin
from payme_auth._protocol import (
    MAX_EXPIRES_IN,
    MAX_RESPONSE_BYTES,
    MAX_TOKEN_LENGTH,
    Failure,
    TokenRequest,
    build_token_request,
    clean_text,
    parse_retry_after,
    read_token_response,
    spellings,
)

from .conftest import CLIENT_ID, CLIENT_SECRET, token_answer

REQUESTED = ("create:token", "post:charges")
OBTAINED_AT = 1234.5
WALL_NOW = 1_700_000_000.0


def read(
    answer: object,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> AccessToken | Failure:
    """Read *answer* (bytes as they are, anything else as JSON) as the token endpoint's answer."""
    body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    arguments: dict[str, Any] = {
        "requested_scopes": REQUESTED,
        "obtained_at": OBTAINED_AT,
        "now": WALL_NOW,
        "secrets": (CLIENT_SECRET,),
    }
    arguments.update(options)
    return read_token_response(status, httpx.Headers(headers or {}), body, **arguments)


def read_token(answer: object, **options: Any) -> AccessToken:
    """Read an answer that must give a token."""
    result = read(answer, **options)
    assert isinstance(result, AccessToken), result
    return result


def read_failure(answer: object, status: int = 200, **options: Any) -> Failure:
    """Read an answer that must give a failure."""
    result = read(answer, status, **options)
    assert isinstance(result, Failure), result
    assert isinstance(result.error, TokenError)
    assert result.error.status_code == status
    assert CLIENT_SECRET not in str(result.error)
    assert CLIENT_SECRET not in repr(result.error)
    return result


def answer_error(answer: object, **options: Any) -> TokenResponseError:
    """Read a 200 answer that must be refused as unusable (final, not retryable)."""
    failure = read_failure(answer, **options)
    assert type(failure.error) is TokenResponseError
    assert failure.retryable is False
    assert failure.retry_after is None
    return failure.error


# -- the request -----------------------------------------------------------------------------


def test_build_token_request_is_the_documented_one() -> None:
    """The request goes to the token URL with the six documented JSON fields and nothing else."""
    request = build_token_request(
        Environment.PREPROD, CLIENT_ID, CLIENT_SECRET, ["create:token", "post:charges"]
    )
    assert request.url == "https://auth.preprod.alignet.io/token"
    assert json.loads(request.content) == {
        "action": "authorize",
        "grant_type": "client_credentials",
        "audience": "https://api.preprod.alignet.io/",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": "create:token post:charges",
    }
    assert dict(request.headers) == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Accept-Encoding": "identity",
        "ALG-API-VERSION": "1709847567",
    }


def test_build_token_request_body_is_compact_json() -> None:
    """The body is compact UTF-8 JSON with the fields in the documented order."""
    request = build_token_request(Environment.PRODUCTION, "id", "sec", ["create:token"])
    assert request.content == (
        b'{"action":"authorize","grant_type":"client_credentials",'
        b'"audience":"https://api.alignet.io/","client_id":"id","client_secret":"sec",'
        b'"scope":"create:token"}'
    )


def test_build_token_request_follows_a_custom_environment() -> None:
    """A custom environment's token URL, audience and API version are used."""
    env = Environment(
        token_url="https://auth.wip.alignet.io/token",
        audience="https://api.dev.alignet.io",
        api_version="1618440906",
    )
    request = build_token_request(env, CLIENT_ID, CLIENT_SECRET, iter(["a:b", "c:d", "e:f"]))
    body = json.loads(request.content)
    assert request.url == "https://auth.wip.alignet.io/token"
    assert body["audience"] == "https://api.dev.alignet.io"
    assert body["scope"] == "a:b c:d e:f"
    assert request.headers["ALG-API-VERSION"] == "1618440906"


def test_token_request_hides_the_secret() -> None:
    """The request's repr does not show its body (which holds the secret); it is frozen."""
    request = build_token_request(Environment.PREPROD, CLIENT_ID, CLIENT_SECRET, ["create:token"])
    assert CLIENT_SECRET not in repr(request)
    assert CLIENT_SECRET.encode() in request.content
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.url = "https://evil.example/"  # type: ignore[misc]
    assert isinstance(request, TokenRequest)


# -- reading a 200 answer ------------------------------------------------------------------------


def test_documented_answer_gives_a_token() -> None:
    """The documented 200 answer gives a Bearer token with its scopes and lifetime."""
    answer = token_answer()
    token = read_token(answer)
    assert token.value == answer["access_token"]
    assert token.token_type == "Bearer"
    assert token.scope == frozenset(
        {"create:token", "post:charges", "get:charges", "delete:charges"}
    )
    assert token.expires_in == 8600
    assert token.obtained_at == OBTAINED_AT
    assert token.expires_at == OBTAINED_AT + 8600


def test_a_minimal_answer_gives_a_token() -> None:
    """Only access_token is needed: scopes default to the requested, lifetime to the assumed."""
    token = read_token({"access_token": "abc.def"})
    assert token.value == "abc.def"
    assert token.scope == frozenset(REQUESTED)
    assert token.expires_in == 300
    assert token.token_type == "Bearer"


def test_other_2xx_statuses_are_read_as_answers() -> None:
    """A 201 with a token is a token; a 204 with no body is an unusable answer."""
    assert isinstance(read(token_answer(), 201), AccessToken)
    error = read_failure(b"", 204).error
    assert type(error) is TokenResponseError
    assert str(error) == "the token answer is not JSON (HTTP=204)"


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (8600, 8600),
        (86400, 86400),
        ("8600", 8600),
        ("086400", 86400),
        (1, 1),
        ("1", 1),
        (MAX_EXPIRES_IN, MAX_EXPIRES_IN),
        (str(MAX_EXPIRES_IN), MAX_EXPIRES_IN),
    ],
)
def test_expires_in_accepted(expires_in: object, expected: int) -> None:
    """expires_in is read as an integer or a numeric string, from 1 s up to 366 days."""
    token = read_token(token_answer(expires_in=expires_in))
    assert token.expires_in == expected
    assert type(token.expires_in) is int


def test_expires_in_missing_uses_the_assumed_lifetime() -> None:
    """A missing or null expires_in means the assumed lifetime (300 s unless told)."""
    assert read_token(token_answer(expires_in=None)).expires_in == 300
    assert read_token({**token_answer(), "expires_in": None}).expires_in == 300
    assert read_token(token_answer(expires_in=None), assumed_expires_in=45).expires_in == 45


def test_expires_in_missing_is_an_error_without_an_assumption() -> None:
    """With assumed_expires_in=None a missing expires_in is a TokenResponseError."""
    error = answer_error(token_answer(expires_in=None), assumed_expires_in=None)
    assert str(error) == "the token answer has no expires_in (HTTP=200)"


@pytest.mark.parametrize(
    ("expires_in", "message"),
    [
        (8600.0, "is not a whole number of seconds: float"),
        (8600.5, "is not a whole number of seconds: float"),
        (True, "is not a whole number of seconds: bool"),
        (False, "is not a whole number of seconds: bool"),
        ("abc", "is not a whole number of seconds: str"),
        ("", "is not a whole number of seconds: str"),
        ("-5", "is not a whole number of seconds: str"),
        (" 8600", "is not a whole number of seconds: str"),
        ("8600.0", "is not a whole number of seconds: str"),
        ("١٢٣", "is not a whole number of seconds: str"),
        ([8600], "is not a whole number of seconds: list"),
        ({"seconds": 8600}, "is not a whole number of seconds: dict"),
        (0, "is out of range: 0"),
        ("0", "is out of range: 0"),
        (-1, "is out of range: -1"),
        (MAX_EXPIRES_IN + 1, f"is out of range: {MAX_EXPIRES_IN + 1}"),
        (10**30, f"is out of range: {10**30}"),
    ],
)
def test_expires_in_refused(expires_in: object, message: str) -> None:
    """A float, bool, non-numeric, zero, negative or huge expires_in is a TokenResponseError."""
    error = answer_error(token_answer(expires_in=expires_in))
    assert str(error) == f"the token answer's expires_in {message} (HTTP=200)"


@pytest.mark.parametrize("digits", ["366000000", "9" * 40, "0" * 30 + "99999999999"])
def test_expires_in_long_numeric_string_is_out_of_range(digits: str) -> None:
    """A numeric string beyond 366 days is out of range, however many digits it has."""
    error = answer_error(token_answer(expires_in=digits))
    assert str(error).startswith("the token answer's expires_in is out of range")


def test_expires_in_with_thousands_of_digits_is_refused() -> None:
    """A numeric string too long for int() is a TokenResponseError, not a ValueError."""
    error = answer_error(token_answer(expires_in="9" * 5000))
    assert "expires_in" in str(error)


@pytest.mark.parametrize("success", [True, "true", None])
def test_success_accepted(success: object) -> None:
    """success true, "true" or absent lets the token through."""
    assert isinstance(read_token(token_answer(success=success)), AccessToken)


@pytest.mark.parametrize("success", [False, "false"])
def test_success_false_is_refused_with_details(success: object) -> None:
    """success false (or "false") is a TokenResponseError carrying Pay-me's code and message."""
    status = {"code": "01", "message_ilgn": [{"locale": "es_PE", "value": "Error de prueba"}]}
    error = answer_error(token_answer(success=success, authorization={"meta": {"status": status}}))
    assert error.code == "01"
    assert error.detail == "Error de prueba"
    assert error.error is None
    assert str(error) == (
        "the token endpoint answered success=false (HTTP=200, code=01) - Error de prueba"
    )


def test_success_false_keeps_the_oauth_error() -> None:
    """success false with an OAuth-style error keeps the error code and description."""
    error = answer_error(
        {"success": False, "error": "access_denied", "error_description": "Unauthorized"}
    )
    assert (error.code, error.error, error.detail) == (None, "access_denied", "Unauthorized")


@pytest.mark.parametrize("success", ["yes", "True", "TRUE", "False", 1, 0, [], {}, "", "null"])
def test_success_other_values_are_refused(success: object) -> None:
    """A success value that is neither true nor false is a TokenResponseError."""
    error = answer_error(token_answer(success=success))
    assert str(error) == "the token answer's success field is neither true nor false (HTTP=200)"


def test_success_json_null_is_refused() -> None:
    """success: null is neither true nor false."""
    error = answer_error({**token_answer(), "success": None})
    assert "neither true nor false" in str(error)


@pytest.mark.parametrize("code", ["01", "03", "0", 0, "success_operation", "000"])
def test_non_success_status_code_is_refused(code: object) -> None:
    """A meta.status.code other than "00" is a TokenResponseError with the code and message."""
    status = {"code": code, "message_ilgn": [{"locale": "es_PE", "value": "No"}]}
    error = answer_error(token_answer(authorization={"meta": {"status": status}}))
    assert error.code == str(code)
    assert error.detail == "No"
    assert str(error) == (
        f"the token answer reports a non-success status (HTTP=200, code={code}) - No"
    )


@pytest.mark.parametrize(
    "authorization",
    [
        {"meta": {"status": {"code": "00"}}},
        {"meta": {"status": {"message_ilgn": []}}},
        {"meta": {"status": "00"}},
        {"meta": "x"},
        {},
        "text",
    ],
)
def test_status_code_00_or_absent_is_accepted(authorization: object) -> None:
    """A "00" code, or no readable meta.status at all, does not block the token."""
    assert isinstance(read_token(token_answer(authorization=authorization)), AccessToken)


def test_status_code_00_with_padding_is_accepted() -> None:
    """The code is compared after trimming white space."""
    answer = token_answer(authorization={"meta": {"status": {"code": " 00 "}}})
    assert isinstance(read_token(answer), AccessToken)


NO_TOKEN = "the token answer has no access_token (HTTP=200)"
BAD_TOKEN = "the token answer's access_token is not a valid header value (HTTP=200)"


@pytest.mark.parametrize(
    ("access_token", "message"),
    [
        (None, NO_TOKEN),
        ("", NO_TOKEN),
        (123, NO_TOKEN),
        (["a"], NO_TOKEN),
        ("abc def", BAD_TOKEN),
        ("abc\tdef", BAD_TOKEN),
        ("abc\r\nX-Evil: 1", BAD_TOKEN),
        ("abc\x00", BAD_TOKEN),
        ("abc\x7f", BAD_TOKEN),
        ("tökén", BAD_TOKEN),
        (" abc", BAD_TOKEN),
        ("x" * (MAX_TOKEN_LENGTH + 1), BAD_TOKEN),
    ],
)
def test_access_token_refused(access_token: object, message: str) -> None:
    """A missing, empty, non-string, non-visible-ASCII or too long access_token is refused."""
    answer = token_answer()
    if access_token is None:
        del answer["access_token"]
    else:
        answer["access_token"] = access_token
    error = answer_error(answer)
    assert str(error) == message


def test_access_token_json_null_is_missing() -> None:
    """access_token: null counts as missing."""
    error = answer_error({**token_answer(), "access_token": None})
    assert str(error) == "the token answer has no access_token (HTTP=200)"


def test_access_token_longest_and_every_visible_character() -> None:
    """A token of MAX_TOKEN_LENGTH characters, or using every visible ASCII character, is fine."""
    longest = "x" * MAX_TOKEN_LENGTH
    assert read_token(token_answer(access_token=longest)).value == longest
    visible = "".join(chr(code) for code in range(0x21, 0x7F))
    assert read_token(token_answer(access_token=visible)).value == visible


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", "bEaReR", None])
def test_token_type_bearer_or_absent(token_type: str | None) -> None:
    """A Bearer token type in any case, or none at all, gives a "Bearer" token."""
    assert read_token(token_answer(token_type=token_type)).token_type == "Bearer"


@pytest.mark.parametrize(
    ("token_type", "shown"),
    [
        ("MAC", "'MAC'"),
        ("DPoP", "'DPoP'"),
        ("Bearer ", "'Bearer'"),
        ("", "None"),
        (5, "'5'"),
        (["Bearer"], "None"),
        (False, "None"),
        ("Bea\nrer", "'Bea rer'"),
    ],
)
def test_token_type_other_is_refused(token_type: object, shown: str) -> None:
    """Any token type other than Bearer is a TokenResponseError naming it (cleaned)."""
    error = answer_error(token_answer(token_type=token_type))
    assert str(error) == f"the token type is {shown}, not Bearer (HTTP=200)"


def test_token_type_echoing_the_secret_is_scrubbed() -> None:
    """A token_type that echoes the client secret does not put it in the error."""
    result = read(token_answer(token_type=f"MAC {CLIENT_SECRET}"))
    assert isinstance(result, Failure)
    assert CLIENT_SECRET not in str(result.error)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("create:token get:charges", {"create:token", "get:charges"}),
        ("  create:token   api-test:create:token ", {"create:token", "api-test:create:token"}),
        ("", set()),
        (None, set(REQUESTED)),
    ],
)
def test_scope_read(scope: str | None, expected: set[str]) -> None:
    """The granted scope is the answer's (split on spaces), or the requested one when absent."""
    assert read_token(token_answer(scope=scope)).scope == frozenset(expected)


def test_scope_json_null_is_the_requested() -> None:
    """scope: null means the requested scopes."""
    assert read_token({**token_answer(), "scope": None}).scope == frozenset(REQUESTED)


@pytest.mark.parametrize("scope", [5, ["create:token"], {"a": 1}, True])
def test_scope_not_a_string_is_refused(scope: object) -> None:
    """A scope that is not a string is a TokenResponseError."""
    error = answer_error(token_answer(scope=scope))
    assert str(error) == "the token answer's scope is not a string (HTTP=200)"


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"", "not JSON"),
        (b"   ", "not JSON"),
        (b"<html>OK</html>", "not JSON"),
        (b'{"access_token": "abc"', "not JSON"),
        (b"\xff\xfe\xfa", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"null", "not a JSON object"),
        (b" null\n", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b'["access_token"]', "not a JSON object"),
        (b'"token"', "not a JSON object"),
        (b"8600", "not a JSON object"),
        (b"true", "not a JSON object"),
    ],
)
def test_body_not_a_json_object(body: bytes, what: str) -> None:
    """A body that is not JSON, or JSON that is not an object, is a TokenResponseError."""
    error = answer_error(body)
    assert str(error) == f"the token answer is {what} (HTTP=200)"


def test_truncated_answer_is_refused() -> None:
    """An answer cut at MAX_RESPONSE_BYTES is refused even if what was read parses."""
    error = answer_error(token_answer(), truncated=True)
    assert str(error) == f"the token answer is larger than {MAX_RESPONSE_BYTES} bytes (HTTP=200)"
    assert MAX_RESPONSE_BYTES == 256 * 1024


# -- classifying other statuses --------------------------------------------------------------------

PAYME_ENVELOPE = {
    "action": "authorize",
    "success": False,
    "authorization": {
        "meta": {
            "status": {
                "code": "01",
                "message_ilgn": [
                    {"locale": "es_PE", "value": "Credenciales inválidas"},
                    {"locale": "en_US", "value": "Invalid credentials"},
                ],
            }
        }
    },
}
AUTH0_STYLE = {"error": "access_denied", "error_description": "Unauthorized"}
GATEWAY_STYLE = {"message": "Forbidden"}

BODY_SHAPES: list[tuple[bytes, str | None, str | None, str | None]] = [
    (json.dumps(PAYME_ENVELOPE).encode(), "01", None, "Credenciales inválidas"),
    (json.dumps(AUTH0_STYLE).encode(), None, "access_denied", "Unauthorized"),
    (json.dumps(GATEWAY_STYLE).encode(), None, None, "Forbidden"),
    (b"", None, None, None),
    (b"<html><body>403 Forbidden</body></html>", None, None, None),
    (b"[1, 2]", None, None, None),
    (b"null", None, None, None),
]


@pytest.mark.parametrize(("body", "code", "oauth_error", "detail"), BODY_SHAPES)
def test_401_is_invalid_credentials(
    body: bytes, code: str | None, oauth_error: str | None, detail: str | None
) -> None:
    """401 is a final InvalidCredentialsError with the details any of the four shapes carries."""
    failure = read_failure(body, 401)
    assert type(failure.error) is InvalidCredentialsError
    assert failure.retryable is False
    assert failure.retry_after is None
    assert (failure.error.code, failure.error.error, failure.error.detail) == (
        code,
        oauth_error,
        detail,
    )
    assert str(failure.error).startswith(
        "Pay-me refused the client credentials or the requested scopes (HTTP=401"
    )


@pytest.mark.parametrize(("body", "code", "oauth_error", "detail"), BODY_SHAPES)
def test_403_is_insufficient_scope(
    body: bytes, code: str | None, oauth_error: str | None, detail: str | None
) -> None:
    """403 is a final InsufficientScopeError with the body's details."""
    failure = read_failure(body, 403)
    assert type(failure.error) is InsufficientScopeError
    assert failure.retryable is False
    assert (failure.error.code, failure.error.error, failure.error.detail) == (
        code,
        oauth_error,
        detail,
    )


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 415, 422, 451, 499])
@pytest.mark.parametrize(("body", "code", "oauth_error", "detail"), BODY_SHAPES)
def test_other_4xx_are_refusals(
    status: int, body: bytes, code: str | None, oauth_error: str | None, detail: str | None
) -> None:
    """Other 4xx (but 408/425/429) are final TokenRefusedErrors with the body's details."""
    failure = read_failure(body, status)
    assert type(failure.error) is TokenRefusedError
    assert failure.retryable is False
    assert failure.retry_after is None
    assert (failure.error.code, failure.error.error, failure.error.detail) == (
        code,
        oauth_error,
        detail,
    )
    assert str(failure.error).startswith(f"Pay-me rejected the token request (HTTP={status}")


def test_refusal_str_is_complete() -> None:
    """A refusal's str() shows the message, status, code, error and detail."""
    body = {**PAYME_ENVELOPE, "error": "invalid_scope"}
    error = read_failure(body, 400).error
    assert str(error) == (
        "Pay-me rejected the token request "
        "(HTTP=400, code=01, error=invalid_scope) - Credenciales inválidas"
    )


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 520, 599])
@pytest.mark.parametrize(("body", "code", "oauth_error", "detail"), BODY_SHAPES)
def test_retryable_statuses(
    status: int, body: bytes, code: str | None, oauth_error: str | None, detail: str | None
) -> None:
    """408, 425, 429 and 5xx are retryable TokenErrors with the body's details."""
    failure = read_failure(body, status)
    assert type(failure.error) is TokenError
    assert failure.retryable is True
    assert failure.retry_after is None
    assert (failure.error.code, failure.error.error, failure.error.detail) == (
        code,
        oauth_error,
        detail,
    )
    assert str(failure.error).startswith(f"it answered HTTP {status}")


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("12", 12.0),
        (" 0 ", 0.0),
        (email.utils.formatdate(WALL_NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(WALL_NOW - 90, usegmt=True), 0.0),
        ("soon", None),
        ("-3", None),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
def test_retryable_status_reads_retry_after(
    status: int, retry_after: str, expected: float | None
) -> None:
    """A retryable answer carries the Retry-After header in seconds from now."""
    failure = read_failure(b"", status, headers={"Retry-After": retry_after})
    assert failure.retryable is True
    assert failure.retry_after == expected


def test_refusal_ignores_retry_after() -> None:
    """A final refusal carries no Retry-After even if the server sent one."""
    failure = read_failure(b"", 401, headers={"Retry-After": "5"})
    assert failure.retry_after is None
    assert failure.retryable is False


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_redirect_is_a_response_error_naming_the_location(status: int) -> None:
    """A 3xx is a final TokenResponseError that says where it pointed."""
    failure = read_failure(b"", status, headers={"Location": "https://auth.alignet.io/v2/token"})
    assert type(failure.error) is TokenResponseError
    assert failure.retryable is False
    assert str(failure.error) == (
        f"the token endpoint redirected (HTTP {status}) to https://auth.alignet.io/v2/token: "
        f"check the token URL (HTTP={status})"
    )


def test_redirect_without_location() -> None:
    """A 3xx with no Location says "elsewhere"."""
    error = read_failure(b"", 302).error
    assert "redirected (HTTP 302) to elsewhere: check the token URL" in str(error)


def test_redirect_location_is_cleaned() -> None:
    """The Location is scrubbed of the secret and of control characters before it is shown."""
    location = f"https://evil.example/?s={CLIENT_SECRET}\x1b[2J"
    error = read_failure(b"", 307, headers={"Location": location}).error
    assert "to https://evil.example/?s=*** [2J: check" in str(error)


@pytest.mark.parametrize("status", [100, 101, 103, 199, 0, 600, 999])
def test_odd_statuses_are_response_errors(status: int) -> None:
    """A 1xx or out-of-range status is a final TokenResponseError."""
    failure = read_failure(json.dumps(token_answer()).encode(), status)
    assert type(failure.error) is TokenResponseError
    assert failure.retryable is False
    assert str(failure.error) == f"the token endpoint answered HTTP {status} (HTTP={status})"


def test_non_2xx_is_never_a_token() -> None:
    """A perfect token answer with a 4xx or 5xx status is still a failure."""
    for status in (400, 401, 403, 429, 500):
        assert isinstance(read(token_answer(), status), Failure)


# -- details: where they come from, and how they are cleaned ---------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        ({"meta": {"status": {"code": "02", "message": "top level"}}}, "02", "top level"),
        (
            {"x": {"meta": {"status": {"code": "03", "message_ilgn": []}}}, "message": "gw"},
            "03",
            "gw",
        ),
        (
            {"x": {"meta": {"status": {"code": "04", "message_ilgn": ["text"], "message": "m"}}}},
            "04",
            "m",
        ),
        (
            {
                "nonce_creation": {
                    "meta": {"status": {"code": 5, "message_ilgn": [{"value": "v"}]}}
                },
                "error_description": "ignored",
            },
            "5",
            "v",
        ),
        ({"meta": {"status": {"code": ["x"]}}, "error_description": "ed"}, None, "ed"),
        ({"meta": "x", "error_description": "", "message": "last"}, None, "last"),
        ({"error": {"nested": True}, "message": 42}, None, "42"),
        ({"error_description": True, "message": None}, None, None),
    ],
)
def test_details_are_found_wherever_they_are(body: object, code: str | None, detail: str) -> None:
    """meta.status anywhere one level down; detail from message_ilgn, message, error_description."""
    error = read_failure(body, 400).error
    assert (error.code, error.detail) == (code, detail)


def test_details_prefer_pay_me_message() -> None:
    """Pay-me's message wins over error_description, which wins over message."""
    body = {**PAYME_ENVELOPE, **AUTH0_STYLE, **GATEWAY_STYLE}
    assert read_failure(body, 400).error.detail == "Credenciales inválidas"
    body = {**AUTH0_STYLE, **GATEWAY_STYLE}
    assert read_failure(body, 400).error.detail == "Unauthorized"


def test_details_are_shortened() -> None:
    """A detail longer than 200 characters is cut to 200, ending with an ellipsis."""
    error = read_failure({"error_description": "x" * 5000}, 400).error
    assert error.detail == "x" * 199 + "…"
    assert len(error.detail) == 200
    error = read_failure({"error_description": "y" * 200}, 400).error
    assert error.detail == "y" * 200


def test_details_lose_control_characters() -> None:
    """Control characters in server text become single spaces; the ends are trimmed."""
    body = {
        "error": "bad\r\nrequest",
        "error_description": "\tline one\r\n\r\nline two\x00\x1b[31m red\x85\x9f\x7f ",
    }
    error = read_failure(body, 400).error
    assert error.error == "bad request"
    assert error.detail == "line one line two [31m red"
    assert "\n" not in str(error)


def test_details_are_scrubbed_of_the_secret() -> None:
    """A server that echoes the client secret in any field does not get it into the error."""
    body = {
        "error": f"bad_{CLIENT_SECRET}",
        "error_description": f"client_secret={CLIENT_SECRET} is wrong; {CLIENT_SECRET}",
        "authorization": {"meta": {"status": {"code": CLIENT_SECRET}}},
    }
    for status in (400, 401, 403, 429, 500):
        error = read_failure(body, status).error
        assert error.code == "***"
        assert error.error == "bad_***"
        assert error.detail == "client_secret=*** is wrong; ***"


def test_success_false_details_are_scrubbed() -> None:
    """success=false on a 200 scrubs the secret from the details as well."""
    body = {"success": False, "error": CLIENT_SECRET, "message": f"no {CLIENT_SECRET}"}
    error = answer_error(body)
    assert (error.error, error.detail) == ("***", "no ***")


def test_clean_text_rules() -> None:
    """clean_text keeps strings and numbers, drops everything else, and blanks become None."""
    assert clean_text("hello") == "hello"
    assert clean_text(12) == "12"
    assert clean_text(1.5) == "1.5"
    assert clean_text(True) is None
    assert clean_text(None) is None
    assert clean_text(["x"]) is None
    assert clean_text({"x": 1}) is None
    assert clean_text("") is None
    assert clean_text(" \r\n\t ") is None
    assert clean_text("a s3cret b", ["", "s3cret"]) == "a *** b"
    assert clean_text("s3cret", ["s3cret"]) == "***"


def test_clean_text_scrubs_a_secret_hidden_by_control_characters() -> None:
    """A secret echoed with a control character for its space is still scrubbed."""
    secret = "abc def-SECRET"
    assert secret not in (clean_text("abc\x00def-SECRET", [secret]) or "")


SPELLED_SECRET = 'contraseña-ü-"q"-back\\slash/x+y'


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        pytest.param(json.dumps({"client_secret": SPELLED_SECRET}), "client_secret", id="json"),
        pytest.param(
            json.dumps({"s": SPELLED_SECRET}, ensure_ascii=False), '"s"', id="json-unicode"
        ),
        pytest.param(
            json.dumps({"s": SPELLED_SECRET}).replace("\\u00f1", "\\u00F1"), '"s"', id="upper-hex"
        ),
        pytest.param(json.dumps(json.dumps({"s": SPELLED_SECRET})), "s", id="json-twice"),
        pytest.param(
            "client_secret=" + urllib.parse.quote_plus(SPELLED_SECRET), "client_secret=", id="form"
        ),
        pytest.param("s=" + urllib.parse.quote(SPELLED_SECRET, safe=""), "s=", id="percent"),
        pytest.param(
            "Basic " + base64.b64encode(f"id:{SPELLED_SECRET}".encode()).decode(),
            "Basic ",
            id="basic-auth",
        ),
        pytest.param(
            "x " + base64.urlsafe_b64encode(f"ab{SPELLED_SECRET}".encode()).decode().rstrip("="),
            "x ",
            id="base64-url-safe-shifted",
        ),
        pytest.param(SPELLED_SECRET.encode().decode("latin-1"), "", id="mojibake"),
    ],
)
def test_clean_text_scrubs_every_spelling(text: str, kept: str) -> None:
    """A secret JSON-escaped, URL-encoded, in base64 or as mojibake is scrubbed all the same,
    and the text around it is kept."""
    cleaned = clean_text(text, [SPELLED_SECRET]) or ""
    assert "***" in cleaned
    assert kept in cleaned
    for spelling in spellings(SPELLED_SECRET):
        assert spelling not in cleaned


def test_runs_too_short_to_hold_a_secret_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Of 256 KiB of short words, none is decoded as base64 (each was, costing 0.65 s): a
    run shorter than 4/3 of the shortest secret cannot hold it. A long enough one is."""
    tried: list[str] = []
    hides = protocol._hides

    def counting(run: str, needles: Any) -> bool:
        tried.append(run)
        return hides(run, needles)

    monkeypatch.setattr(protocol, "_hides", counting)
    clean_text("ab " * 87_000, ["TOKEN-SECRET-abc"])
    assert tried == []
    assert (
        clean_text("Basic " + base64.b64encode(b"TOKEN-SECRET-abc").decode(), ["TOKEN-SECRET-abc"])
        == "Basic ***"
    )
    assert len(tried) == 1


def test_a_secret_cut_by_the_length_limit_is_scrubbed_first() -> None:
    """A long text is scrubbed before it is cut: no half secret at the end."""
    cleaned = clean_text("x" * 190 + SPELLED_SECRET, [SPELLED_SECRET]) or ""
    assert cleaned.endswith("***")
    assert SPELLED_SECRET[:5] not in cleaned


def test_a_failed_answer_hides_its_own_token_and_has_no_traceback() -> None:
    """An answer refused for its token type hides the token it carried, in any spelling, and
    its error holds no frame (whose locals hold the answer)."""
    token = "TOKEN-SECRET-abc/def+g=="
    answer = token_answer(access_token=token, token_type=f"MAC {urllib.parse.quote(token)}")
    result = read_token_response(
        200,
        {},
        json.dumps(answer).encode(),
        requested_scopes=["create:token"],
        obtained_at=0.0,
        now=0.0,
    )
    assert isinstance(result, Failure)
    assert result.error.__traceback__ is None
    assert "MAC ***" in str(result.error)
    assert "TOKEN-SECRET" not in str(result.error)


def test_clean_text_gives_a_single_line() -> None:
    """clean_text output is a single line by str.splitlines()."""
    cleaned = clean_text("one\u2028two\u2029three")
    assert cleaned is not None
    assert len(cleaned.splitlines()) == 1


# -- Retry-After -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        ("  7\t", 7.0),
        ("007", 7.0),
        ("86400", 86400.0),
        (email.utils.formatdate(WALL_NOW + 30, usegmt=True), 30.0),
        ("Tue, 14 Nov 2023 22:12:20 GMT", 0.0),
        ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0),
        ("Tue, 14 Nov 2023 23:14:20 +0100", 60.0),
        ("Tue, 14 Nov 2023 22:14:20 +0000", 60.0),
        ("Tue, 14 Nov 2023 22:15:20 GMT", 120.0),
        (email.utils.formatdate(WALL_NOW - 3600, usegmt=True), 0.0),
        ("Tue, 14 Nov 2023 22:14:20 -0000", 60.0),
        (email.utils.formatdate(WALL_NOW + 30.0), 30.0),
        ("Tue, 14 Nov 2023 22:14:20", 60.0),
        ("", None),
        ("soon", None),
        ("1.5", None),
        ("-1", None),
        ("+5", None),
        ("5 s", None),
        ("١٢", None),
        ("Tue, 31 Feb 2023 22:14:20 GMT", None),
        ("Tue, 14 Nov 99999 22:14:20 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds or an aware HTTP date (past = 0); naive dates and anything else are ignored."""
    assert WALL_NOW == 1_700_000_000.0  # = Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after(value, now=WALL_NOW) == expected


# -- RetryPolicy -----------------------------------------------------------------------------------


def test_retry_policy_defaults() -> None:
    """The default policy: 3 attempts, 0.5 s first wait, 8 s cap, 30 s Retry-After cap."""
    policy = RetryPolicy()
    assert (policy.attempts, policy.backoff, policy.max_backoff, policy.max_retry_after) == (
        3,
        0.5,
        8.0,
        30.0,
    )


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (4, 0.0, 4.0),
        (5, 0.0, 8.0),
        (6, 0.0, 8.0),
        (7, 0.0, 8.0),
        (9, 0.0, 8.0),
        (5, 0.5, 12.0),
    ],
)
def test_retry_delay_doubles_up_to_the_cap(attempt: int, draw: float, expected: float) -> None:
    """The wait after attempt n is backoff * 2**(n-1), capped, times 0.5 + draw / 2."""
    policy = RetryPolicy(attempts=10, backoff=1.0, max_backoff=16.0)
    assert policy.delay(attempt, retry_after=None, draw=draw) == expected


def test_retry_delay_jitter_bounds() -> None:
    """With draw 0 the wait is half the computed one; with draw near 1 almost all of it."""
    policy = RetryPolicy(attempts=5, backoff=2.0, max_backoff=3.0)
    assert policy.delay(1, retry_after=None, draw=0.0) == 1.0
    high = policy.delay(1, retry_after=None, draw=0.999)
    assert high == pytest.approx(1.999)
    assert policy.delay(1, retry_after=None, draw=math.nextafter(1.0, 0.0)) == 2.0
    capped = policy.delay(3, retry_after=None, draw=0.999)
    assert capped == pytest.approx(2.9985)
    assert policy.delay(3, retry_after=None, draw=0.0) == 1.5


def test_retry_delay_stops_when_attempts_run_out() -> None:
    """After the last allowed attempt there is no wait: give up."""
    policy = RetryPolicy(attempts=3)
    assert policy.delay(2, retry_after=None, draw=0.0) == 0.5
    assert policy.delay(3, retry_after=None, draw=0.0) is None
    assert policy.delay(4, retry_after=0.0, draw=0.0) is None
    assert RetryPolicy(attempts=1).delay(1, retry_after=None, draw=0.0) is None


def test_retry_after_is_a_floor() -> None:
    """The wait is never shorter than Retry-After, and Retry-After 0 changes nothing."""
    policy = RetryPolicy(attempts=3, backoff=1.0)
    assert policy.delay(1, retry_after=5.0, draw=0.0) == 5.0
    assert policy.delay(1, retry_after=0.2, draw=0.0) == 0.5
    assert policy.delay(1, retry_after=0.0, draw=0.5) == 0.75
    assert policy.delay(2, retry_after=30.0, draw=0.0) == 30.0


def test_retry_after_above_the_limit_gives_up() -> None:
    """A Retry-After longer than max_retry_after ends the fetch at once."""
    policy = RetryPolicy(attempts=5, max_retry_after=10.0)
    assert policy.delay(1, retry_after=10.0, draw=0.0) == 10.0
    assert policy.delay(1, retry_after=10.001, draw=0.0) is None
    assert policy.delay(1, retry_after=math.inf, draw=0.0) is None
    assert RetryPolicy(max_retry_after=0).delay(1, retry_after=1.0, draw=0.0) is None


def test_retry_policy_with_no_backoff() -> None:
    """backoff 0 means no wait between attempts, unless the server asks for one."""
    policy = RetryPolicy(attempts=4, backoff=0, max_backoff=0)
    assert policy.delay(1, retry_after=None, draw=0.9) == 0.0
    assert policy.delay(2, retry_after=3.0, draw=0.9) == 3.0


def test_retry_policy_is_frozen_and_keyword_only() -> None:
    """RetryPolicy cannot be changed and takes keyword arguments only."""
    policy = RetryPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.attempts = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"attempts": 0}, "attempts must be between 1 and 100, not 0"),
        ({"attempts": 101}, "attempts must be between 1 and 100, not 101"),
        ({"attempts": -1}, "attempts must be between 1 and 100, not -1"),
        ({"attempts": True}, "attempts must be an int, not True"),
        ({"attempts": 3.0}, "attempts must be an int, not 3.0"),
        ({"attempts": "3"}, "attempts must be an int, not '3'"),
        ({"backoff": -0.1}, "backoff must be a finite number >= 0, not -0.1"),
        ({"backoff": math.nan}, "backoff must be a finite number >= 0, not nan"),
        ({"backoff": "1"}, "backoff must be a number of seconds, not '1'"),
        ({"max_backoff": math.inf}, "max_backoff must be a finite number >= 0, not inf"),
        ({"max_backoff": None}, "max_backoff must be a number of seconds, not None"),
        ({"max_retry_after": -1}, "max_retry_after must be a finite number >= 0, not -1"),
        ({"max_retry_after": False}, "max_retry_after must be a number of seconds, not False"),
    ],
)
def test_retry_policy_validation(arguments: dict[str, Any], message: str) -> None:
    """Each bad RetryPolicy setting is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**arguments)
    assert str(caught.value) == message


def test_retry_policy_edge_values_are_accepted() -> None:
    """1 and 100 attempts, zero waits and integer seconds are valid."""
    assert RetryPolicy(attempts=1).attempts == 1
    assert RetryPolicy(attempts=100).attempts == 100
    policy = RetryPolicy(backoff=0, max_backoff=2, max_retry_after=0)
    assert (policy.backoff, policy.max_backoff, policy.max_retry_after) == (0, 2, 0)


# -- refresh margin --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("margin", "expires_in", "expected"),
    [
        (60.0, 59, 29.5),
        (60.0, 8600, 60.0),
        (60.0, 120, 60.0),
        (60.0, 119, 59.5),
        (0.0, 10, 0.0),
        (60.0, 1, 0.5),
    ],
)
def test_effective_margin(margin: float, expires_in: int, expected: float) -> None:
    """The margin is as given up to half the token's lifetime, and half beyond."""
    assert effective_margin(margin, expires_in) == expected
