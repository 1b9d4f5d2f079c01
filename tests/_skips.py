"""What a plain ``python -m pytest`` leaves out, and why, in one line each.

- Tests marked ``slow`` (the fault matrix, the docs recipe in a fresh virtual environment)
  are deselected unless ``--run-slow`` is given. The nox test sessions, and so
  ``.ci/run``, always give it. Every test of a module in :data:`SLOW_MODULES` is marked
  ``slow`` here.
- Skips are counted by cause: httpx2 missing (``nox -s httpx2`` runs those tests),
  redis-server missing (``.ci/run`` installs it), anything else (``-rs`` lists them).

tests/conftest.py imports these hooks; under pytest-xdist the workers collect, so they send
the number deselected to the controller, which writes the summary.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

RUN_SLOW = "--run-slow"
_DESELECTED = "payme_slow_deselected"
_deselected_key = pytest.StashKey[int]()

SLOW_MODULES = {
    # 200 tests that run real outages against the emulator on a wall clock: a third of
    # the suite's time, and they need a quiet machine more than the others.
    "test_faults.py": "the fault matrix",
}
"""Modules whose every test is ``slow``, and what they are."""

_CAUSES = (
    (
        "httpx2 is not installed",
        (
            "httpx2 not installed: {n} httpx2 tests skipped (the httpx2 variants of "
            "tests/test_auth_flow.py, tests/test_httpx2.py, the httpx2 plug in "
            "tests/test_aiohttp.py and tests/test_requests.py): `nox -s httpx2` runs them"
        ),
    ),
    (
        "redis-server is not installed",
        (
            "redis-server not installed: {n} Redis tests skipped "
            "(.ci/run installs it: `apt-get install redis-server`)"
        ),
    ),
)
_OTHER = "{n} other {tests} skipped (`-rs` says why)"
_SLOW = (
    "{n} slow {tests} not run (tests/test_faults.py, the docs recipe in a fresh venv): "
    "`python -m pytest --run-slow` runs them, as nox and .ci/run do; `nox -s soak` the soak"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--run-slow``: run the tests marked ``slow`` too."""
    parser.addoption(
        RUN_SLOW,
        action="store_true",
        default=False,
        help="also run the tests marked slow (the fault matrix, the docs recipe in a fresh "
        "venv); nox and .ci/run always do",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`SLOW_MODULES` ``slow``; deselect the ``slow`` tests unless
    ``--run-slow`` was given."""
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    if config.getoption(RUN_SLOW):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if not slow:
        return
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if item.get_closest_marker("slow") is None]
    config.stash[_deselected_key] = len(slow)
    output = getattr(config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: tell the controller
        output[_DESELECTED] = len(slow)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """(pytest-xdist controller) Keep the number of slow tests a worker deselected."""
    deselected = getattr(node, "workeroutput", {}).get(_DESELECTED)
    if deselected is not None:
        config: pytest.Config = node.config
        # Every worker collects the whole suite: they all deselect the same tests.
        config.stash[_deselected_key] = int(deselected)


def _reason(report: Any) -> str:
    longrepr = getattr(report, "longrepr", None)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def skip_lines(reasons: list[str], deselected: int) -> list[str]:
    """The summary lines for skips with these *reasons*, and *deselected* slow tests."""
    counts: Counter[str] = Counter()
    for reason in reasons:
        cause = next((text for marker, text in _CAUSES if marker in reason), _OTHER)
        counts[cause] += 1
    lines = [text.format(n=counts[text]) for _, text in _CAUSES if counts[text]]
    for text, n in ((_OTHER, counts[_OTHER]), (_SLOW, deselected)):
        if n:
            lines.append(text.format(n=n, tests="test" if n == 1 else "tests"))
    return lines


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """One line per cause of what was skipped or not run."""
    reasons = [_reason(report) for report in terminalreporter.stats.get("skipped", [])]
    lines = skip_lines(reasons, config.stash.get(_deselected_key, 0))
    if lines:
        terminalreporter.section("not run here, and why", sep="-")
        for line in lines:
            terminalreporter.write_line(line)
