"""One process of a fleet: ``python child.py '<json settings>'``.

It builds a PaymeAuth with (or without) a RedisTokenStore from the settings, writes
``{"event": "ready", "pid": ...}`` on stdout, waits for a line on stdin (so that a whole
fleet starts at once), then either gets a token and makes one API call (``"mode": "token"``)
or makes API calls for ``seconds`` seconds (``"mode": "calls"``), and writes one
``{"event": "done", ...}`` line: calls that succeeded and failed, its token requests, the
fingerprints of the tokens it used. Its log (WARNING and up) goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

import httpx

from payme_auth import Environment, PaymeAuth, RetryPolicy
from payme_auth.redis import RedisTokenStore

API_PATH = "/charges/merchant/op-1/tx-1"


def say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def run(settings: dict[str, Any]) -> dict[str, Any] | None:
    environment = Environment(
        token_url=settings["token_url"],
        audience=settings["audience"],
        api_version=settings["api_version"],
        name="emulator",
    )
    store = None
    if settings.get("redis_url"):
        store = RedisTokenStore(
            settings["redis_url"],
            prefix=settings.get("prefix", "payme_auth:"),
            timeout=settings.get("redis_timeout", 0.5),
            down_for=settings.get("down_for", 5.0),
        )
    ok = failed = 0
    statuses: dict[str, int] = {}
    fingerprints: list[str] = []
    # Plain HTTP to loopback: no CA bundle to load, which is most of a client's start-up.
    token_client = httpx.AsyncClient(verify=False)  # noqa: S501
    api = httpx.AsyncClient(base_url=environment.api_base_url, verify=False)  # noqa: S501
    auth = PaymeAuth(
        settings["client_id"],
        settings["client_secret"],
        environment=environment,
        timeout=settings.get("timeout", 10.0),
        retry=RetryPolicy(attempts=settings.get("attempts", 3), backoff=0.05),
        refresh_margin=settings.get("refresh_margin", 60.0),
        store=store,
        http_client=token_client,
    )
    api.auth = auth
    say(event="ready", pid=os.getpid())
    if not await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
        return None  # the driver went away before the start
    async with auth, api, token_client:

        async def call() -> None:
            nonlocal ok, failed
            try:
                response = await api.get(API_PATH)
            except Exception as error:
                statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
                failed += 1
                return
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            if response.status_code == 200:
                ok += 1
            else:
                failed += 1
            mark = auth.stats().token_fingerprint
            if mark is not None and (not fingerprints or fingerprints[-1] != mark):
                fingerprints.append(mark)

        if settings.get("mode", "token") == "token":
            await auth.get_token()
            await call()
        else:
            end = time.monotonic() + settings["seconds"]
            while time.monotonic() < end:
                await call()
                await asyncio.sleep(settings.get("interval", 0.05))
        stats = auth.stats()
    if store is not None:
        await store.aclose()
    return {
        "ok": ok,
        "failed": failed,
        "statuses": statuses,
        "token_requests": stats.token_requests,
        "fingerprints": fingerprints,
    }


def main() -> None:
    settings = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    result = asyncio.run(run(settings))
    if result is not None:
        say(event="done", pid=os.getpid(), **result)


if __name__ == "__main__":
    main()
