"""The ``payme-auth`` command (also ``python -m payme_auth``).

Commands: ``token`` (get a token), ``check`` (diagnose the configuration and the token
endpoint), ``emulator`` (serve a local Pay-me) and ``demo``. Exit codes are the
``EXIT_*`` constants: 0 ok, 1 other failure, 2 usage or configuration, 3 refused by the
token endpoint, 4 token endpoint unavailable, 5 unusable token answer, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import anyio

from . import __version__
from ._cli import (
    EXIT_BAD_ANSWER,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
    Finding,
    debug_logging,
    is_wrong_url,
    report_error,
    wrong_url_text,
)
from ._cli_check import run_check, write_findings
from ._cli_emulator import EmulatorOptions, serve_emulator
from ._cli_settings import CredentialOptions, resolve
from ._cli_token import TokenOptions, run_token
from ._errors import ConfigurationError, TokenRefusedError

__all__ = [
    "EXIT_BAD_ANSWER",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

_EPILOG = """\
exit codes: 0 ok, 1 other failure, 2 usage or bad configuration (a wrong token URL
too), 3 refused by the token endpoint (credentials, scope, audience), 4 token endpoint
unavailable, 5 unusable token answer, 130 interrupted"""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _rate(text: str) -> float:
    value = _seconds(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, not {value}")
    return value


def _add_credentials(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "credentials and environment",
        "Each flag overrides its PAYME_* variable: PAYME_CLIENT_ID, PAYME_CLIENT_SECRET, "
        "PAYME_ENVIRONMENT (preprod, production) or PAYME_TOKEN_URL with PAYME_AUDIENCE, "
        "PAYME_API_VERSION, PAYME_SCOPES.",
    )
    group.add_argument("--client-id", metavar="ID", help="the client id (PAYME_CLIENT_ID)")
    secret = group.add_mutually_exclusive_group()
    secret.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help="read the client secret from the first line of PATH; '-' reads stdin "
        "(without echo on a terminal)",
    )
    secret.add_argument(
        "--client-secret",
        metavar="SECRET",
        help="the client secret: discouraged, other users see it in the process list and "
        "it stays in shell history; prefer PAYME_CLIENT_SECRET or --client-secret-file",
    )
    group.add_argument("--environment", metavar="NAME", help="preprod or production")
    group.add_argument("--token-url", metavar="URL", help="a custom token URL (with --audience)")
    group.add_argument("--audience", metavar="URL", help="a custom audience (with --token-url)")
    group.add_argument("--api-version", metavar="DIGITS", help="the ALG-API-VERSION header")
    group.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        metavar="SCOPE",
        help="a scope to request (repeatable; spaces or commas separate several); "
        "create:token is always added. Default: all four documented scopes",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="the time allowed for one token request (default: 10)",
    )


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser, and each command's own parser by name."""
    # --debug is accepted before and after the command; SUPPRESS keeps the command's
    # parser from resetting a --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and payme_auth's debug log (which never holds a secret)",
    )
    parser = argparse.ArgumentParser(
        prog="payme-auth",
        description="Access tokens for the Pay-me (Alignet) payments API.",
        epilog=_EPILOG,
        parents=[debug],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    token = commands.add_parser(
        "token",
        parents=[debug],
        help="get an access token and describe it",
        description="Get an access token and describe it (never showing it unless asked).",
        epilog=_EPILOG,
    )
    _add_credentials(token)
    token.add_argument(
        "--show-token",
        action="store_true",
        help="print the token itself and a newline, nothing else (with --json: add it there)",
    )
    token.add_argument("--json", action="store_true", help="print a JSON summary")
    token.add_argument(
        "--attempts",
        type=_positive,
        default=3,
        help="token requests to make at most when the endpoint is unavailable (default: 3)",
    )

    check = commands.add_parser(
        "check",
        parents=[debug],
        help="check the configuration and the token endpoint, one finding per line",
        description="Check the settings, then ask the token endpoint for a token and say "
        "plainly what is wrong: a missing variable, an unknown environment, an unreachable "
        "token URL, refused credentials or scopes, a wrong audience, a skewed clock.",
        epilog=_EPILOG,
    )
    _add_credentials(check)

    emulator = commands.add_parser(
        "emulator",
        parents=[debug],
        help="serve a local Pay-me emulator until stopped",
        description="Serve the Pay-me emulator (token endpoint and /charges API) and print "
        "its URLs, its credentials and PAYME_* export lines; runs until SIGINT or SIGTERM.",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument(
        "--port", type=_port, default=8765, help="port to listen on; 0 picks a free one"
    )
    emulator.add_argument("--client-id", metavar="ID", help="the client id it accepts")
    emulator.add_argument("--client-secret", metavar="SECRET", help="the secret it accepts")
    emulator.add_argument(
        "--scopes", metavar="SCOPES", help="the scopes the client may get (default: all four)"
    )
    emulator.add_argument(
        "--token-lifetime", type=_positive, default=8600, help="expires_in of its tokens (s)"
    )
    emulator.add_argument(
        "--token-latency", type=_seconds, default=0.0, help="delay before token answers (s)"
    )
    emulator.add_argument(
        "--api-latency", type=_seconds, default=0.0, help="delay before API answers (s)"
    )
    emulator.add_argument(
        "--failure-rate",
        type=_rate,
        default=0.0,
        help="probability (0 to 1) that a token request gets a 503",
    )
    emulator.add_argument("--seed", type=int, help="seed for the failures, to repeat them")

    demo = commands.add_parser(
        "demo",
        parents=[debug],
        help="run bursts of authenticated calls against a local Pay-me emulator",
        description="Serve the Pay-me emulator on loopback and call it through PaymeAuth.",
    )
    demo.add_argument("--requests", type=_positive, default=200, help="calls per burst")
    demo.add_argument("--concurrency", type=_positive, default=100, help="calls in flight")
    demo.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="the event loop"
    )
    demo.add_argument("--verbose", action="store_true", help="show payme_auth's log")
    return parser, {"token": token, "check": check, "emulator": emulator, "demo": demo}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse *argv*; an argument a command does not know is told with that command's usage.

    (argparse alone hands unknown arguments up to the top-level parser, whose usage
    says nothing of the command's own options.)
    """
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _run(args: argparse.Namespace, secrets: list[str]) -> int:
    out, err = sys.stdout, sys.stderr
    if args.command == "demo":
        import logging

        from ._demo import run_demo

        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        ok = anyio.run(
            lambda: run_demo(out, requests=args.requests, concurrency=args.concurrency),
            backend=args.backend,
        )
        return EXIT_OK if ok else EXIT_FAILURE
    if args.command == "emulator":
        if args.client_secret:
            secrets.append(args.client_secret)
        served = EmulatorOptions(
            host=args.host,
            port=args.port,
            client_id=args.client_id,
            client_secret=args.client_secret,
            scopes=args.scopes,
            token_lifetime=args.token_lifetime,
            token_latency=args.token_latency,
            api_latency=args.api_latency,
            failure_rate=args.failure_rate,
            seed=args.seed,
        )
        return serve_emulator(served, out)

    if args.client_secret:
        secrets.append(args.client_secret)
        err.write(
            "payme-auth: warning: --client-secret exposes the secret in the process list "
            "and shell history; prefer PAYME_CLIENT_SECRET or --client-secret-file\n"
        )
    credentials = CredentialOptions(
        client_id=args.client_id,
        client_secret=args.client_secret,
        client_secret_file=args.client_secret_file,
        environment=args.environment,
        token_url=args.token_url,
        audience=args.audience,
        api_version=args.api_version,
        scopes=args.scopes,
    )
    resolution = resolve(credentials, os.environ, sys.stdin)
    secrets.extend(resolution.secrets)
    if args.command == "token":
        # Before anything is sent: a misspelt scope is otherwise only refused by the server.
        for finding in resolution.findings:
            if finding.is_warning:
                err.write(f"payme-auth: warning: {finding.text}\n")
    if args.command == "check":
        findings = list(resolution.findings)
        if resolution.settings is None:
            findings.append(
                Finding.note("the token endpoint was not asked: fix the configuration first")
            )
        else:
            settings = resolution.settings
            findings.extend(anyio.run(lambda: run_check(settings, limit=args.timeout)))
        return write_findings(findings, out)

    if resolution.settings is None:
        raise ConfigurationError(resolution.problems[0].text)
    settings = resolution.settings
    options = TokenOptions(
        show_token=args.show_token, as_json=args.json, timeout=args.timeout, attempts=args.attempts
    )
    try:
        return anyio.run(lambda: run_token(settings, options, out))
    except TokenRefusedError as error:
        if not is_wrong_url(error) or error.status_code is None:
            raise
        url = settings.environment.token_url
        text = wrong_url_text(url, error.status_code, settings.url_fix)
        raise CommandError(text, exit_code=EXIT_USAGE) from error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    args = _parse(argv)
    debug = bool(getattr(args, "debug", False))
    secrets: list[str] = []
    try:
        with debug_logging(sys.stderr, enabled=debug):
            return _run(args, secrets)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - every error becomes one line and a code
        return report_error(error, sys.stderr, secrets=secrets, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
