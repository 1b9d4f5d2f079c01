"""The ``payme-auth`` command line: token, check and emulator, their output and exit codes."""

from __future__ import annotations

import datetime
import email.utils
import io
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

import payme_auth.__main__ as cli
from payme_auth import Environment, InvalidCredentialsError, PaymeAuth, RetryPolicy
from payme_auth._cli import Finding, format_expiry
from payme_auth._cli_check import (
    clock_skew,
    describe_skew,
    describe_transport_error,
    run_check,
    write_findings,
)
from payme_auth._cli_emulator import EmulatorOptions, serve_emulator
from payme_auth._cli_settings import Settings
from payme_auth._cli_token import TokenOptions, run_token
from payme_auth._token import fingerprint
from payme_auth.testing import EmulatorServer, Fault, PaymeEmulator, run_emulator

from .conftest import CLIENT_ID, CLIENT_SECRET, token_answer

main = cli.main
DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
ONE_TOKEN_SERVED = (
    "served: token requests 1, tokens issued 1, token requests refused or failed 0, "
    "API requests 0, API 401s 0, API 403s 0"
)
"""The emulator's last line after one token request."""
LIMITED_ID = "limited-client"
"""An emulator client that may get ``get:charges`` only."""


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    emulator = PaymeEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    emulator.add_client(LIMITED_ID, CLIENT_SECRET, scopes=["get:charges"])
    with run_emulator(emulator) as server:
        yield server


@pytest.fixture
def server(shared_server: EmulatorServer) -> EmulatorServer:
    """The loopback emulator, with no fault left over from another test."""
    shared_server.emulator.clear_faults()
    return shared_server


@pytest.fixture
def env(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """PAYME_* variables pointing at the emulator, and no other PAYME_* variable."""
    for name in list(os.environ):
        if name.startswith("PAYME_"):
            monkeypatch.delenv(name)
    values = {
        "PAYME_TOKEN_URL": server.token_url,
        "PAYME_AUDIENCE": server.audience,
        "PAYME_CLIENT_ID": CLIENT_ID,
        "PAYME_CLIENT_SECRET": CLIENT_SECRET,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def live_tokens(server: EmulatorServer) -> list[str]:
    """Every token the emulator has issued and still honours."""
    return list(server.emulator._tokens)


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_no_secret(server: EmulatorServer, *texts: str) -> None:
    for text in texts:
        assert CLIENT_SECRET not in text
        for token in live_tokens(server):
            assert token not in text


# -- exit codes --------------------------------------------------------------------------


def test_exit_codes_are_distinct_and_documented(capsys: pytest.CaptureFixture[str]) -> None:
    """Each outcome has its own exit code, listed in --help and in docs/cli.md."""
    codes = {
        "EXIT_OK": 0,
        "EXIT_FAILURE": 1,
        "EXIT_USAGE": 2,
        "EXIT_REFUSED": 3,
        "EXIT_UNAVAILABLE": 4,
        "EXIT_BAD_ANSWER": 5,
        "EXIT_INTERRUPTED": 130,
    }
    assert {name: getattr(cli, name) for name in codes} == codes
    with pytest.raises(SystemExit):
        main(["token", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert (
        "exit codes: 0 ok, 1 other failure, 2 usage or bad configuration (a wrong token URL "
        "too), 3 refused by the token endpoint (credentials, scope, audience), 4 token "
        "endpoint unavailable, "
        "5 unusable token answer, 130 interrupted"
    ) in helped
    docs = DOCS.read_text(encoding="utf-8")
    for name, value in codes.items():
        assert re.search(rf"\|\s*`{value}`\s*\|\s*`{name}`", docs), name


# -- token -------------------------------------------------------------------------------


def test_token_describes_the_token_without_showing_it(
    env: dict[str, str], server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """token prints the environment, scopes, a UTC expiry, "in N min" and the fingerprint."""
    before = set(live_tokens(server))
    status, out, err = run(["token"], capsys)
    assert status == 0, err
    (issued,) = set(live_tokens(server)) - before
    assert f"token URL:   {server.token_url}\n" in out
    assert f"audience:    {server.audience}\n" in out
    assert "scopes:      create:token delete:charges get:charges post:charges\n" in out
    found = re.search(r"expires:\s+(\S+ \S+) UTC \(in (\d+) min\)", out)
    assert found, out
    expires = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=datetime.timezone.utc
    )
    expected = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=8600)
    assert abs((expires - expected).total_seconds()) < 5
    assert found.group(2) == "143"
    assert f"fingerprint: {fingerprint(issued)} " in out
    assert err == ""
    assert_no_secret(server, out, err)


def test_show_token_prints_only_a_working_token(
    env: dict[str, str], server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--show-token prints the raw token and a newline, and the API accepts that token."""
    status, out, err = run(["token", "--show-token"], capsys)
    assert status == 0, err
    assert re.fullmatch(r"[\x21-\x7e]+\n", out)
    assert out.strip() in live_tokens(server)
    headers = {"Authorization": f"Bearer {out.strip()}", "ALG-API-VERSION": "1709847567"}
    answer = httpx.post(f"{server.url}/charges", headers=headers, json={}, timeout=5)
    assert answer.status_code == 200


def test_json_summary_holds_the_token_only_when_asked(
    env: dict[str, str], server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json describes the token; with --show-token too, it also holds the token."""
    status, out, _ = run(["token", "--json", "--scope", "get:charges"], capsys)
    assert status == 0
    described = json.loads(out)
    assert "access_token" not in described
    assert described["scopes"] == ["create:token", "get:charges"]
    assert described["environment"]["token_url"] == server.token_url
    assert described["expires_in"] == 8600
    assert described["expires_at"].endswith("Z")
    assert 8590 <= described["remaining_seconds"] <= 8600
    assert_no_secret(server, out)
    status, out, _ = run(["token", "--json", "--show-token"], capsys)
    assert status == 0
    described = json.loads(out)
    assert described["access_token"] in live_tokens(server)
    assert described["fingerprint"] == fingerprint(described["access_token"])


def test_flags_override_the_environment(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--token-url/--audience/--client-id win over the variables (a stale one is ignored)."""
    monkeypatch.setenv("PAYME_TOKEN_URL", f"http://127.0.0.1:{dead_port()}/token")
    monkeypatch.setenv("PAYME_ENVIRONMENT", "no-such-environment")
    monkeypatch.setenv("PAYME_CLIENT_ID", "someone-else")
    argv = ["token", "--token-url", server.token_url, "--audience", server.audience]
    status, _, err = run([*argv, "--client-id", CLIENT_ID], capsys)
    assert status == 0, err


def test_secret_read_from_stdin(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--client-secret-file - reads the secret from stdin (its trailing newline dropped)."""
    monkeypatch.setenv("PAYME_CLIENT_SECRET", "not-this-one")
    monkeypatch.setattr(sys, "stdin", io.StringIO(CLIENT_SECRET + "\n"))
    status, out, err = run(["token", "--client-secret-file", "-"], capsys)
    assert status == 0, err
    assert CLIENT_SECRET not in out + err


def test_secret_read_from_a_file(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--client-secret-file PATH reads the secret from PATH; a missing file is exit 2."""
    monkeypatch.delenv("PAYME_CLIENT_SECRET")
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLIENT_SECRET + "\r\n", encoding="utf-8")
    assert run(["token", "--client-secret-file", str(secret_file)], capsys)[0] == 0
    missing = tmp_path / "nowhere"
    status, out, err = run(["token", "--client-secret-file", str(missing)], capsys)
    assert status == cli.EXIT_USAGE
    assert out == ""
    assert err == (
        f"payme-auth: error: cannot read the client secret file {missing}: "
        "No such file or directory\n"
    )


def test_secret_given_by_flag_works_with_a_warning(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--client-secret is accepted, discouraged on stderr, and never echoed."""
    monkeypatch.delenv("PAYME_CLIENT_SECRET")
    status, out, err = run(["token", "--client-secret", CLIENT_SECRET], capsys)
    assert status == 0
    assert err.startswith("payme-auth: warning: --client-secret exposes the secret")
    assert_no_secret(server, out, err)


def test_refused_credentials_exit_3_with_one_line(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong secret: exit 3, one error line on stderr, no traceback, no secret."""
    wrong = "WRONG-" + CLIENT_SECRET
    monkeypatch.setenv("PAYME_CLIENT_SECRET", wrong)
    status, out, err = run(["token"], capsys)
    assert status == cli.EXIT_REFUSED
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("payme-auth: error: Pay-me refused the client credentials")
    assert "client_id or client_secret is not valid" in err
    assert "Traceback" not in err
    assert wrong not in err


def test_refused_scope_exit_3(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    server: EmulatorServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A scope the client may not have (401 from Pay-me), or a 403: both exit 3."""
    monkeypatch.setenv("PAYME_CLIENT_ID", LIMITED_ID)
    status, _, err = run(["token", "--scope", "post:charges"], capsys)
    assert status == cli.EXIT_REFUSED
    assert "a requested scope is not allowed" in err
    monkeypatch.setenv("PAYME_CLIENT_ID", CLIENT_ID)
    server.emulator.inject(Fault(status=403))
    status, _, err = run(["token"], capsys)
    assert status == cli.EXIT_REFUSED
    assert err.startswith("payme-auth: error: Pay-me refused the requested scopes (HTTP=403")


def test_unreachable_endpoint_exit_4(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening on the token URL's port: exit 4."""
    port = dead_port()
    monkeypatch.setenv("PAYME_TOKEN_URL", f"http://127.0.0.1:{port}/token")
    monkeypatch.setenv("PAYME_AUDIENCE", f"http://127.0.0.1:{port}/")
    status, out, err = run(["token", "--attempts", "1", "--timeout", "5"], capsys)
    assert status == cli.EXIT_UNAVAILABLE
    assert out == ""
    assert err.startswith("payme-auth: error: the token endpoint was unavailable after 1 attempt")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault(status=503), cli.EXIT_UNAVAILABLE),
        (Fault(status=200, body=b"<html>maintenance</html>"), cli.EXIT_BAD_ANSWER),
    ],
)
def test_unavailable_or_unusable_answers(
    env: dict[str, str],
    server: EmulatorServer,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
    code: int,
) -> None:
    """A 503 after the attempts ran out is exit 4; a 200 that is not a token is exit 5."""
    server.emulator.inject(fault)
    status, _, err = run(["token", "--attempts", "1"], capsys)
    assert status == code, err


def test_missing_variable_is_named(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset PAYME_CLIENT_ID: exit 2, naming the variable."""
    monkeypatch.delenv("PAYME_CLIENT_ID")
    status, out, err = run(["token"], capsys)
    assert status == cli.EXIT_USAGE
    assert out == ""
    assert err == "payme-auth: error: PAYME_CLIENT_ID is not set (nor given with --client-id)\n"


def test_unknown_environment_name(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PAYME_ENVIRONMENT=staging: exit 2, naming the variable and the value."""
    monkeypatch.delenv("PAYME_TOKEN_URL")
    monkeypatch.delenv("PAYME_AUDIENCE")
    monkeypatch.setenv("PAYME_ENVIRONMENT", "staging")
    status, _, err = run(["token"], capsys)
    assert status == cli.EXIT_USAGE
    assert err.startswith("payme-auth: error: PAYME_ENVIRONMENT: unknown Pay-me environment")
    assert "'staging'" in err


def test_bad_values_of_flags_are_usage_errors(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad flag values exit 2 and say which flag is wrong."""
    status, _, err = run(["token", "--token-url", "http://127.0.0.1:1/token"], capsys)
    assert (status, err) == (
        2,
        "payme-auth: error: --token-url and --audience must be given together\n",
    )
    status, _, err = run(["token", "--scope", "bad\x01scope"], capsys)
    assert status == 2
    assert err.startswith("payme-auth: error: --scope: a scope is a non-empty string")
    with pytest.raises(SystemExit) as exited:
        main(["token", "--timeout", "0"])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "case", [("/tokn", 404, "Not Found"), ("/charges/a/b", 405, "Method Not Allowed")]
)
def test_wrong_token_url_is_a_configuration_error(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, str],
) -> None:
    """A token URL answering 404 or 405: token and check exit 2 naming PAYME_TOKEN_URL."""
    path, status, reason = case
    url = server.url + path
    monkeypatch.setenv("PAYME_TOKEN_URL", url)
    said = (
        f"the token URL {url} answered HTTP {status} {reason}: there is no token endpoint "
        "at that URL; check PAYME_TOKEN_URL in the environment"
    )
    code, out, err = run(["token"], capsys)
    assert (code, out, err) == (cli.EXIT_USAGE, "", f"payme-auth: error: {said}\n")
    code, out, err = run(["check"], capsys)
    assert code == cli.EXIT_USAGE
    assert f"problem  {said}\n" in out
    assert "refused" not in out
    assert_no_secret(server, out, err)


def test_wrong_token_url_names_the_flag_it_came_from(
    env: dict[str, str], server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong --token-url is told as that flag, not as a variable."""
    argv = ["token", "--token-url", server.url + "/oauth/token", "--audience", server.audience]
    code, _, err = run(argv, capsys)
    assert code == cli.EXIT_USAGE
    assert err.endswith("there is no token endpoint at that URL; check --token-url\n")


def test_misspelt_scope_is_warned_before_sending(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """PAYME_SCOPES=post:charge: token warns first with "did you mean post:charges", check too."""
    monkeypatch.setenv("PAYME_SCOPES", "post:charge")
    before = server.emulator.stats.token_requests
    code, out, err = run(["token"], capsys)
    assert code == cli.EXIT_REFUSED
    first, *_ = err.splitlines()
    assert first == (
        "payme-auth: warning: scope 'post:charge' is not one Pay-me documents (did you mean "
        "post:charges?); it is sent as given, and the token endpoint may refuse it"
    )
    assert server.emulator.stats.token_requests > before  # sent all the same
    code, out, _ = run(["check"], capsys)
    assert code == cli.EXIT_REFUSED
    lines = out.splitlines()
    assert "warning  scope 'post:charge' is not one Pay-me documents" in "\n".join(lines)
    assert lines[-1] == "summary: 1 problem found, 1 warning"


def test_unknown_scope_is_allowed_with_a_warning(
    env: dict[str, str], server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scope Pay-me does not document, but grants: a token, exit 0, one warning line."""
    server.emulator.add_client("new-scope-client", CLIENT_SECRET, scopes=["refund:charges"])
    argv = ["token", "--client-id", "new-scope-client", "--scope", "refund:charges"]
    code, out, err = run(argv, capsys)
    assert code == cli.EXIT_OK
    assert "scopes:      create:token refund:charges\n" in out
    assert err == (
        "payme-auth: warning: scope 'refund:charges' is not one Pay-me documents (the "
        "documented scopes are create:token post:charges get:charges delete:charges); it is "
        "sent as given, and the token endpoint may refuse it\n"
    )
    code, out, _ = run(
        ["check", "--client-id", "new-scope-client", "--scope", "refund:charges"], capsys
    )
    assert code == cli.EXIT_OK
    assert out.splitlines()[-1].endswith("checks passed, 1 warning")


def test_documented_scopes_get_no_warning(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The four documented scopes, in any order: no warning at all."""
    argv = ["token", "--scope", "delete:charges,get:charges post:charges create:token"]
    code, _, err = run(argv, capsys)
    assert (code, err) == (cli.EXIT_OK, "")


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["token", "--jsn"], "token"),
        (["check", "--show-token"], "check"),
        (["emulator", "--port", "x"], "emulator"),
        (["demo", "--requests", "0"], "demo"),
    ],
)
def test_argument_errors_show_the_commands_usage(
    argv: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong argument of a command prints that command's usage, not the top-level one."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"usage: payme-auth {command} [-h]")
    assert f"payme-auth {command}: error: " in err
    assert "COMMAND" not in err


def test_debug_shows_the_traceback_and_the_log_without_secrets(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--debug (before or after the command) adds the traceback and payme_auth's debug log."""
    monkeypatch.setenv("PAYME_CLIENT_SECRET", "WRONG-" + CLIENT_SECRET)
    for argv in (["--debug", "token"], ["token", "--debug"]):
        status, _, err = run(argv, capsys)
        assert status == cli.EXIT_REFUSED
        assert "Traceback (most recent call last)" in err
        assert "DEBUG payme_auth: requesting a token from" in err
        assert err.splitlines()[-1].startswith("payme-auth: error: Pay-me refused")
        assert_no_secret(server, err)


def test_unexpected_errors_are_one_scrubbed_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unexpected error is exit 1, one line naming its type, with the secret scrubbed."""

    async def broken(*_args: object) -> int:
        raise RuntimeError(f"failed with {CLIENT_SECRET} inside")

    monkeypatch.setattr(cli, "run_token", broken)
    status, out, err = run(["token"], capsys)
    assert status == cli.EXIT_FAILURE
    assert out == ""
    assert err == (
        "payme-auth: error: unexpected RuntimeError: failed with *** inside "
        "(run with --debug for the traceback)\n"
    )


def test_ctrl_c_exits_130_quietly(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """KeyboardInterrupt: exit 130, nothing written."""

    async def interrupted(*_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_token", interrupted)
    assert run(["token"], capsys) == (cli.EXIT_INTERRUPTED, "", "")


@pytest.mark.anyio
async def test_token_command_runs_on_both_backends(server: EmulatorServer) -> None:
    """The token command's core fetches and describes a token under asyncio and trio."""
    settings = Settings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        environment=server.environment,
        scopes=("create:token", "get:charges"),
    )
    out = io.StringIO()
    with anyio.fail_after(10):
        assert await run_token(settings, TokenOptions(as_json=True), out) == 0
    assert json.loads(out.getvalue())["scopes"] == ["create:token", "get:charges"]


# -- check -------------------------------------------------------------------------------


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status, out, err = run(["check", "--timeout", "5", *argv], capsys)
    return status, out.splitlines(), err


def test_check_passes_when_everything_is_fine(
    env: dict[str, str], server: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A good configuration: every line ok, a summary, exit 0."""
    status, lines, err = check(capsys)
    assert status == 0, lines
    assert err == ""
    assert lines[-1] == "summary: all 8 checks passed"
    assert all(line.startswith("ok ") for line in lines[:-1]), lines
    assert any("the local clock is within" in line for line in lines)
    assert any(line.startswith("ok       credentials accepted: token ") for line in lines)
    assert_no_secret(server, "\n".join(lines))


def test_check_names_missing_variables_and_sends_nothing(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both credentials missing: two problems naming them, and no request sent."""
    monkeypatch.delenv("PAYME_CLIENT_ID")
    monkeypatch.delenv("PAYME_CLIENT_SECRET")
    before = server.emulator.stats.token_requests
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_USAGE
    assert "problem  PAYME_CLIENT_ID is not set (nor given with --client-id)" in lines
    assert "problem  PAYME_CLIENT_SECRET is not set (nor given with --client-secret-file)" in lines
    assert "note     the token endpoint was not asked: fix the configuration first" in lines
    assert lines[-1] == "summary: 2 problems found"
    assert server.emulator.stats.token_requests == before


def test_check_reports_an_unknown_environment(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown PAYME_ENVIRONMENT is a problem line naming it."""
    monkeypatch.delenv("PAYME_TOKEN_URL")
    monkeypatch.delenv("PAYME_AUDIENCE")
    monkeypatch.setenv("PAYME_ENVIRONMENT", "staging")
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_USAGE
    assert any(
        line.startswith("problem  PAYME_ENVIRONMENT: unknown Pay-me environment 'staging'")
        for line in lines
    )


def test_check_spots_an_audience_of_another_environment(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pre-production's token URL with production's audience is caught before sending."""
    monkeypatch.setenv("PAYME_TOKEN_URL", "https://auth.preprod.alignet.io/token")
    monkeypatch.setenv("PAYME_AUDIENCE", "https://api.alignet.io/")
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_USAGE
    assert (
        "problem  audience https://api.alignet.io/ does not belong to the token URL's "
        "environment: auth.preprod.alignet.io issues tokens for https://api.preprod.alignet.io/"
    ) in lines
    assert lines[-2].startswith("note     the token endpoint was not asked")


def test_check_reports_an_audience_the_endpoint_refuses(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The endpoint's 400 about the audience becomes an audience problem, exit 3."""
    monkeypatch.setenv("PAYME_AUDIENCE", "http://localhost:1/")
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_REFUSED
    problems = [line for line in lines if line.startswith("problem")]
    assert len(problems) == 1
    assert problems[0].startswith("problem  audience http://localhost:1/ refused by the token")
    assert "audience does not match this environment" in problems[0]


def test_check_tells_refused_credentials(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong secret: "credentials refused", exit 3, the secret nowhere."""
    monkeypatch.setenv("PAYME_CLIENT_SECRET", "WRONG-secret")
    status, lines, err = check(capsys)
    assert status == cli.EXIT_REFUSED
    assert any(
        line.startswith("problem  credentials refused (even for create:token alone)")
        for line in lines
    )
    assert "WRONG-secret" not in "\n".join(lines) + err


def test_check_names_the_refused_scope(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credentials fine but a scope not allowed: the scope is named, exit 3."""
    monkeypatch.setenv("PAYME_CLIENT_ID", LIMITED_ID)
    monkeypatch.setenv("PAYME_SCOPES", "get:charges,post:charges")
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_REFUSED
    assert "ok       credentials accepted (for create:token alone)" in lines
    assert any(
        line.startswith("problem  scope refused for this client: post:charges - ") for line in lines
    )


def test_check_reports_a_dead_port(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening: "connection refused", said plainly, exit 4."""
    port = dead_port()
    monkeypatch.setenv("PAYME_TOKEN_URL", f"http://127.0.0.1:{port}/token")
    monkeypatch.setenv("PAYME_AUDIENCE", f"http://127.0.0.1:{port}/")
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_UNAVAILABLE
    assert (
        f"problem  the token URL is unreachable: the connection to 127.0.0.1:{port} was "
        "refused: nothing listens on that port"
    ) in lines


def test_check_reports_tls_to_a_plain_http_port(
    env: dict[str, str],
    server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """https:// to a port that speaks plain HTTP: a failed TLS handshake, exit 4."""
    monkeypatch.setenv("PAYME_TOKEN_URL", server.token_url.replace("http://", "https://"))
    status, lines, _ = check(capsys)
    assert status == cli.EXIT_UNAVAILABLE
    assert any(
        line.startswith(
            f"problem  the token URL is unreachable: the TLS handshake with "
            f"127.0.0.1:{server.port} failed"
        )
        for line in lines
    ), lines


def test_check_reports_a_silent_endpoint(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port that takes the connection but never answers: a timeout, said plainly, exit 4."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        monkeypatch.setenv("PAYME_TOKEN_URL", f"http://127.0.0.1:{port}/token")
        monkeypatch.setenv("PAYME_AUDIENCE", f"http://127.0.0.1:{port}/")
        started = time.monotonic()
        status, lines, _ = check(capsys, "--timeout", "0.3")
    assert time.monotonic() - started < 5
    assert status == cli.EXIT_UNAVAILABLE
    assert any(
        re.fullmatch(r"problem  the token URL is unreachable: .* did not answer.* within 0.3 s", x)
        for x in lines
    ), lines


@pytest.mark.parametrize(
    ("fault", "code", "start"),
    [
        (Fault(status=503), cli.EXIT_UNAVAILABLE, "problem  the token endpoint is unavailable"),
        (Fault(status=200, body=b"[]"), cli.EXIT_BAD_ANSWER, "problem  the token answer is"),
    ],
)
@pytest.mark.usefixtures("env")
def test_check_reports_outages_and_bad_answers(
    server: EmulatorServer,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
    code: int,
    start: str,
) -> None:
    """A 503 is an unavailable endpoint (exit 4); a 200 without a token, exit 5."""
    server.emulator.inject(fault)
    status, lines, _ = check(capsys)
    assert status == code
    assert any(line.startswith(start) for line in lines), lines


def _settings(scopes: tuple[str, ...] = ("create:token", "post:charges")) -> Settings:
    return Settings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        environment=Environment.PREPROD,
        scopes=scopes,
    )


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


@pytest.mark.anyio
@pytest.mark.parametrize(("offset", "fine"), [(0, True), (-20, True), (300, False), (-95, False)])
async def test_check_compares_the_clock_with_the_date_header(offset: int, fine: bool) -> None:
    """The answer's Date more than 30 s away from the local clock is a problem (exit 1)."""

    def answer(_request: httpx.Request) -> httpx.Response:
        date = email.utils.formatdate(time.time() + offset, usegmt=True)
        return httpx.Response(200, json=token_answer(), headers={"Date": date})

    with anyio.fail_after(10):
        findings = await run_check(_settings(), transport=_mock(answer))
    skew = [f for f in findings if "local clock" in f.text]
    assert len(skew) == 1
    if fine:
        assert skew[0].mark == "ok"
    else:
        side = "behind" if offset > 0 else "ahead of"
        assert skew[0].mark == "problem"
        assert skew[0].exit_code == cli.EXIT_FAILURE
        # A Date has whole seconds: one more or less than the offset is the same clock.
        seconds = {abs(offset) - 1, abs(offset), abs(offset) + 1}
        assert any(f"is {n} s {side} the token server's" in skew[0].text for n in seconds)
        assert write_findings(findings, io.StringIO()) == cli.EXIT_FAILURE


@pytest.mark.anyio
async def test_check_tells_a_403_scope_refusal() -> None:
    """A 403 for one scope (InsufficientScopeError): that scope is named, exit 3."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        scope = json.loads(request.content)["scope"]
        asked.append(scope)
        if "post:charges" in scope.split():
            return httpx.Response(403, json={"message": "Forbidden"})
        return httpx.Response(200, json=token_answer(scope=scope))

    settings = _settings(("create:token", "get:charges", "post:charges"))
    with anyio.fail_after(10):
        findings = await run_check(settings, transport=_mock(answer))
    assert asked == [
        "create:token get:charges post:charges",
        "create:token",
        "create:token get:charges",
        "create:token post:charges",
    ]
    problems = [f for f in findings if f.is_problem]
    assert len(problems) == 1
    assert problems[0].text.startswith("scope refused for this client: post:charges - ")
    assert "HTTP=403" in problems[0].text
    assert problems[0].exit_code == cli.EXIT_REFUSED


@pytest.mark.anyio
async def test_check_reports_a_scope_not_granted() -> None:
    """A token granted with fewer scopes than asked: a problem naming the missing ones."""

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=token_answer(scope="create:token"))

    with anyio.fail_after(10):
        findings = await run_check(_settings(), transport=_mock(answer))
    problems = [f for f in findings if f.is_problem]
    assert [f.text for f in problems] == [
        "scopes requested but not granted: post:charges (granted: create:token)"
    ]


@pytest.mark.parametrize(
    ("date", "local", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0, 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 - 45, 45.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0 + 60.5, -60.5),
        ("Sun, 06 Nov 1994 08:49:37 -0000", 784111777.0, 0.0),
        ("not a date", 0.0, None),
        ("", 0.0, None),
        (None, 0.0, None),
    ],
)
def test_clock_skew_is_server_minus_local(
    date: str | None, local: float, expected: float | None
) -> None:
    """clock_skew: how far the server's Date is ahead of the local clock; None if unreadable."""
    assert clock_skew(date, local) == expected


def test_describe_skew_marks() -> None:
    """Within 30 s is ok, beyond is a problem saying which clock is behind, none is a note."""
    assert describe_skew(29.9).mark == "ok"
    assert describe_skew(None).mark == "note"
    behind = describe_skew(31.0)
    assert (behind.mark, behind.exit_code) == ("problem", cli.EXIT_FAILURE)
    assert behind.text.startswith("the local clock is 31 s behind the token server's")
    assert describe_skew(-120.0).text.startswith("the local clock is 120 s ahead of")


def _raised(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _raised(httpx.ConnectError("x"), socket.gaierror(-2, "Name or service not known")),
            "the host name auth.example cannot be resolved (DNS): Name or service not known",
        ),
        (
            _raised(
                httpx.ConnectError("x"),
                _raised(OSError("all failed"), ConnectionRefusedError(111, "refused")),
            ),
            "the connection to auth.example:443 was refused: nothing listens on that port",
        ),
        (
            _raised(httpx.ConnectError("x"), ssl.SSLCertVerificationError(1, "bad")),
            "the TLS certificate of auth.example:443 is not trusted: bad",
        ),
        (httpx.ConnectTimeout("x"), "connecting to auth.example:443 timed out after 3 s"),
        (
            httpx.ReadTimeout("x"),
            "auth.example:443 accepted the connection but did not answer within 3 s",
        ),
    ],
)
def test_transport_errors_in_plain_words(error: Exception, expected: str) -> None:
    """DNS, refused connections, TLS and timeouts are each said plainly."""
    assert describe_transport_error(error, "https://auth.example/token", 3) == expected


def test_format_expiry() -> None:
    """Expiry is a UTC wall-clock time, with the delay in minutes, or seconds when short."""
    now = datetime.datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=datetime.timezone.utc)
    expires, delay = format_expiry(8600.4, now)
    assert (expires.isoformat(), delay) == ("2030-01-02T05:27:25+00:00", "in 143 min")
    assert format_expiry(59.9, now)[1] == "in 59 s"
    assert format_expiry(-1, now)[1] == "expired"
    assert Finding.problem("x", 3).line() == "problem  x"


# -- emulator ----------------------------------------------------------------------------


def test_emulator_rejects_bad_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Out-of-range knobs are usage errors; a port in use is one clear line, exit 1."""
    for argv in (["--failure-rate", "2"], ["--port", "70000"], ["--token-lifetime", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(["emulator", *argv])
        assert exited.value.code == 2
    capsys.readouterr()
    stopped = threading.Event()
    stopped.set()  # were it to serve after all, it would stop at once instead of hanging

    def serve(options: EmulatorOptions, out: io.TextIOBase) -> int:
        return serve_emulator(options, out, stop=stopped)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "serve_emulator", serve)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["emulator", "--port", str(port)]) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == (
        f"payme-auth: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["emulator", "--port", "0"]) == cli.EXIT_USAGE
    assert "install payme-auth[emulator]" in capsys.readouterr().err


def test_emulator_serves_until_stopped() -> None:
    """In-process: the lines printed work as they are, until the stop event is set."""
    out = io.StringIO()
    stop = threading.Event()
    options = EmulatorOptions(port=0, token_lifetime=120, client_id="compose-client")
    worker = threading.Thread(target=lambda: serve_emulator(options, out, stop=stop))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while "ready: " not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.01)
        exports = dict(re.findall(r"^export (PAYME_\w+)=(\S+)$", out.getvalue(), re.MULTILINE))
        assert exports["PAYME_CLIENT_ID"] == "compose-client"
        assert exports["PAYME_CLIENT_SECRET"] == "demo-client-secret"

        async def fetch() -> int:
            environment = Environment(
                token_url=exports["PAYME_TOKEN_URL"], audience=exports["PAYME_AUDIENCE"]
            )
            async with PaymeAuth(
                exports["PAYME_CLIENT_ID"],
                exports["PAYME_CLIENT_SECRET"],
                environment=environment,
                retry=RetryPolicy(attempts=1),
            ) as auth:
                with anyio.fail_after(10):
                    return (await auth.get_token()).expires_in

        assert anyio.run(fetch) == 120
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    lines = out.getvalue().splitlines()
    assert lines[-2:] == [
        "stopping the Pay-me emulator",
        ONE_TOKEN_SERVED,
    ]
    [logged] = [line for line in lines if " POST /token " in line]
    assert re.fullmatch(r"\d\d:\d\d:\d\d POST /token 200 client=compose-client", logged)


def test_emulator_prints_a_line_per_request_and_the_counters() -> None:
    """Each token and API request is one line without secrets; the counters come at the end."""
    out = io.StringIO()
    stop = threading.Event()
    options = EmulatorOptions(port=0)
    worker = threading.Thread(target=lambda: serve_emulator(options, out, stop=stop))
    worker.start()
    issued: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while "ready: " not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.01)
        base = re.search(r"^ready: (\S+) ", out.getvalue(), re.MULTILINE)
        assert base is not None
        url = base[1]

        async def traffic() -> None:
            environment = Environment(token_url=f"{url}/token", audience=f"{url}/")
            async with (
                PaymeAuth("demo-client-id", "demo-client-secret", environment=environment) as auth,
                httpx.AsyncClient(base_url=url, auth=auth) as api,
                httpx.AsyncClient(base_url=url) as bare,
            ):
                issued.append((await auth.get_token()).value)
                assert (await api.get("/charges/M1/0001/T1")).status_code == 200
                assert (await bare.get("/charges/M1/0001/T1")).status_code == 401
                refused = PaymeAuth("demo-client-id", "not-the-secret", environment=environment)
                async with refused:
                    with pytest.raises(InvalidCredentialsError):
                        await refused.get_token()

        anyio.run(traffic)
    finally:
        stop.set()
        worker.join(10)
    text = out.getvalue()
    served = [line.split(" ", 1)[1] for line in text.splitlines() if re.match(r"\d\d:", line)]
    assert served == [
        "POST /token 200 client=demo-client-id",
        "GET /charges/M1/0001/T1 200 client=demo-client-id",
        "GET /charges/M1/0001/T1 401 client=-",
        "POST /token 401 client=demo-client-id",
    ]
    assert text.endswith(
        "served: token requests 2, tokens issued 1, token requests refused or failed 1, "
        "API requests 2, API 401s 1, API 403s 0\n"
    )
    assert "not-the-secret" not in text
    assert issued[0] not in text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_emulator_process_stops_cleanly_on_a_signal(stop_signal: signal.Signals) -> None:
    """python -m payme_auth emulator --port 0: ready line, a working token, exit 0 when stopped."""
    command = [sys.executable, "-m", "payme_auth", "emulator", "--port", "0"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, **pipes) as process:  # type: ignore[call-overload]
        try:
            # Read on a thread, so that every wait for a line is bounded.
            received: queue.Queue[str] = queue.Queue()
            stdout = process.stdout

            def read() -> None:
                for line in stdout:
                    received.put(line)

            reader = threading.Thread(target=read)
            reader.start()
            lines: list[str] = []
            while not lines or not lines[-1].startswith("ready: "):
                lines.append(received.get(timeout=20))
            exports = dict(re.findall(r"^export (PAYME_\w+)=(\S+)$", "".join(lines), re.M))
            environment = Environment(
                token_url=exports["PAYME_TOKEN_URL"], audience=exports["PAYME_AUDIENCE"]
            )

            async def fetch() -> str:
                async with PaymeAuth(
                    exports["PAYME_CLIENT_ID"],
                    exports["PAYME_CLIENT_SECRET"],
                    environment=environment,
                    retry=RetryPolicy(attempts=1),
                ) as auth:
                    with anyio.fail_after(10):
                        return (await auth.get_token()).fingerprint

            assert len(anyio.run(fetch)) == 12
            process.send_signal(stop_signal)
            assert process.wait(timeout=20) == 0
            reader.join(10)
            err = process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
    out = "".join(received.get_nowait() for _ in range(received.qsize())).splitlines()
    assert out[0].endswith(" POST /token 200 client=demo-client-id")
    assert out[1:] == [
        "stopping the Pay-me emulator",
        ONE_TOKEN_SERVED,
    ]
    assert "Traceback" not in err
