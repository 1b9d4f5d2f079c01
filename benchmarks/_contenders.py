"""The contenders, each configured the way its own documentation recommends.

- ``floor``: an ``httpx.Auth`` whose ``async_auth_flow`` sets two constant headers. No token
  is ever fetched; the server accepts its constant token. It is what any auth costs at least.
- ``payme_auth``: ``PaymeAuth`` used inside ``async with``, defaults everywhere (its refresh
  margin of 60 s is capped at half a short token's life by the library itself). It adds
  ``ALG-API-VERSION`` itself, so its API client sets no default headers, as a user's would
  not; the floor's neither. ``payme_auth (no async with)`` is the same, made and plugged
  in without ``async with`` (closed with ``aclose()`` once done): the cold start runs it too.
- ``authlib``: ``AsyncOAuth2Client`` with ``token_endpoint``, ``grant_type="client_credentials"``
  and ``token_endpoint_auth_method="client_secret_post"`` (credentials in the body, as Pay-me
  wants); ``ALG-API-VERSION`` goes in the client's default ``headers``. It does no first fetch
  by itself (a request without a token raises ``MissingTokenError``), so ``fetch_token()`` is
  called explicitly before traffic. Its token requests are form-encoded: its async client
  always posts ``data=`` (a compliance hook cannot change that), so it could not talk to the
  real Pay-me token endpoint, which wants JSON; here the lenient endpoint accepts the form.
- ``httpx-auth``: ``OAuth2ClientCredentials(token_url, client_id, client_secret, scope=...)``
  with a documented ``client=httpx.Client(...)`` carrying ``ALG-API-VERSION`` (and the API
  client carries it too, as for Authlib: neither auth sets it). It fetches
  with that *blocking* client inside the auth flow: the whole token round trip freezes the
  event loop. Its token cache is class-level and global (shared by every instance with the
  same settings), so the harness drops the instance's entry before each run to give every
  run a fresh client.

For tokens shorter than the peers' default margins (Authlib ``leeway=60``, httpx-auth
``early_expiry=30``), those defaults make every request fetch a new token; such scenarios
set the peers' margin to half the token's life, the margin payme_auth applies by itself.
The outage inside the refresh margin gives every contender the same margin, and payme_auth
``advisory_ratio=None`` so that its renewal is due from that margin on, as the peers' is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from payme_auth import API_VERSION, Environment, PaymeAuth

from ._server import CLIENT_ID, CLIENT_SECRET, FLOOR_TOKEN

SCOPES = "create:token post:charges get:charges delete:charges"

# The peers log at WARNING or below on normal operation; keep stdout for the results.
logging.getLogger("payme_auth").setLevel(logging.CRITICAL)
logging.getLogger("httpx_auth").setLevel(logging.CRITICAL)


class GatedTransport(httpx.AsyncBaseTransport):
    """A keep-alive transport that lets at most *width* requests into httpcore's pool.

    httpcore's pool rescans every queued request against every connection each time a
    request arrives or ends, and its cost grows with the square of the connections: with
    1,000 calls queued on 100 connections that is seconds of CPU per run, the same for every
    contender, and it drowns what is measured. Waiting on a semaphore *after* the auth flow
    keeps the pool small and its queue short while every caller still goes through the auth
    flow at once. On loopback, 5 connections give the most calls per second of CPU; at most
    20 idle connections are kept (httpx's default), for the same reason.
    """

    def __init__(self, width: int) -> None:
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=width, max_keepalive_connections=min(width, 20))
        )
        self._gate = asyncio.Semaphore(width)
        self.last_served = 0.0  # time.monotonic() at which the last API call left its auth

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/token"):  # Authlib's token requests come here too
            self.last_served = time.monotonic()
        async with self._gate:
            response = await self._inner.handle_async_request(request)
            await response.aread()
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class CutOffTransport(httpx.HTTPTransport):
    """A blocking transport that sends nothing once its ``cut_at`` has passed.

    For a contender whose token requests block the event loop: a deadline cannot interrupt
    it, and every call queued behind would block the loop once more, so after the cut its
    token requests fail at once, as calls cancelled at the cut do for the others.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cut_at = math.inf  # time.monotonic()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if time.monotonic() >= self.cut_at:
            raise httpx.ConnectError("cut off by the harness", request=request)
        return super().handle_request(request)


@dataclass
class Target:
    """Where a contender gets tokens and sends API calls."""

    token_url: str
    base_url: str  # the API base URL, no trailing slash
    async_transport: httpx.AsyncBaseTransport | None = None  # e.g. httpx.MockTransport
    sync_transport: httpx.BaseTransport | None = None
    width: int = 5  # API calls let into the connection pool at once (see GatedTransport)

    @property
    def audience(self) -> str:
        return self.base_url + "/"

    def api_transport(self) -> httpx.AsyncBaseTransport:
        """The API calls' transport: the mock, or a fresh gated loopback transport."""
        if self.async_transport is not None:
            return self.async_transport
        return GatedTransport(self.width)


@dataclass
class Session:
    """An open contender: its client, and its auth flow to drive by hand."""

    client: httpx.AsyncClient
    drive: Callable[[httpx.Request, httpx.Response], Awaitable[None]]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def last_served(self) -> float:
        """When the last API call left the auth flow (``time.monotonic()``), or 0."""
        transport = self.client._transport  # noqa: SLF001 - the harness's own transport
        return transport.last_served if isinstance(transport, GatedTransport) else 0.0


class FloorAuth(httpx.Auth):
    """The floor: two constant headers, nothing else."""

    def __init__(self) -> None:
        self._authorization = f"Bearer {FLOOR_TOKEN}"
        self._api_version = API_VERSION

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = self._authorization
        request.headers["ALG-API-VERSION"] = self._api_version
        yield request


async def drive_auth(auth: httpx.Auth, request: httpx.Request, response: httpx.Response) -> None:
    """Run one request through *auth*'s async flow by hand, as httpx's own tests do."""
    flow = auth.async_auth_flow(request)
    await flow.__anext__()
    try:
        await flow.asend(response)
    except StopAsyncIteration:
        pass
    else:  # pragma: no cover - a second request means a replay, never on a 200
        await flow.aclose()


class Contender:
    name = ""
    #: Limitations shown in the results, never hidden.
    notes = ""
    #: Whether its token requests block the event loop (then it can overrun a deadline).
    blocks_loop = False

    def open(
        self,
        target: Target,
        *,
        margin: float | None = None,
        at_margin: bool = False,
        token_timeout: int | None = None,
    ) -> Opener:
        """Open the contender; *margin*: seconds before expiry at which it renews.

        *at_margin*: renewal is due from *margin* on and not before (only payme_auth has
        an earlier, advisory, renewal to switch off). *token_timeout*: seconds a token
        request may take, for a contender whose token requests block the event loop
        (httpx-auth's default is 60 s); the others wait without blocking and keep theirs.
        """
        raise NotImplementedError


Opener = contextlib.AbstractAsyncContextManager[Session]


def _api_client(
    target: Target, auth: httpx.Auth | None, *, version_header: bool = True
) -> httpx.AsyncClient:
    """The API client; *version_header*: ``ALG-API-VERSION`` among its default headers,
    for an auth that does not set it."""
    return httpx.AsyncClient(
        base_url=target.base_url,
        auth=auth,
        transport=target.api_transport(),
        timeout=60,
        headers={"ALG-API-VERSION": API_VERSION} if version_header else None,
    )


class Floor(Contender):
    name = "floor"
    notes = "two constant headers; no token is fetched"

    @contextlib.asynccontextmanager
    async def open(
        self,
        target: Target,
        *,
        margin: float | None = None,
        at_margin: bool = False,
        token_timeout: int | None = None,
    ) -> AsyncIterator[Session]:
        auth = FloorAuth()
        async with _api_client(target, auth, version_header=False) as client:

            async def drive(request: httpx.Request, response: httpx.Response) -> None:
                await drive_auth(auth, request, response)

            yield Session(client=client, drive=drive)


class Payme(Contender):
    name = "payme_auth"
    notes = "defaults; `async with PaymeAuth(...)`"
    entered = True

    @contextlib.asynccontextmanager
    async def open(
        self,
        target: Target,
        *,
        margin: float | None = None,
        at_margin: bool = False,
        token_timeout: int | None = None,
    ) -> AsyncIterator[Session]:
        environment = Environment(
            token_url=target.token_url, audience=target.audience, name="bench"
        )
        token_client = (
            httpx.AsyncClient(transport=target.async_transport)
            if target.async_transport is not None
            else None
        )
        # Its own margin (60 s, capped at half the lifetime) unless told to renew at one.
        options = {"refresh_margin": margin, "advisory_ratio": None} if at_margin else {}
        auth = PaymeAuth(
            CLIENT_ID,
            CLIENT_SECRET,
            environment=environment,
            http_client=token_client,
            **options,  # type: ignore[arg-type]
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self.entered:
                    await stack.enter_async_context(auth)
                else:
                    stack.push_async_callback(auth.aclose)
                client = await stack.enter_async_context(
                    _api_client(target, auth, version_header=False)
                )

                async def drive(request: httpx.Request, response: httpx.Response) -> None:
                    await drive_auth(auth, request, response)

                yield Session(client=client, drive=drive, extra={"auth": auth})
        finally:
            if token_client is not None:
                await token_client.aclose()


class PaymeBare(Payme):
    name = "payme_auth (no async with)"
    notes = "defaults; `PaymeAuth(...)` plugged in without `async with`"
    entered = False


class Authlib(Contender):
    name = "authlib"
    notes = (
        "no first fetch by itself: `fetch_token()` is called before traffic; "
        "form-encoded token request (cannot send Pay-me's JSON body); an anyio lock on "
        "every request; no 401 replay"
    )

    @contextlib.asynccontextmanager
    async def open(
        self,
        target: Target,
        *,
        margin: float | None = None,
        at_margin: bool = False,
        token_timeout: int | None = None,
    ) -> AsyncIterator[Session]:
        import authlib.deprecate  # noqa: F401 - installs an "always" filter when imported

        with warnings.catch_warnings():
            # Authlib 1.9 says it prefers "httpx2" when it finds httpx; it still uses httpx.
            warnings.simplefilter("ignore")
            from authlib.integrations.httpx_client import AsyncOAuth2Client

        client = AsyncOAuth2Client(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scope=SCOPES,
            token_endpoint=target.token_url,
            grant_type="client_credentials",
            token_endpoint_auth_method="client_secret_post",
            leeway=60 if margin is None else margin,
            base_url=target.base_url,
            headers={"ALG-API-VERSION": API_VERSION},
            timeout=60,
            transport=target.api_transport(),
        )
        async with client:

            async def drive(request: httpx.Request, response: httpx.Response) -> None:
                # What AsyncOAuth2Client.request does per call, then its httpx.Auth.
                await client.ensure_active_token(client.token)
                await drive_auth(client.token_auth, request, response)

            async def start() -> None:
                # Pay-me's extra fields go with the first fetch only: Authlib's own renewals
                # (ensure_active_token) send just grant_type and scope.
                await client.fetch_token(
                    grant_type="client_credentials",
                    action="authorize",
                    audience=target.audience,
                )

            yield Session(client=client, drive=drive, extra={"start": start})


class HttpxAuth(Contender):
    name = "httpx-auth"
    notes = (
        "fetches with a blocking `httpx.Client` inside the flow (the event loop stalls for "
        "the whole token round trip); form-encoded; global class-level token cache (its entry "
        "dropped before each run); no 401 replay"
    )

    blocks_loop = True

    @contextlib.asynccontextmanager
    async def open(
        self,
        target: Target,
        *,
        margin: float | None = None,
        at_margin: bool = False,
        token_timeout: int | None = None,
    ) -> AsyncIterator[Session]:
        from httpx_auth import OAuth2, OAuth2ClientCredentials

        token_client = httpx.Client(
            transport=target.sync_transport, headers={"ALG-API-VERSION": API_VERSION}
        )
        auth = OAuth2ClientCredentials(
            target.token_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scope=SCOPES,
            early_expiry=30.0 if margin is None else margin,
            timeout=token_timeout,  # None: its default, 60 s
            client=token_client,
            action="authorize",
            audience=target.audience,
        )
        # Forget what an earlier run left under this instance's key (its settings), and only
        # that: another instance open at the same time keeps its token.
        OAuth2.token_cache.tokens.pop(auth.state, None)
        try:
            async with _api_client(target, auth) as client:

                async def drive(request: httpx.Request, response: httpx.Response) -> None:
                    await drive_auth(auth, request, response)

                yield Session(client=client, drive=drive)
        finally:
            token_client.close()  # noqa: ASYNC212 - httpx-auth's own (sync) client
            OAuth2.token_cache.tokens.pop(auth.state, None)


CONTENDERS: list[Contender] = [Floor(), Payme(), Authlib(), HttpxAuth()]
COLD_CONTENDERS: list[Contender] = [*CONTENDERS[:2], PaymeBare(), *CONTENDERS[2:]]
"""The cold start's: payme_auth also without ``async with``."""


async def start(session: Session) -> None:
    """Do what must happen before traffic (only Authlib needs anything)."""
    starter = session.extra.get("start")
    if starter is not None:
        await starter()  # type: ignore[operator]
