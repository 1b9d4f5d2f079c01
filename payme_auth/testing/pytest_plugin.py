"""pytest fixtures for testing code that calls Pay-me through payme_auth, with no network.

Opt-in: enable it in a ``conftest.py`` at the root of your tests::

    pytest_plugins = ["payme_auth.testing.pytest_plugin"]

or on the command line with ``-p payme_auth.testing.pytest_plugin``. Needs
``payme-auth[testing]`` (respx for the mock, uvicorn for the emulator).

Fixtures (ask for them by name, as test arguments):

.. py:data:: payme_token_mock
   :type: ~payme_auth.testing.PaymeTokenMock

   A started :class:`~payme_auth.testing.PaymeTokenMock`: Pay-me's token URLs answered
   in-process by respx. Your own respx routes (``respx_mock``) keep serving everything
   else. Queued answers left unused fail the test, unless it failed already.

.. py:data:: payme_emulator
   :type: ~payme_auth.testing.EmulatorServer

   The running :class:`~payme_auth.testing.EmulatorServer` (a Pay-me emulator on a
   loopback port), put back as it was built before each test.

.. py:data:: payme_emulator_session
   :type: ~payme_auth.testing.EmulatorServer

   The same server, once per session and never reset: what ``payme_emulator`` resets.

.. py:data:: payme_environment
   :type: ~payme_auth.Environment

   The :class:`~payme_auth.Environment` pointing at the emulator.

.. py:data:: payme_credentials
   :type: ~payme_auth.testing.Credentials

   The emulator's :class:`~payme_auth.testing.Credentials`.

.. py:data:: payme_auth_factory
   :type: PaymeAuthFactory

   ``payme_auth_factory(**settings)`` builds a :class:`~payme_auth.PaymeAuth` bound to
   the emulator; each one is closed after the test.

.. py:data:: payme_auth
   :type: ~payme_auth.PaymeAuth

   One such :class:`~payme_auth.PaymeAuth`, not entered.

The fixtures are synchronous on purpose: they work the same under anyio's pytest plugin
(asyncio and trio, whatever ``anyio_backend`` says), pytest-asyncio or pytest-trio, and
never tie an event loop to a fixture's scope. The emulator serves from a thread of its
own, so tests on any backend use one server.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any, Protocol

import pytest

from .. import Environment, PaymeAuth, RetryPolicy
from ._mock import PaymeTokenMock
from ._server import EmulatorServer, run_emulator
from ._values import Credentials

__all__ = [
    "TEST_RETRY",
    "PaymeAuthFactory",
    "payme_auth",
    "payme_auth_factory",
    "payme_credentials",
    "payme_emulator",
    "payme_emulator_session",
    "payme_environment",
    "payme_token_mock",
]

TEST_RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, max_retry_after=1.0)
"""The retry policy of :data:`payme_auth_factory`'s PaymeAuth: three attempts, short waits.

A test of a ``Retry-After`` longer than a second needs a policy of its own.
"""

_CALL_FAILED = pytest.StashKey[bool]()


class PaymeAuthFactory(Protocol):
    """What the ``payme_auth_factory`` fixture gives: a maker of PaymeAuth for the emulator."""

    def __call__(self, **settings: Any) -> PaymeAuth:
        """Build a PaymeAuth; *settings* override the defaults (see ``payme_auth_factory``)."""
        ...


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Note in the item whether the test itself failed, for the fixtures' teardown."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@pytest.fixture
def payme_token_mock(request: pytest.FixtureRequest) -> Iterator[PaymeTokenMock]:
    """A started :class:`~payme_auth.testing.PaymeTokenMock` of both Pay-me token URLs.

    Only the token URLs are routed; mock the API with respx routes of your own (the
    ``respx_mock`` fixture, ``with respx.mock:``). For other settings (an environment of
    your own, required credentials), build a ``PaymeTokenMock(...)`` in the test instead.
    """
    mock = PaymeTokenMock()
    mock.start()
    yield mock
    mock.stop(check=not request.node.stash.get(_CALL_FAILED, False))


@pytest.fixture(scope="session")
def payme_emulator_session() -> Iterator[EmulatorServer]:
    """One Pay-me emulator served on a loopback port for the whole session.

    A server costs about 0.2 s to stop, so it is shared. Tests should use
    ``payme_emulator``, which resets it; this one is for fixtures of a wider scope.
    """
    with run_emulator() as server:
        yield server


@pytest.fixture
def payme_emulator(payme_emulator_session: EmulatorServer) -> EmulatorServer:
    """The session's emulator server, put back as it was built (see ``PaymeEmulator.reset``).

    Its knobs, clients, injected faults, tokens and counters are those of a new
    ``PaymeEmulator()``: change them freely in the test.
    """
    payme_emulator_session.emulator.reset()
    return payme_emulator_session


@pytest.fixture
def payme_environment(payme_emulator: EmulatorServer) -> Environment:
    """The :class:`~payme_auth.Environment` of ``payme_emulator`` (token URL, audience)."""
    return payme_emulator.environment


@pytest.fixture
def payme_credentials(payme_emulator: EmulatorServer) -> Credentials:
    """The client id and secret ``payme_emulator`` accepts."""
    emulator = payme_emulator.emulator
    return Credentials(client_id=emulator.client_id, client_secret=emulator.client_secret)


@pytest.fixture
def payme_auth_factory(
    payme_environment: Environment, payme_credentials: Credentials
) -> Iterator[PaymeAuthFactory]:
    """Build :class:`~payme_auth.PaymeAuth` instances bound to ``payme_emulator``.

    Defaults: the emulator's credentials and environment, :data:`TEST_RETRY` and a 5 s
    timeout; keyword arguments override any of them or add others (``scopes=...``,
    ``clock=...``). The instances are not entered: use them as they are
    (``httpx.AsyncClient(auth=auth)``) or enter them in the test (``async with auth:``).
    Each is closed after the test, so that one kept by mistake fails loudly later.
    """
    made: list[PaymeAuth] = []

    def make(**settings: Any) -> PaymeAuth:
        options: dict[str, Any] = {
            **payme_credentials.as_kwargs(),
            "environment": payme_environment,
            "retry": TEST_RETRY,
            "timeout": 5.0,
        }
        auth = PaymeAuth(**{**options, **settings})
        made.append(auth)
        return auth

    yield make
    for auth in made:
        _close_outside_event_loop(auth)


@pytest.fixture
def payme_auth(payme_auth_factory: PaymeAuthFactory) -> PaymeAuth:
    """A :class:`~payme_auth.PaymeAuth` bound to ``payme_emulator``, not entered.

    Built by ``payme_auth_factory()`` with its defaults, and closed after the test.
    """
    return payme_auth_factory()


def _close_outside_event_loop(auth: PaymeAuth) -> None:
    """Close *auth* from synchronous code, after the test.

    ``PaymeAuth.aclose()`` never suspends: it marks the instance closed, forgets the token,
    then cancels its own fetch if one is still in the air. So its coroutine runs to the end
    on its first step, with no event loop.

    One case needs a running loop: a fetch still in the air (a background renewal the test
    did not wait for) on an asyncio loop that is alive but idle, because an async fixture
    of the test still holds it. asyncio then refuses the cancellation with RuntimeError.
    By that point the instance is closed and has no token; the fetch is bounded by its
    timeout, its result is dropped since the instance is closed, and the loop cancels it
    when it shuts down.
    """
    closing = auth.aclose()
    try:
        closing.send(None)
    except StopIteration:
        return
    except RuntimeError:
        if auth.stats().state != "closed":
            raise
        return
    closing.close()
    raise RuntimeError("PaymeAuth.aclose() suspended: it cannot be run outside an event loop")
