"""The recipes of docs/testing.md run as the user's test suite they make up.

Every ``python`` block between ``<!-- file: NAME -->`` and ``<!-- /file -->`` is written
to a fresh directory under NAME; pytest then runs there, in this process, with warnings as
errors, and each test file must pass exactly the number of tests listed here.

Once more, slowly (``slow``: nox and .ci/run run it), as a reader would: the page's own
console commands in a fresh virtual environment, the install first, then the files, then
the test run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from collections import Counter
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "testing.md"
COMMAND = re.compile(r"^```console\n(?P<lines>(?:\$ .*\n)+)```$", flags=re.MULTILINE)
BASH = shutil.which("bash") or "/bin/bash"
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 300
BLOCK = re.compile(
    r"^<!-- file: (?P<name>[\w.]+) -->\n```python\n(?P<code>.*?)^```\n<!-- /file -->$",
    flags=re.DOTALL | re.MULTILINE,
)

PASSED = {
    "test_with_mock.py": 4,
    "test_outages.py": 10,
    "test_with_emulator.py": 6,
    "test_concurrency.py": 6,
    "test_without_fixtures.py": 4,
}
"""Tests each recipe file must pass (each async test runs on asyncio and trio)."""


def files() -> dict[str, str]:
    """The page's marked blocks, by file name."""
    found = {match["name"]: match["code"] for match in BLOCK.finditer(PAGE.read_text("utf-8"))}
    assert found, "docs/testing.md has no <!-- file: NAME --> blocks"
    return found


def test_every_recipe_file_is_counted() -> None:
    """The page's test files are exactly those this module expects results for."""
    names = set(files())
    assert names - {"conftest.py", "myapp.py"} == set(PASSED)
    assert {"conftest.py", "myapp.py"} <= names


def test_recipes_pass(pytester: pytest.Pytester) -> None:
    """The conftest, the app and every recipe, run together, pass on asyncio and trio."""
    pytest.importorskip("fastapi")
    for name, code in files().items():
        (pytester.path / name).write_text(code, encoding="utf-8")
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    result = pytester.runpytest("-v", "-p", "no:randomly", "-p", "no:cacheprovider")
    passed = Counter(
        match[1] for match in re.finditer(r"^(test_\w+\.py)::\S+ PASSED", result.stdout.str(), re.M)
    )
    assert dict(passed) == PASSED, result.stdout.str()
    result.assert_outcomes(passed=sum(PASSED.values()))


def commands() -> list[str]:
    """The page's console commands, in order."""
    text = PAGE.read_text("utf-8")
    return [
        line.removeprefix("$ ")
        for block in COMMAND.finditer(text)
        for line in block["lines"].splitlines()
    ]


@pytest.mark.slow
def test_recipes_pass_as_written_in_a_fresh_venv(tmp_path: Path) -> None:
    """In a new virtual environment, the page's install command, its files and its test
    command: every recipe passes on asyncio and trio (nothing the page omits is needed)."""
    found = commands()
    installs = [command for command in found if command.startswith("python -m pip install")]
    runs = [command for command in found if command.startswith("python -m pytest")]
    assert len(installs) == 1, found
    assert runs == ["python -m pytest"], found
    assert set(found) == {*installs, *runs}, found
    # The reader installs the released package from the index; here it is this checkout.
    install = installs[0].replace("'payme-auth[", f"'{ROOT}[")
    assert install != installs[0], f"the install command no longer names payme-auth: {install}"

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    binaries = environment / ("Scripts" if sys.platform == "win32" else "bin")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PAYME_", "PYTEST_", "PYTHON", "COV_", "COVERAGE_"))
        and name != "VIRTUAL_ENV"
    }
    env.update(VIRTUAL_ENV=str(environment), PATH=f"{binaries}{os.pathsep}{env.get('PATH', '')}")

    def sh(command: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BASH, "-euo", "pipefail", "-c", command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    installed = sh(install, tmp_path, INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    work = tmp_path / "suite"
    work.mkdir()
    for name, code in files().items():
        (work / name).write_text(code, encoding="utf-8")
    ran = sh(runs[0], work, RUN_TIMEOUT)
    summary = ran.stdout.strip().splitlines()[-1] if ran.stdout.strip() else ""
    assert ran.returncode == 0, ran.stdout[-5000:] + ran.stderr[-3000:]
    assert re.search(rf"\b{sum(PASSED.values())} passed\b", summary), summary
    assert "skipped" not in summary, summary
