"""Write the small intersphinx inventories the documentation links outside names with.

The documentation is built with no network, so intersphinx reads these files instead of
each project's ``objects.inv``. Each holds only the names the pages and docstrings refer
to, each pointing at its page in that project's public documentation. To link another
outside name, add it below and run ``python docs/_inventories/make.py``; the files are
committed.

Format: Sphinx inventory version 2 (a four-line header, then zlib-compressed lines of
``name domain:role priority uri display``; ``$`` in a URI stands for the name, ``-`` as
the display for the name itself).
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

_ABC = "library/collections.abc.html#$"
_EXC = "library/exceptions.html#$"

INVENTORIES: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    # file stem: (project, version, {name: (domain:role, uri)})
    "python": (
        "Python",
        "3",
        {
            "collections.abc.AsyncGenerator": ("py:class", _ABC),
            "collections.abc.AsyncIterator": ("py:class", _ABC),
            "collections.abc.Awaitable": ("py:class", _ABC),
            "collections.abc.Callable": ("py:class", _ABC),
            "collections.abc.Generator": ("py:class", _ABC),
            "collections.abc.Iterable": ("py:class", _ABC),
            "collections.abc.Iterator": ("py:class", _ABC),
            "collections.abc.Mapping": ("py:class", _ABC),
            "collections.abc.Sequence": ("py:class", _ABC),
            "random.Random": ("py:class", "library/random.html#$"),
            "time.monotonic": ("py:function", "library/time.html#$"),
            "time.time": ("py:function", "library/time.html#$"),
            "logging.Logger": ("py:class", "library/logging.html#$"),
            "Exception": ("py:exception", _EXC),
            "ValueError": ("py:exception", _EXC),
            "RuntimeError": ("py:exception", _EXC),
            "TimeoutError": ("py:exception", _EXC),
            "str": ("py:class", "library/stdtypes.html#$"),
            "bytes": ("py:class", "library/stdtypes.html#$"),
            "tuple": ("py:class", "library/stdtypes.html#$"),
            "list": ("py:class", "library/stdtypes.html#$"),
            "dict": ("py:class", "library/stdtypes.html#$"),
            "frozenset": ("py:class", "library/stdtypes.html#$"),
            "int": ("py:class", "library/functions.html#$"),
            "float": ("py:class", "library/functions.html#$"),
            "bool": ("py:class", "library/functions.html#$"),
            "object": ("py:class", "library/functions.html#$"),
            "None": ("py:data", "library/constants.html#$"),
        },
    ),
    "httpx": (
        "HTTPX",
        "0.28",
        {
            "httpx.AsyncClient": ("py:class", "api/#asyncclient"),
            "httpx.Client": ("py:class", "api/#client"),
            "httpx.Request": ("py:class", "api/#request"),
            "httpx.Response": ("py:class", "api/#response"),
            "httpx.URL": ("py:class", "api/#url"),
            "httpx.Headers": ("py:class", "api/#headers"),
            "httpx.Auth": ("py:class", "advanced/authentication/#custom-authentication-schemes"),
            "httpx.Timeout": ("py:class", "advanced/timeouts/"),
            "httpx.ASGITransport": ("py:class", "advanced/transports/#asgi-transport"),
            "httpx.AsyncBaseTransport": ("py:class", "advanced/transports/#custom-transports"),
            "httpx.MockTransport": ("py:class", "advanced/transports/#mock-transports"),
            "httpx.HTTPError": ("py:exception", "exceptions/"),
            "httpx.TransportError": ("py:exception", "exceptions/"),
            "httpx.ConnectError": ("py:exception", "exceptions/"),
            "httpx.RemoteProtocolError": ("py:exception", "exceptions/"),
            "httpx.TimeoutException": ("py:exception", "exceptions/"),
        },
    ),
    "respx": (
        "RESPX",
        "0.22",
        {
            "respx.Router": ("py:class", "api/#router"),
            "respx.MockRouter": ("py:class", "api/#router"),
            "respx.Route": ("py:class", "api/#route"),
        },
    ),
    "requests": (
        "Requests",
        "2",
        {
            "requests.Session": ("py:class", "api/#$"),
            "requests.PreparedRequest": ("py:class", "api/#$"),
            "requests.Response": ("py:class", "api/#$"),
            "requests.auth.AuthBase": ("py:class", "api/#$"),
        },
    ),
    "redis": (
        "redis-py",
        "5",
        {
            "redis.asyncio.Redis": ("py:class", "connections.html#redis.asyncio.client.Redis"),
        },
    ),
    "cryptography": (
        "Cryptography",
        "latest",
        {
            "cryptography.fernet.Fernet": ("py:class", "fernet/#$"),
            "cryptography.fernet.MultiFernet": ("py:class", "fernet/#$"),
        },
    ),
}


def render(project: str, version: str, names: dict[str, tuple[str, str]]) -> bytes:
    """One inventory file's bytes."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = "".join(f"{name} {role} 1 {uri} -\n" for name, (role, uri) in sorted(names.items()))
    return header.encode() + zlib.compress(lines.encode(), 9)


def main() -> None:
    """Write every inventory next to this file."""
    for stem, (project, version, names) in INVENTORIES.items():
        (HERE / f"{stem}.inv").write_bytes(render(project, version, names))


if __name__ == "__main__":
    main()
