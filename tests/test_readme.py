"""The README: its local example runs, it names every variable, its test command is the
quick one and says what it leaves out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from payme_auth._config import env_settings

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- {marker} -->\n```python\n(.*?)```\n<!-- /{marker} -->", text, flags=re.DOTALL
    )
    assert found, f"README.md has no python block between <!-- {marker} --> markers"
    return found.group(1)


def test_readme_local_example_runs() -> None:
    """The quickstart against the local emulator prints a successful charge."""
    done = subprocess.run(
        [sys.executable, "-c", _block("example-local")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "200 True\n"


class _Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def test_readme_names_every_variable_from_env_reads() -> None:
    """Each PAYME_* variable that from_env() reads is named in the README."""
    environ = _Recording()
    env_settings(environ)
    assert {"PAYME_CLIENT_ID", "PAYME_TOKEN_URL", "PAYME_API_VERSION"} <= environ.asked
    text = README.read_text(encoding="utf-8")
    missing = sorted(name for name in environ.asked if f"`{name}`" not in text)
    assert not missing, f"README.md does not name {missing}"


def test_nox_test_sessions_run_the_slow_tests_too() -> None:
    """Every pytest run of noxfile.py passes --run-slow, so that CI runs the whole suite,
    and the README's quick command is a plain pytest run, which leaves them out."""
    noxfile = (README.parent / "noxfile.py").read_text(encoding="utf-8")
    runs = re.findall(r"session\.run\((.*?)\)\n", noxfile, flags=re.DOTALL)
    with_pytest = [run for run in runs if '"pytest"' in run]
    assert len(with_pytest) >= 3, runs  # tests, httpx2, soak
    assert all('"--run-slow"' in run for run in with_pytest), with_pytest
    readme = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- setup-tests -->\n```console\n\$ (.*)\n```", readme)
    assert found, "README.md has no setup-tests command"
    assert "python -m pytest" in found[1]
    assert "--run-slow" not in found[1]


def test_a_plain_run_says_what_it_left_out(pytester: pytest.Pytester) -> None:
    """Slow tests are deselected unless --run-slow; skips are told in one line per cause."""
    pytester.makeconftest(
        "from tests._skips import pytest_addoption, pytest_collection_modifyitems\n"
        "from tests._skips import pytest_terminal_summary, pytest_testnodedown\n"
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(
        test_sample="""
        import pytest

        def test_quick(): pass

        @pytest.mark.slow
        def test_slow(): pass

        @pytest.mark.parametrize("n", range(3))
        @pytest.mark.skip(reason="httpx2 is not installed")
        def test_variant(n): pass

        @pytest.mark.skip(reason="redis-server is not installed")
        def test_fleet(): pass

        @pytest.mark.skip(reason="something else")
        def test_other(): pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=5, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "httpx2 not installed: 3 httpx2 tests skipped (*): `nox -s httpx2` runs them",
            "redis-server not installed: 1 Redis tests skipped*",
            "1 other test skipped (`-rs` says why)",
            "1 slow test not run (*): `python -m pytest --run-slow` runs them*",
        ]
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--run-slow")
    result.assert_outcomes(passed=2, skipped=5)
    assert "slow test" not in result.stdout.str()
