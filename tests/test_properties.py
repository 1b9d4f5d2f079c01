"""Property tests: no answer, however malformed, makes read_token_response misbehave."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from payme_auth import AccessToken, RetryPolicy, TokenError
from payme_auth._protocol import (
    MAX_EXPIRES_IN,
    Failure,
    clean_text,
    parse_retry_after,
    read_token_response,
)

from .conftest import CLIENT_SECRET

# The autouse log guard in conftest is function-scoped; it checks logs once after all
# examples, which is what we want here, so the health check about it does not apply.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
REQUESTED = ("create:token", "post:charges")
RETRYABLE = {408, 425, 429, *range(500, 600)}

FIELDS = [
    "action",
    "success",
    "access_token",
    "scope",
    "expires_in",
    "token_type",
    "authorization",
    "meta",
    "status",
    "code",
    "message",
    "message_ilgn",
    "value",
    "error",
    "error_description",
]

interesting_text = st.sampled_from(
    [
        CLIENT_SECRET,
        f"secret={CLIENT_SECRET}",
        f"{CLIENT_SECRET}\x00{CLIENT_SECRET}",
        "Bearer",
        "bearer",
        "MAC",
        "true",
        "false",
        "00",
        "01",
        "8600",
        "0",
        "-1",
        "create:token post:charges",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
        "",
        " ",
        "\r\n",
        "null",
    ]
)
texts = st.one_of(
    st.text(max_size=40),
    interesting_text,
    st.builds(lambda a, b: a + CLIENT_SECRET + b, st.text(max_size=10), st.text(max_size=10)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=MAX_EXPIRES_IN + 2),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(FIELDS)), children, max_size=5
        ),
    ),
    max_leaves=20,
)
expires_values = st.one_of(
    st.integers(min_value=-5, max_value=2 * MAX_EXPIRES_IN),
    st.from_regex(r"[0-9]{1,15}", fullmatch=True),
    json_values,
)
token_values = st.one_of(
    st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True),
    st.text(max_size=20),
    json_values,
)


def _payme_status(code: object, message: object) -> dict[str, Any]:
    return {
        "meta": {"status": {"code": code, "message_ilgn": [{"locale": "es_PE", "value": message}]}}
    }


statuses = st.one_of(
    st.builds(_payme_status, st.sampled_from(["00", "01"]) | json_values, json_values), json_values
)
token_like = st.fixed_dictionaries(
    {},
    optional={
        "action": st.just("authorize") | json_values,
        "success": st.sampled_from([True, False, "true", "false"]) | json_values,
        "access_token": token_values,
        "scope": texts | json_values,
        "expires_in": expires_values,
        "token_type": st.sampled_from(["Bearer", "bearer", "MAC"]) | json_values,
        "authorization": statuses,
        "error": texts | json_values,
        "error_description": texts | json_values,
        "message": texts | json_values,
    },
)
any_json = st.one_of(json_values, token_like)
status_codes = st.one_of(
    st.integers(min_value=100, max_value=599), st.sampled_from([200, 401, 429])
)
header_maps = st.fixed_dictionaries(
    {},
    optional={
        "retry-after": st.one_of(texts, st.from_regex(r"[0-9]{1,6}", fullmatch=True)),
        "location": texts,
    },
)


def encode(value: object) -> bytes:
    """JSON-encode *value* as a server would (NaN and Infinity included)."""
    return json.dumps(value).encode()


def check(result: AccessToken | Failure, status: int) -> None:
    """The invariants every result of read_token_response keeps."""
    if isinstance(result, AccessToken):
        assert 200 <= status <= 299
        assert VISIBLE_ASCII.fullmatch(result.value)
        assert 1 <= result.expires_in <= MAX_EXPIRES_IN
        assert type(result.expires_in) is int
        assert result.token_type == "Bearer"
        assert all(isinstance(scope, str) for scope in result.scope)
        assert result.obtained_at == 5.0
        return
    assert isinstance(result, Failure)
    assert isinstance(result.error, TokenError)
    assert result.error.status_code == status
    assert result.retryable == (status in RETRYABLE)
    if not result.retryable:
        assert result.retry_after is None
    elif result.retry_after is not None:
        assert result.retry_after >= 0
    for text in (result.error.code, result.error.error, result.error.detail):
        assert text is None or 0 < len(text) <= 200
    str(result.error)
    repr(result.error)


def read(
    status: int, body: bytes, headers: dict[str, str], **options: Any
) -> AccessToken | Failure:
    """Call read_token_response with fixed scopes and clocks and the test secret."""
    return read_token_response(
        status,
        headers,
        body,
        requested_scopes=REQUESTED,
        obtained_at=5.0,
        now=1_700_000_000.0,
        secrets=(CLIENT_SECRET,),
        **options,
    )


@PROPERTY
@given(
    value=any_json, status=status_codes, headers=header_maps, assumed=st.sampled_from([300, None])
)
def test_any_json_gives_a_token_or_a_token_error(
    value: object, status: int, headers: dict[str, str], assumed: int | None
) -> None:
    """For any JSON value and status, the result is a valid token or a Failure with a TokenError."""
    check(read(status, encode(value), headers, assumed_expires_in=assumed), status)


@PROPERTY
@given(body=st.binary(max_size=300), status=status_codes, truncated=st.booleans())
def test_any_bytes_give_a_token_or_a_token_error(body: bytes, status: int, truncated: bool) -> None:
    """For any bytes, the result is a valid token or a Failure with a TokenError."""
    check(read(status, body, {}, truncated=truncated), status)


@PROPERTY
@given(value=token_like, status=st.sampled_from([200, 201, 299]))
def test_token_like_answers_at_200(value: dict[str, Any], status: int) -> None:
    """Answers shaped like the documented one, with fuzzed fields, keep the invariants."""
    check(read(status, encode(value), {}), status)


@PROPERTY
@given(value=any_json, status=status_codes, headers=header_maps)
@example(value={"access_token": "a", "token_type": CLIENT_SECRET}, status=200, headers={})
def test_the_secret_never_reaches_an_error(
    value: object, status: int, headers: dict[str, str]
) -> None:
    """Whatever the server echoes, the client secret is never in the error's str() or repr()."""
    result = read(status, encode(value), headers)
    if isinstance(result, Failure):
        assert CLIENT_SECRET not in str(result.error)
        assert CLIENT_SECRET not in repr(result.error)


@PROPERTY
@given(text=st.one_of(json_values, texts))
def test_clean_text_is_short_and_secret_free(text: object) -> None:
    """clean_text gives None or a non-empty, trimmed text of at most 200 characters."""
    cleaned = clean_text(text, [CLIENT_SECRET])
    if cleaned is not None:
        assert 0 < len(cleaned) <= 200
        assert cleaned == cleaned.strip()
        assert CLIENT_SECRET not in cleaned
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", cleaned)


@PROPERTY
@given(value=st.one_of(st.none(), st.text(), st.from_regex(r"[0-9]{1,20}", fullmatch=True)))
def test_parse_retry_after_never_raises(value: str | None) -> None:
    """parse_retry_after gives None or a number of seconds >= 0 for any header text."""
    seconds = parse_retry_after(value, now=1_700_000_000.0)
    assert seconds is None or seconds >= 0


@PROPERTY
@given(
    attempts=st.integers(min_value=1, max_value=100),
    backoff=st.floats(min_value=0, max_value=60),
    max_backoff=st.floats(min_value=0, max_value=600),
    attempt=st.integers(min_value=1, max_value=120),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_retry_delay_bounds(
    *,
    attempts: int,
    backoff: float,
    max_backoff: float,
    attempt: int,
    retry_after: float | None,
    draw: float,
) -> None:
    """A delay is None only past the attempts or Retry-After limit, else within the jitter band."""
    policy = RetryPolicy(attempts=attempts, backoff=backoff, max_backoff=max_backoff)
    delay = policy.delay(attempt, retry_after=retry_after, draw=draw)
    too_long = retry_after is not None and retry_after > policy.max_retry_after
    if attempt >= attempts or too_long:
        assert delay is None
        return
    assert delay is not None
    computed = min(max_backoff, backoff * 2.0 ** (attempt - 1))
    assert delay >= (retry_after or 0.0)
    assert delay >= computed / 2
    assert delay <= max(computed, retry_after or 0.0)
