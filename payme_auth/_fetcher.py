"""Sending the token request over HTTP, with retries. It knows nothing of caching.

Rules:
- Owning no HTTP client, the fetcher opens one per fetch and closes it at once, so nothing
  is left open between fetches. The client is built in a worker thread: the first one
  imports httpcore and loads the CA bundle (tens of milliseconds each), and none of that
  may hold the event loop. The TLS context is built once per process; a plain-HTTP token
  URL (loopback only) gets one that trusts no certificate instead of loading the bundle.
  A borrowed client is used as it is and never closed.
- Every token request disables redirects and the client's own auth, so the secret goes
  nowhere but the token URL.
- One attempt is bounded as a whole, since httpx's timeouts bound each network operation
  and a server that trickles bytes could otherwise hold it for ever.
- Exceptions from the HTTP stack are not chained into ours: they reference the request,
  whose body holds the client secret. Their type and message are kept in ours instead.
- No frame here that an error passes through holds the answer's body or a secret in a local
  variable: error trackers record the locals of every frame of a traceback.
- A fetch of our own builds its client with the proxies of the environment, as httpx does;
  a proxy variable httpx cannot use is a ConfigurationError naming it (see
  ``_config.proxy_problem``), not httpx's ImportError or ValueError.
"""

from __future__ import annotations

import functools
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import httpx

from ._config import Environment, check_proxy_environment
from ._errors import (
    ConfigurationError,
    TokenEndpointUnavailableError,
    TokenError,
    TokenResponseError,
)
from ._log import logger
from ._policy import RetryPolicy
from ._protocol import (
    Failure,
    build_token_request,
    clean_text,
    read_token_response,
)
from ._reading import read_capped
from ._token import AccessToken

__all__ = ["TokenFetcher", "read_capped"]


class TokenFetcher:
    """Gets one token from the token endpoint, retrying transient failures."""

    def __init__(
        self,
        *,
        environment: Environment,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...],
        timeout: httpx.Timeout,
        attempt_timeout: float,
        http_client: httpx.AsyncClient | None,
        assumed_expires_in: int | None,
        clock: Callable[[], float],
        retry: RetryPolicy,
    ) -> None:
        self.environment = environment
        self.retry = retry
        self.scopes = scopes
        self._secrets = (client_secret,)
        self._request = build_token_request(environment, client_id, client_secret, scopes)
        self._timeout = timeout
        self._deadline = attempt_timeout
        self._http_client = http_client
        self._plain = self._request.url.startswith("http://")
        self._assumed_expires_in = assumed_expires_in
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self.requests = 0
        """Token requests sent, retries included."""

    async def fetch(self, current: AccessToken | None = None) -> AccessToken:
        """Return a new token, or raise the TokenError that ended the attempts.

        *current* is not needed here: every fetch asks the endpoint.
        """
        retry = self.retry
        async with self._client() as client:
            attempt = 0
            while True:
                attempt += 1
                self.requests += 1
                logger.debug(
                    "requesting a token from %s (attempt %d of %d)",
                    self._request.url,
                    attempt,
                    retry.attempts,
                )
                outcome = await self._attempt(client)
                if isinstance(outcome, AccessToken):
                    logger.info(
                        "obtained token %s for %s (expires in %d s, scope: %s)",
                        outcome.fingerprint,
                        self.environment.name,
                        outcome.expires_in,
                        " ".join(sorted(outcome.scope)),
                    )
                    return outcome
                if not outcome.retryable:
                    raise outcome.error
                delay = retry.delay(
                    attempt, retry_after=outcome.retry_after, draw=self._random.random()
                )
                if delay is None:
                    raise _unavailable(outcome, attempt)
                logger.warning(
                    "token request attempt %d of %d failed (%s); retrying in %.2f s",
                    attempt,
                    retry.attempts,
                    outcome.error,
                    delay,
                )
                await anyio.sleep(delay)

    def refused(self, token: AccessToken) -> None:
        """Nothing to do: the endpoint is asked anew at every fetch."""

    async def _attempt(self, client: httpx.AsyncClient) -> AccessToken | Failure:
        request = self._request
        sent_at = self._clock()
        problem: str | None = None
        with anyio.move_on_after(self._deadline) as scope:
            try:
                async with client.stream(
                    "POST",
                    request.url,
                    headers=request.headers,
                    content=request.content,
                    timeout=self._timeout,
                    follow_redirects=False,
                    auth=None,
                ) as response:
                    body, truncated = await read_capped(response)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except httpx.HTTPError as exc:  # undecodable content and the like: not transient
                return Failure(
                    error=TokenResponseError(
                        f"the token answer could not be read ({type(exc).__name__})",
                        detail=clean_text(str(exc), self._secrets),
                    )
                )
        if scope.cancelled_caught:
            problem = f"no complete answer within {self._deadline:g} s"
        if problem is not None:
            return Failure(
                error=TokenError(f"it could not be reached: {clean_text(problem, self._secrets)}"),
                retryable=True,
            )
        return read_token_response(
            response.status_code,
            response.headers,
            body,
            truncated=truncated,
            requested_scopes=self.scopes,
            obtained_at=sent_at,
            now=time.time(),
            assumed_expires_in=self._assumed_expires_in,
            secrets=self._secrets,
        )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http_client is not None:
            yield self._http_client
            return
        client = await anyio.to_thread.run_sync(self._new_client)
        async with client:
            yield client

    def _new_client(self) -> httpx.AsyncClient:
        """Build a client for one fetch (in a worker thread: see the rules above).

        Raises:
            ConfigurationError: a proxy variable of the environment is unusable.
        """
        check_proxy_environment()
        context = _untrusting_context() if self._plain else _tls_context()
        try:
            return httpx.AsyncClient(verify=context, timeout=self._timeout)
        except (ImportError, ValueError) as exc:  # what the check above did not foresee
            # httpx's text may show a proxy URL, password and all: keep only the type.
            raise ConfigurationError(
                f"no HTTP client could be built for token requests ({type(exc).__name__}): "
                "check the proxy variables of the environment (HTTP_PROXY, HTTPS_PROXY, "
                "ALL_PROXY, NO_PROXY)"
            ) from None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CA bundle, or ``SSL_CERT_FILE``), built once."""
    return httpx.create_ssl_context()


@functools.cache
def _untrusting_context() -> ssl.SSLContext:
    """A verifying TLS context that trusts nothing: for plain-HTTP token URLs.

    Such a URL uses no TLS, unless an HTTPS proxy is configured in the environment; then
    the handshake fails instead of going unverified.
    """
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _unavailable(outcome: Failure, attempts: int) -> TokenEndpointUnavailableError:
    last = outcome.error
    return TokenEndpointUnavailableError(
        f"the token endpoint was unavailable after {attempts} "
        f"attempt{'s' if attempts > 1 else ''}: {last.args[0] if last.args else last}",
        attempts=attempts,
        retry_after=outcome.retry_after,
        status_code=last.status_code,
        code=last.code,
        error=last.error,
        detail=last.detail,
    )
