"""A Flask service that takes payments through the Pay-me API, authenticated by payme_auth.

``POST /pay`` with ``{"amount": "10.00", "currency": "PEN"}`` creates a charge
(``POST {audience}/charges``) and answers with Pay-me's transaction id and state.
``GET /health/payme`` shows the token's state, with no secret in it.

Synchronous code, served by a threaded WSGI server: one :class:`~payme_auth.PaymeAuth` for
the whole process, shared by every worker thread, so that however many requests arrive at
once Pay-me is asked for one token. The Pay-me calls go through requests, authenticated by
:class:`payme_auth.requests.PaymeRequestsAuth`, which adds the token, and on a 401 drops it,
gets a new one and replays the request once.

Configuration comes from the environment: ``PAYME_CLIENT_ID``, ``PAYME_CLIENT_SECRET`` and
either ``PAYME_ENVIRONMENT`` (``preprod``, the default, or ``production``) or
``PAYME_TOKEN_URL`` with ``PAYME_AUDIENCE`` (the local emulator); ``PAYME_MERCHANT_CODE`` is
the merchant code sent with every charge; ``PORT`` the port to listen on (8000). Run it
with waitress, 8 threads::

    python examples/flask_app.py

or ``waitress-serve --threads=8 --port=8000 --call flask_app:create_app`` from
``examples/`` (or ``gunicorn --threads 8 'flask_app:create_app()'``).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import threading
from typing import Any

import attrs
import requests
from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

from payme_auth import PaymeAuth, TokenError
from payme_auth.requests import PaymeRequestsAuth

AMOUNT = re.compile(r"\d{1,9}\.\d{2}")
CURRENCY = re.compile(r"[A-Z]{3}")
TIMEOUT = 15.0  # seconds, for each call to Pay-me


def new_operation_number() -> str:
    """A fresh ``merchant_operation_number``: Pay-me has no idempotency key, this is it.

    A real service takes it from its own order table, so that a retried payment reuses it.
    """
    return f"{secrets.randbelow(10**12):012d}"


def create_app() -> Flask:
    """Build the service; the Pay-me settings are read from the environment now.

    Raises:
        ConfigurationError: a ``PAYME_*`` variable is missing or invalid.
    """
    # One PaymeAuth per process, made once and shared by every thread: the cached token,
    # the one fetch in flight and the stats are its own. It costs nothing until the first
    # payment needs a token, and is closed when the process exits.
    auth = PaymeAuth.from_env()
    atexit.register(auth.close)
    plug = PaymeRequestsAuth(auth)  # thread-safe: it holds no state of its own
    charges_url = f"{auth.environment.api_base_url}/charges"
    merchant_code = os.environ.get("PAYME_MERCHANT_CODE", "DEMO")

    # A requests.Session keeps connections open between calls; one per worker thread,
    # since requests does not promise that a session may be shared between threads.
    local = threading.local()

    def payme() -> requests.Session:
        session: requests.Session | None = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.auth = plug
        return session

    app = Flask(__name__)
    app.extensions["payme_auth"] = auth

    @app.post("/pay")
    def pay() -> ResponseReturnValue:
        """Create a charge at Pay-me; answer with its transaction id and state."""
        payment: Any = request.get_json(silent=True)
        if not isinstance(payment, dict):
            abort(400, "the body must be a JSON object")
        amount, currency = payment.get("amount"), payment.get("currency", "PEN")
        if not (isinstance(amount, str) and AMOUNT.fullmatch(amount)):
            abort(400, '"amount" must be a string such as "10.00"')
        if not (isinstance(currency, str) and CURRENCY.fullmatch(currency)):
            abort(400, '"currency" must be a three-letter code such as "PEN"')
        charge = {
            "merchant_code": merchant_code,
            "merchant_operation_number": new_operation_number(),
            "amount": amount,
            "currency": currency,
        }
        try:
            response = payme().post(charges_url, json=charge, timeout=TIMEOUT)
        except TokenError:
            # No token: refused credentials, or the token endpoint is down. payme_auth has
            # logged why, with no secret; the caller learns only that payments are unavailable.
            abort(503, "payments are unavailable right now")
        except requests.RequestException:
            abort(502, "Pay-me could not be reached")
        if response.status_code != 200:
            abort(502, f"Pay-me answered HTTP {response.status_code}")
        transaction = response.json()["transaction"]
        return {
            "merchant_operation_number": charge["merchant_operation_number"],
            "transaction_id": transaction["transaction_id"],
            "state": transaction["state"],
        }

    @app.get("/health/payme")
    def payme_health() -> ResponseReturnValue:
        """The token's state and counters; HTTP 503 while no usable token can be had."""
        stats = auth.stats()
        return jsonify(attrs.asdict(stats)), 200 if stats.healthy else 503

    return app


if __name__ == "__main__":
    import waitress

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    waitress.serve(
        create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")), threads=8
    )
