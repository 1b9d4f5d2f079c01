"""The ``payme-auth`` command (also ``python -m payme_auth``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio

from . import __version__


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payme-auth", description="Access tokens for the Pay-me (Alignet) payments API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run bursts of authenticated calls against a local Pay-me emulator",
        description="Serve the Pay-me emulator on loopback and call it through PaymeAuth.",
    )
    demo.add_argument("--requests", type=_positive, default=200, help="calls per burst")
    demo.add_argument("--concurrency", type=_positive, default=100, help="calls in flight")
    demo.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="the event loop"
    )
    demo.add_argument("--verbose", action="store_true", help="show payme_auth's log")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ._demo import run_demo

    try:
        ok = anyio.run(
            lambda: run_demo(sys.stdout, requests=args.requests, concurrency=args.concurrency),
            backend=args.backend,
        )
    except ImportError as error:
        print(f"payme-auth: {error}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
