"""The recipes of docs/testing.md run as the user's test suite they make up.

Every ``python`` block between ``<!-- file: NAME -->`` and ``<!-- /file -->`` is written
to a fresh directory under NAME; pytest then runs there, in this process, with warnings as
errors, and each test file must pass exactly the number of tests listed here.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
BLOCK = re.compile(
    r"^<!-- file: (?P<name>[\w.]+) -->\n```python\n(?P<code>.*?)^```\n<!-- /file -->$",
    flags=re.DOTALL | re.MULTILINE,
)

PASSED = {
    "test_with_mock.py": 4,
    "test_outages.py": 10,
    "test_with_emulator.py": 6,
    "test_concurrency.py": 4,
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
