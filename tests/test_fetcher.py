"""The fetcher's own HTTP client: built off the event loop, with the right TLS context."""

from __future__ import annotations

import ssl
import threading
import zlib
from collections.abc import Iterator

import anyio
import anyio.abc
import httpx
import pytest

from payme_auth import Environment, PaymeAuth, TokenEndpointUnavailableError
from payme_auth import _fetcher as fetcher_module
from payme_auth._fetcher import TokenFetcher, _tls_context, _untrusting_context
from payme_auth._reading import read_capped
from payme_auth.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    EmulatorServer,
    run_emulator,
)

from . import hostile_server as hostile
from .conftest import FAST_RETRY

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def served() -> Iterator[EmulatorServer]:
    with run_emulator() as server:
        yield server


def _fetcher(auth: PaymeAuth) -> TokenFetcher:
    fetcher = auth._provider._source
    assert isinstance(fetcher, TokenFetcher)
    return fetcher


async def test_the_client_is_built_in_a_worker_thread(
    served: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = PaymeAuth(
        DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=served.environment, retry=FAST_RETRY
    )
    built_in: list[int] = []
    original = TokenFetcher._new_client

    def spy(self: TokenFetcher) -> httpx.AsyncClient:
        built_in.append(threading.get_ident())
        return original(self)

    monkeypatch.setattr(TokenFetcher, "_new_client", spy)
    with anyio.fail_after(10):
        await auth.get_token()
        await auth.refresh()
    assert len(built_in) == 2
    assert threading.get_ident() not in built_in


def test_a_plain_http_token_url_gets_a_context_that_trusts_nothing(
    served: EmulatorServer,
) -> None:
    auth = PaymeAuth(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, environment=served.environment)
    client = _fetcher(auth)._new_client()
    context = _untrusting_context()
    assert client._transport._pool._ssl_context is context  # type: ignore[attr-defined]
    assert context.cert_store_stats()["x509"] == 0
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert _untrusting_context() is context  # built once


def test_an_https_token_url_gets_the_ca_bundle_once() -> None:
    context = _tls_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0
    assert _tls_context() is context
    auth = PaymeAuth("id", "secret", environment=Environment.PREPROD)
    assert not _fetcher(auth)._plain


async def test_tls_through_the_untrusting_context_fails_instead_of_going_unverified() -> None:
    """What an HTTPS proxy in front of a plain-HTTP token URL would meet: a refused handshake."""
    environment = Environment(
        name="tls-loopback",
        token_url="http://127.0.0.1:9/token",
        audience="http://127.0.0.1:9",
    )
    auth = PaymeAuth("id", "secret", environment=environment, retry=FAST_RETRY)
    fetcher = _fetcher(auth)
    assert fetcher._plain
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610

        async def serve_garbage(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.send(b"not a TLS server hello at all\r\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve_garbage)
            client = httpx.AsyncClient(verify=_untrusting_context())
            async with client:
                with anyio.fail_after(10), pytest.raises(httpx.ConnectError):
                    await client.get(f"https://127.0.0.1:{port}/token")
            tg.cancel_scope.cancel()


async def test_an_unreachable_endpoint_leaves_no_thread_or_task_behind() -> None:
    environment = Environment(
        name="dead", token_url="http://127.0.0.1:9/token", audience="http://127.0.0.1:9"
    )
    auth = PaymeAuth("id", "secret", environment=environment, retry=FAST_RETRY, timeout=2)
    before = {task.id for task in anyio.get_running_tasks()}
    with anyio.fail_after(20), pytest.raises(TokenEndpointUnavailableError):
        await auth.get_token()
    assert {task.id for task in anyio.get_running_tasks()} <= before


# -- reading an answer within the cap --------------------------------------------------------


async def _read(handler: hostile.Handler, limit: int) -> tuple[bytes, bool] | httpx.HTTPError:
    """What read_capped gives for *handler*'s answer, or the error it raises."""
    with anyio.fail_after(10):
        async with hostile.hostile_server(handler) as server, httpx.AsyncClient() as client:
            url = server.environment.token_url
            async with client.stream("POST", url, content=b"{}") as response:
                try:
                    return await read_capped(response, limit)
                except httpx.HTTPError as error:  # out of the server's task group as it is
                    return error


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize("chunked", [False, True])
async def test_read_capped_keeps_the_cap_to_the_byte(encoding: str, chunked: bool) -> None:
    """A body of exactly the cap is whole; one byte more is truncated to the cap, whether
    it arrives plain or gzipped, with a length or chunked (no length)."""
    for size, truncated in ((1000, False), (1001, True)):
        data = b"x" * size
        sent = data if encoding == "identity" else _gzip(data)
        headers = {"Content-Encoding": encoding}
        if chunked:
            handler = hostile.chunked_answer(200, sent, headers)
        else:
            handler = hostile.answer(200, sent, headers)
        # A declared length over the cap is refused unread; otherwise reading stops at it.
        unread = truncated and not chunked and encoding == "identity"
        assert await _read(handler, 1000) == (b"" if unread else data[:1000], truncated)


async def test_read_capped_refuses_a_declared_length_over_the_cap() -> None:
    """A Content-Length over the cap is not read at all."""
    assert await _read(hostile.answer(200, b"x" * 2000), 1000) == (b"", True)


async def test_read_capped_ignores_an_error_body_in_an_unknown_encoding() -> None:
    """A non-2xx answer in br is not read, but is not an error either: its status counts."""
    assert await _read(hostile.compressed(503, "br", b"\x00\x01"), 1000) == (b"", False)


async def test_read_capped_says_broken_gzip_is_broken() -> None:
    """Gzip data that does not inflate is a DecodingError."""
    error = await _read(hostile.compressed(200, "gzip", b"not gzip at all"), 1000)
    assert isinstance(error, httpx.DecodingError)
    assert "broken gzip data" in str(error)


def test_the_fetcher_still_offers_read_capped() -> None:
    """read_capped moved to _reading; importing it from _fetcher still works."""
    assert fetcher_module.read_capped is read_capped
