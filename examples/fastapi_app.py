"""A FastAPI service that takes payments through the Pay-me API, authenticated by payme_auth.

``POST /pay`` with ``{"amount": "10.00", "currency": "PEN"}`` creates a charge
(``POST {audience}/charges``) and answers with Pay-me's transaction id and state.
``GET /health/payme`` shows the token's state, with no secret in it.

Configuration comes from the environment: ``PAYME_CLIENT_ID``, ``PAYME_CLIENT_SECRET`` and
either ``PAYME_ENVIRONMENT`` (``preprod``, the default, or ``production``) or
``PAYME_TOKEN_URL`` with ``PAYME_AUDIENCE`` (the local emulator); ``PAYME_MERCHANT_CODE`` is
the merchant code sent with every charge. Run it with::

    uvicorn fastapi_app:app --app-dir examples --port 8000
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import attrs
import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from payme_auth import PaymeAuth, TokenError


class Payment(BaseModel):
    """What a client of this service sends to ``POST /pay``."""

    amount: str = Field(pattern=r"^\d{1,9}\.\d{2}$", examples=["10.00"])
    currency: str = Field(default="PEN", pattern=r"^[A-Z]{3}$")


def new_operation_number() -> str:
    """A fresh ``merchant_operation_number``: Pay-me has no idempotency key, this is it.

    A real service takes it from its own order table, so that a retried payment reuses it.
    """
    return f"{secrets.randbelow(10**12):012d}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One PaymeAuth and one HTTP client for the whole life of the service."""
    async with (
        PaymeAuth.from_env() as auth,
        httpx.AsyncClient(
            base_url=auth.environment.api_base_url, auth=auth, timeout=15.0
        ) as client,
    ):
        app.state.payme_auth = auth
        app.state.payme = client
        app.state.merchant_code = os.environ.get("PAYME_MERCHANT_CODE", "DEMO")
        yield


def payme_client(request: Request) -> httpx.AsyncClient:
    """The dependency that hands routes the authenticated Pay-me client."""
    client: httpx.AsyncClient = request.app.state.payme
    return client


def payme_auth(request: Request) -> PaymeAuth:
    """The dependency that hands routes the PaymeAuth (for its stats)."""
    auth: PaymeAuth = request.app.state.payme_auth
    return auth


Payme = Annotated[httpx.AsyncClient, Depends(payme_client)]
Auth = Annotated[PaymeAuth, Depends(payme_auth)]

app = FastAPI(title="Payments", lifespan=lifespan)


@app.post("/pay")
async def pay(payment: Payment, payme: Payme, request: Request) -> dict[str, Any]:
    """Create a charge at Pay-me; answer with its transaction id and state."""
    charge = {
        "merchant_code": request.app.state.merchant_code,
        "merchant_operation_number": new_operation_number(),
        "amount": payment.amount,
        "currency": payment.currency,
    }
    try:
        response = await payme.post("/charges", json=charge)
    except TokenError as error:
        # No token: refused credentials, or the token endpoint is down. The message and
        # the log carry no secret; the caller learns only that payments are unavailable.
        raise HTTPException(503, "payments are unavailable right now") from error
    except httpx.HTTPError as error:
        raise HTTPException(502, "Pay-me could not be reached") from error
    if response.status_code != 200:
        raise HTTPException(502, f"Pay-me answered HTTP {response.status_code}")
    transaction = response.json()["transaction"]
    return {
        "merchant_operation_number": charge["merchant_operation_number"],
        "transaction_id": transaction["transaction_id"],
        "state": transaction["state"],
    }


@app.get("/health/payme")
async def payme_health(auth: Auth) -> JSONResponse:
    """The token's state and counters; HTTP 503 while no usable token can be had."""
    stats = auth.stats()
    return JSONResponse(attrs.asdict(stats), status_code=200 if stats.healthy else 503)
