"""Development sessions for payme_auth.

Run ``nox`` for the default sessions (tests on every supported Python, lint,
typing, docs), ``nox -l`` to list them, or ``nox -s NAME`` for one of them
(``nox -s soak`` for the minute-long soak test, which is not a default).
Arguments after ``--`` go to pytest in the ``tests`` and ``soak`` sessions, e.g.
``nox -s tests-3.11 -- -k refresh -x``.

Every test session runs the whole suite: ``--run-slow`` adds the tests a plain
``pytest`` (the README's quick command) leaves out, those marked ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"
# nox's own default: a missing interpreter is an error when $CI is set, a skip otherwise.
nox.options.error_on_missing_interpreters = "CI" in os.environ
nox.options.sessions = ["tests", "httpx2", "lint", "typing", "docs"]

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# The Python used by the single-interpreter sessions: always present (CI's own).
MAIN_PYTHON = "3.11"

# The linter and type checker are pinned: their new releases add rules and change
# inferences, and CI should not go red on a day nobody changed anything.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite under coverage (branch) and report it."""
    session.install("-e", ".[test]")
    # One data file per session, so parallel or successive sessions never mix
    # or clobber each other's data ([tool.coverage.run] parallel = true adds
    # a per-process suffix; `coverage combine` then merges only this session's).
    data_file = Path(session.create_tmp()).resolve() / ".coverage"
    env = {"COVERAGE_FILE": str(data_file)}
    session.run("coverage", "erase", env=env)
    session.run("coverage", "run", "-m", "pytest", "--run-slow", *session.posargs, env=env)
    session.run("coverage", "combine", env=env)
    session.run("coverage", "report", env=env)


@nox.session(python=MAIN_PYTHON)
def httpx2(session: nox.Session) -> None:
    """Run the tests that need httpx2 (the plugs' shared tests, the httpx2 plug's own, the
    aiohttp and requests plugs over the httpx2 plug) with httpx2 installed."""
    session.install("-e", ".[test,httpx2]")
    session.run(
        "pytest",
        "--run-slow",
        "tests/test_auth_flow.py",
        "tests/test_httpx2.py",
        "tests/test_aiohttp.py",
        "tests/test_requests.py",
        *session.posargs,
    )


@nox.session(python=MAIN_PYTHON)
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff (no changes are made)."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=MAIN_PYTHON)
def typing(session: nox.Session) -> None:
    """Type-check the package and the tests with mypy --strict."""
    session.install("-e", ".[test,httpx2]", MYPY)
    session.run("mypy", "--strict", "payme_auth", "tests")


@nox.session(python=MAIN_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML documentation; any Sphinx warning fails the build."""
    session.install(".[docs]")
    # -E: read every page afresh, so a warning in an unchanged page is not lost
    # to a cached environment from an earlier build.
    session.run(
        "sphinx-build", "-E", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )
    session.log(f"Documentation written to {ROOT / 'docs' / '_build' / 'html' / 'index.html'}")


@nox.session(python=MAIN_PYTHON)
def soak(session: nox.Session) -> None:
    """Run the soak test: 200 callers, a 4 s token, a flaky token endpoint, asyncio and trio.

    A minute per backend; PAYME_SOAK_SECONDS sets another length (CI runs 8 s). Not one
    of the default sessions, and not part of the plain ``pytest`` run.
    """
    session.install("-e", ".[test]")
    session.run(
        "pytest", "tests/soak", "--run-slow", "-p", "no:cacheprovider", "-q", *session.posargs
    )


@nox.session(python=MAIN_PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark payme_auth against a floor, Authlib and httpx-auth (docs/performance.md).

    Arguments after ``--`` go to ``python -m benchmarks``: ``nox -s bench -- --quick``
    (CI's short run), ``nox -s bench -- --update-docs`` (rewrite the results page).
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=MAIN_PYTHON)
def demo(session: nox.Session) -> None:
    """Run the self-contained demo against the local Pay-me emulator."""
    session.install(".[emulator]")
    session.run("python", "-m", "payme_auth", "demo", *session.posargs)
