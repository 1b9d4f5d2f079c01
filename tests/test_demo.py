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
