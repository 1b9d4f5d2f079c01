"""An aiohttp service that takes payments through the Pay-me API, authenticated by payme_auth.

``POST /pay`` with ``{"amount": "10.00", "currency": "PEN"}`` creates a charge
(``POST {audience}/charges``) and answers with Pay-me's transaction id and state.
``GET /health/payme`` shows the token's state, with no secret in it.

The Pay-me calls go through an :class:`aiohttp.ClientSession` whose client middleware,
:class:`payme_auth.aiohttp.PaymeAuthMiddleware` (aiohttp 3.12 or later), adds the token, and
on a 401 drops it, gets a new one and replays the request once: what
``httpx.AsyncClient(auth=PaymeAuth(...))`` does for httpx.

Configuration comes from the environment: ``PAYME_CLIENT_ID``, ``PAYME_CLIENT_SECRET`` and
either ``PAYME_ENVIRONMENT`` (``preprod``, the default, or ``production``) or
``PAYME_TOKEN_URL`` with ``PAYME_AUDIENCE`` (the local emulator); ``PAYME_MERCHANT_CODE`` is
the merchant code sent with every charge; ``PORT`` the port to listen on (8000). Run it
with::

    python examples/aiohttp_app.py
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import AsyncIterator

import aiohttp
import attrs
from aiohttp import web

from payme_auth import PaymeAuth, TokenError
from payme_auth.aiohttp import PaymeAuthMiddleware

AUTH = web.AppKey("payme_auth", PaymeAuth)
SESSION = web.AppKey("payme_session", aiohttp.ClientSession)
MERCHANT_CODE = web.AppKey("merchant_code", str)

AMOUNT = re.compile(r"\d{1,9}\.\d{2}")
CURRENCY = re.compile(r"[A-Z]{3}")


async def payme_context(app: web.Application) -> AsyncIterator[None]:
    """One PaymeAuth and one client session for the whole life of the service."""
    async with PaymeAuth.from_env() as auth:
        timeout = aiohttp.ClientTimeout(total=15.0)
        async with aiohttp.ClientSession(
            middlewares=(PaymeAuthMiddleware(auth),), timeout=timeout
        ) as session:
            app[AUTH] = auth
            app[SESSION] = session
            app[MERCHANT_CODE] = os.environ.get("PAYME_MERCHANT_CODE", "DEMO")
            yield


def new_operation_number() -> str:
    """A fresh ``merchant_operation_number``: Pay-me has no idempotency key, this is it."""
    return f"{secrets.randbelow(10**12):012d}"


async def pay(request: web.Request) -> web.Response:
    """Create a charge at Pay-me; answer with its transaction id and state."""
    try:
        payment = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    amount = payment.get("amount") if isinstance(payment, dict) else None
    currency = payment.get("currency", "PEN") if isinstance(payment, dict) else None
    if not (isinstance(amount, str) and AMOUNT.fullmatch(amount)):
        raise web.HTTPBadRequest(text='"amount" must be a string such as "10.00"')
    if not (isinstance(currency, str) and CURRENCY.fullmatch(currency)):
        raise web.HTTPBadRequest(text='"currency" must be a three-letter code such as "PEN"')
    app = request.app
    charge = {
        "merchant_code": app[MERCHANT_CODE],
        "merchant_operation_number": new_operation_number(),
        "amount": amount,
        "currency": currency,
    }
    url = f"{app[AUTH].environment.api_base_url}/charges"
    try:
        async with app[SESSION].post(url, json=charge) as response:
            if response.status != 200:
                raise web.HTTPBadGateway(text=f"Pay-me answered HTTP {response.status}")
            answer = await response.json()
    except TokenError:
        # No token: refused credentials, or the token endpoint is down. payme_auth has
        # logged why, with no secret; the caller learns only that payments are unavailable.
        raise web.HTTPServiceUnavailable(text="payments are unavailable right now") from None
    except aiohttp.ClientError:
        raise web.HTTPBadGateway(text="Pay-me could not be reached") from None
    transaction = answer["transaction"]
    return web.json_response(
        {
            "merchant_operation_number": charge["merchant_operation_number"],
            "transaction_id": transaction["transaction_id"],
            "state": transaction["state"],
        }
    )


async def payme_health(request: web.Request) -> web.Response:
    """The token's state and counters; HTTP 503 while no usable token can be had."""
    stats = request.app[AUTH].stats()
    return web.json_response(attrs.asdict(stats), status=200 if stats.healthy else 503)


def create_app() -> web.Application:
    """Build the service; the Pay-me settings are read from the environment at startup."""
    app = web.Application()
    app.cleanup_ctx.append(payme_context)
    app.router.add_post("/pay", pay)
    app.router.add_get("/health/payme", payme_health)
    return app


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
