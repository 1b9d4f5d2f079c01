"""``python -m benchmarks``: run every scenario, print a Markdown report, write JSON.

    python -m benchmarks                 # the full run (several minutes)
    python -m benchmarks --quick         # small sizes, for CI (about a minute)
    python -m benchmarks --update-docs   # also rewrite docs/performance.md and its plot
    python -m benchmarks --only warm_overhead,revocation --json /tmp/bench.json

Progress goes to stderr, the report to stdout. The exit status is non-zero only if a
scenario could not run; timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ._fleet import fleet
from ._measure import ROOT, Server
from ._report import SYNC_MARKERS, compact, markdown, plot, update_docs
from ._scenarios import SCENARIOS, Settings
from ._sync import run_sync, sync_markdown

SCENARIOS["fleet"] = fleet  # token requests per hour for N processes, with and without Redis
SYNC = "sync"  # synchronous callers from threads (benchmarks/_sync.py), run after the rest

DEFAULT_JSON = ROOT / "benchmarks" / "results.json"


def _versions() -> dict[str, str]:
    def one(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    return {name: one(name) for name in ("payme-auth", "httpx", "authlib", "httpx-auth", "uvicorn")}


def _revision() -> str:
    """The commit measured, and whether payme_auth/ differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - read-only git
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "payme_auth"],  # noqa: S607 - read-only
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # status must not touch the index
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (payme_auth/ modified)" if dirty else head


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _run(names: list[str], settings: Settings) -> tuple[dict[str, Any], list[str]]:
    results: dict[str, Any] = {}
    failures: list[str] = []
    with Server(max_seconds=3600) as server:
        for name in names:
            _log(f"scenario {name}")
            began = time.monotonic()
            try:
                results[name] = await SCENARIOS[name](server, settings, _log)
                results[name]["seconds"] = time.monotonic() - began
            except Exception:  # noqa: BLE001 - reported, and the exit status says so
                failures.append(name)
                _log(f"scenario {name} FAILED:\n{traceback.format_exc()}")
            _log(f"  ({time.monotonic() - began:.1f} s)")
    return results, failures


def _check_complete(results: dict[str, Any], names: list[str]) -> list[str]:
    """Every scenario ran, for every contender, in every case (timings are not judged)."""
    problems = []
    for name in names:
        scenario = results.get(name)
        if not scenario or not scenario.get("cases"):
            problems.append(f"{name}: no results")
            continue
        for case in scenario["cases"]:
            for contender, data in case["contenders"].items():
                if not data["metrics"]:
                    problems.append(f"{name}/{case['case']}/{contender}: no metrics")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds (CI)")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default: {DEFAULT_JSON.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the results in docs/performance.md and its plot",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios: " + ", ".join([*SCENARIOS, SYNC])
    )
    parser.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or [*SCENARIOS, SYNC]
    unknown = [n for n in names if n not in SCENARIOS and n != SYNC]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; "
            f"choose from: {', '.join([*SCENARIOS, SYNC])}"
        )
    if importlib.util.find_spec("httpx2") is not None:
        # Authlib then runs on httpx2 instead of httpx, and the harness's transports and
        # servers speak httpx: every contender must run on the same HTTP stack.
        parser.error(
            "httpx2 is installed here, and Authlib would run on it instead of httpx: run the "
            "benchmarks where it is not (`nox -s bench` builds such an environment)"
        )
    settings = Settings.quick_settings() if args.quick else Settings.full()
    if args.rounds > 0:
        settings = dataclasses.replace(
            settings,
            rounds=args.rounds,
            cold_rounds_small=args.rounds,
            cold_rounds_large=args.rounds,
            renewal_rounds=args.rounds,
            outage_rounds=args.rounds,
            margin_rounds=args.rounds,
        )

    began = time.monotonic()
    asynchronous = [name for name in names if name != SYNC]
    scenarios, failures = asyncio.run(_run(asynchronous, settings))
    synchronous: dict[str, Any] | None = None
    if SYNC in names:
        _log("== sync")
        try:
            synchronous = run_sync(args.quick, _log)
        except Exception:  # noqa: BLE001 - reported, and the run counts as incomplete
            _log(f"scenario sync raised:\n{traceback.format_exc()}")
            failures.append(SYNC)
    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "versions": _versions(),
            "commit": _revision(),
            "seconds": round(time.monotonic() - began, 1),
        },
        "settings": dataclasses.asdict(settings),
        "scenarios": scenarios,
    }
    report = markdown(results) if asynchronous else ""
    sync_report = sync_markdown(synchronous) if synchronous is not None else ""
    if synchronous is not None:
        results["sync"] = synchronous
    print("\n\n".join(part for part in (report, sync_report) if part))
    if args.update_docs:
        if asynchronous:
            picture = plot(results)
            update_docs(report)
            _log(f"docs/performance.md updated; plot: {picture}")
        if sync_report:
            update_docs(sync_report, markers=SYNC_MARKERS, figure=False)
            _log("docs/performance.md: the synchronous callers' section updated")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(compact(results), indent=1, default=str)
    args.json.write_text(text + "\n", encoding="utf-8")
    _log(f"results written to {args.json}")
    ran = [n for n in asynchronous if n not in failures]
    problems = [f"{name}: raised" for name in failures] + _check_complete(scenarios, ran)
    if problems:
        _log("INCOMPLETE RUN:\n  " + "\n  ".join(problems))
        return 1
    _log(f"all {len(names)} scenario(s) ran in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
