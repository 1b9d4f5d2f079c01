"""The command line's demo: the main job end to end over a real loopback socket."""

from __future__ import annotations

import subprocess
import sys

import pytest

from payme_auth import __version__
from payme_auth.__main__ import main


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_succeeds_with_one_token_request_per_token(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's bursts all succeed, costing one token request before and one after revocation."""
    status = main(["demo", "--requests", "40", "--concurrency", "20", "--backend", backend])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "HTTP 200 x40" in out
    assert "token requests: 1\n" in out
    assert "token requests: 1 (" in out
    assert out.rstrip().endswith("OK: every call succeeded with one token request per token")
    assert "demo-client-secret" not in out


def test_demo_rejects_a_bad_count(capsys: pytest.CaptureFixture[str]) -> None:
    """A request count below 1 is a usage error, not a crash."""
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--requests", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_module_entry_point_reports_its_version() -> None:
    """python -m payme_auth --version prints the installed version."""
    done = subprocess.run(
        [sys.executable, "-m", "payme_auth", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"payme-auth {__version__}"


def test_demo_verbose_logs_fetches_without_secrets(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """--verbose shows payme_auth's log: the token fetch, by fingerprint only."""
    assert main(["demo", "--requests", "5", "--verbose"]) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("obtained token ") for message in messages)
    assert "HTTP 200 x5" in capsys.readouterr().out


def test_demo_without_uvicorn_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the emulator extra, the demo exits 2 with one line naming what to install."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("payme-auth: ")
    assert "payme-auth[emulator]" in err
