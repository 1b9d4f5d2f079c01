"""Property tests: no answer, however malformed, makes read_token_response misbehave, and
no secret, however spelled, comes out of it."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from payme_auth import AccessToken, Environment, RetryPolicy, TokenError
from payme_auth._protocol import (
    MAX_EXPIRES_IN,
    Failure,
    build_token_request,
    clean_text,
    parse_retry_after,
    read_token_response,
)

from . import hostile_server as hostile
from .conftest import CLIENT_ID, CLIENT_SECRET

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


# -- secrets from all of Unicode, echoed back in any encoding ----------------------------------

BASELINE_SECRET = "\u2603"
"""A stand-in secret the drawn ones never contain: the same answer made with it shows what
text is there whatever the secret (the messages' own words)."""

any_secret = st.text(
    alphabet=st.one_of(
        st.characters(
            exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
            exclude_characters="*" + BASELINE_SECRET,
        ),
        st.sampled_from(list(' "\\/%+=&:?#ñü€\U0001f600')),
    ),
    min_size=1,
    max_size=24,
).filter(lambda secret: secret == secret.strip())
"""What PaymeAuth accepts as a client secret (printable, no surrounding spaces), less ``*``:
the mark that replaces a secret is ``***``, which a secret of stars would be found in."""

ECHO_FIELDS = ["message", "error_description", "error", "status message", "code", "token_type"]


def _echo_answer(text: str, status: int, field: str) -> tuple[int, dict[str, Any]]:
    """An answer with *text* in *field* that fails at *status* (a 200 made to fail)."""
    if field == "token_type":
        return 200, {"access_token": "tok.en", "token_type": text}
    payload: dict[str, Any] = {"success": False} if status == 200 else {}
    if field == "status message":
        payload["authorization"] = {"meta": {"status": {"code": "01", "message": text}}}
    elif field == "code":
        payload["authorization"] = {"meta": {"status": {"code": text}}}
    else:
        payload[field] = text
    return status, payload


def _echoed_error(
    secret: str, echo: str, status: int, field: str, ensure_ascii: bool
) -> TokenError:
    request = build_token_request(Environment.PREPROD, CLIENT_ID, secret, REQUESTED)
    text = hostile.ECHOES[echo](request.content, CLIENT_ID)
    status, payload = _echo_answer(text, status, field)
    body = json.dumps(payload, ensure_ascii=ensure_ascii).encode()
    result = read_token_response(
        status,
        {},
        body,
        requested_scopes=REQUESTED,
        obtained_at=5.0,
        now=1_700_000_000.0,
        secrets=(secret,),
    )
    assert isinstance(result, Failure)
    return result.error


def _shown(error: TokenError) -> list[str]:
    return [str(error), repr(error), *(t or "" for t in (error.code, error.error, error.detail))]


@PROPERTY
@given(
    secret=any_secret,
    echo=st.sampled_from(sorted(hostile.ECHOES)),
    status=st.sampled_from([200, 400, 401, 403, 429, 500, 503]),
    field=st.sampled_from(ECHO_FIELDS),
    ensure_ascii=st.booleans(),
)
@example(
    secret='acc-SECRET-contraseña-ü-"quote"-back\\slash',
    echo="as sent",
    status=500,
    field="message",
    ensure_ascii=True,
)
def test_an_echoed_secret_never_shows_in_any_spelling(
    secret: str, echo: str, status: int, field: str, ensure_ascii: bool
) -> None:
    """Any secret, echoed back in any encoding in any field, shows in no spelling.

    A spelling may show only where the messages' own words hold it whatever the secret
    (a secret ``e`` is in ``answered``): the same answer made with a stand-in secret says.
    """
    error = _echoed_error(secret, echo, status, field, ensure_ascii)
    baseline = _echoed_error(BASELINE_SECRET, echo, status, field, ensure_ascii)
    assert error.__traceback__ is None
    for spelling in hostile.spellings(secret, CLIENT_ID):
        for shown, words in zip(_shown(error), _shown(baseline), strict=True):
            assert spelling not in shown or spelling in words, (spelling, shown)


TOKEN_SPELLERS: dict[str, Callable[[str], str]] = {
    "as it is": lambda value: value,
    "json": lambda value: json.dumps(value)[1:-1],
    "percent": lambda value: urllib.parse.quote(value, safe=""),
    "form": urllib.parse.quote_plus,
    "base64": lambda value: base64.b64encode(value.encode()).decode(),
}


@PROPERTY
@given(
    token=st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True),
    echo=st.sampled_from(sorted(TOKEN_SPELLERS)),
    field=st.sampled_from(["message", "token_type"]),
)
def test_a_refused_answer_never_shows_its_token(token: str, echo: str, field: str) -> None:
    """A 200 answer refused for a bad field never shows its own token, however spelled."""
    spell = TOKEN_SPELLERS[echo]

    def refused(value: str) -> TokenError:
        payload: dict[str, Any] = {"access_token": value, "token_type": "Bearer"}
        if field == "message":
            payload.update(success=False, message=f"issued {spell(value)}")
        else:
            payload["token_type"] = f"MAC {spell(value)}"
        result = read(200, encode(payload), {})
        assert isinstance(result, Failure)
        return result.error

    error, baseline = refused(token), refused("stand-in-token")
    for spelling in hostile.spellings(token, CLIENT_ID):
        for shown, words in zip(_shown(error), _shown(baseline), strict=True):
            assert spelling not in shown or spelling in words, (spelling, shown)
