"""A local Pay-me for tests and demos: the token endpoint and a small API, in-process or served.

In-process, through httpx's ASGI transport (asyncio or trio)::

    from payme_auth.testing import PaymeEmulator

    emulator = PaymeEmulator()
    transport = httpx.ASGITransport(app=emulator)

Over a real loopback socket (needs ``payme-auth[emulator]``, which brings uvicorn)::

    from payme_auth.testing import run_emulator

    with run_emulator() as server:
        environment = server.environment
        server.emulator.inject(Fault(status=503, headers={"Retry-After": "1"}))

Or with no server at all, the token endpoint mocked by respx (needs ``payme-auth[testing]``)::

    from payme_auth.testing import PaymeTokenMock

    with PaymeTokenMock() as mock:
        mock.refuse(401)
        await PaymeAuth("client-id", "wrong-secret").get_token()  # InvalidCredentialsError

For pytest, ``payme_auth.testing.pytest_plugin`` wraps these in fixtures (opt-in).
"""

from __future__ import annotations

from ._emulator import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, MAX_BODY_SIZE, PaymeEmulator
from ._mock import PaymeTokenMock
from ._server import EmulatorServer, run_emulator
from ._values import (
    AnswerKind,
    CredentialArguments,
    Credentials,
    EmulatorStats,
    Fault,
    TokenCall,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "MAX_BODY_SIZE",
    "AnswerKind",
    "CredentialArguments",
    "Credentials",
    "EmulatorServer",
    "EmulatorStats",
    "Fault",
    "PaymeEmulator",
    "PaymeTokenMock",
    "TokenCall",
    "run_emulator",
]
