"""Turning results into a Markdown report, payme_auth's targets, a JSON file, a plot, docs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ._measure import ROOT

DOCS_PAGE = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "_static" / "renewal-latency.png"
START_MARKER = "<!-- bench-results -->"
END_MARKER = "<!-- /bench-results -->"
SYNC_MARKERS = ("<!-- bench-sync -->", "<!-- /bench-sync -->")
ORDER = ("floor", "payme_auth", "payme_auth (no async with)", "authlib", "httpx-auth")
TIMES = "\u00d7"  # the multiplication sign
DASH = "\u2013"  # an en dash, for ranges


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000 or (value == int(value) and abs(value) >= 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def cell(summary: dict[str, float] | None, digits: int = 3) -> str:
    """``median (min-max)``, or just the value when every round agreed."""
    if not summary or not summary.get("n"):
        return "n/a"
    median, low, high = summary["median"], summary["min"], summary["max"]
    if summary["n"] == 1 or _fmt(low, digits) == _fmt(high, digits):
        return _fmt(median, digits)
    return f"{_fmt(median, digits)} ({_fmt(low, digits)}{DASH}{_fmt(high, digits)})"


def ratio(summary: dict[str, float] | None) -> str:
    if not summary or not summary.get("n"):
        return "n/a"
    text = f"{summary['median']:.2f}{TIMES}"
    if summary["n"] > 1:
        text += f" ({summary['min']:.2f}{DASH}{summary['max']:.2f})"
    return text


def _rows(contenders: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (name, contenders[name]["metrics"], contenders[name]["ratios"])
        for name in ORDER
        if name in contenders
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


COLD_NOTES = {
    "floor": "no token; last call served measured from the start",
    "payme_auth (no async with)": "plugged in without `async with`",
    "authlib": "explicit `fetch_token()` first (it does no first fetch itself)",
    "httpx-auth": "blocking sync fetch inside the flow",
}
SHORT_TOKEN_NOTE = "margin set to half the lifetime (its default would refetch on every call)"
REPLAY_NOTE = "no 401 handling: the caller gets the 401"
RENEWAL_NOTES = {
    "floor": "no token, no renewal: its latencies are the noise level",
    "authlib": SHORT_TOKEN_NOTE,
    "httpx-auth": SHORT_TOKEN_NOTE,
}


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    scenarios = results["scenarios"]
    meta = results["meta"]
    out.append(
        f"Run of {meta['date']} ({'quick' if meta['quick'] else 'full'}) at commit "
        f"{meta.get('commit', 'unknown')}, Python {meta['python']}, "
        f"{meta['cpus']} CPUs; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "."
    )
    if meta.get("note"):
        out.append(meta["note"])
    out.append(
        f"Cells are `median (min{DASH}max)` over rounds; `{TIMES}floor` is the median of "
        "per-round ratios to the floor measured in the same round."
    )
    if "cold_start" in scenarios:
        out.append(_cold_start(scenarios["cold_start"]))
    if "warm_overhead" in scenarios:
        out.append("### 2. Warm overhead (httpx.MockTransport)\n")
        case = scenarios["warm_overhead"]["cases"][0]
        rows = []
        for name, m, r in _rows(case["contenders"]):
            rows.append(
                [
                    name,
                    cell(m["flow_us"]),
                    ratio(r.get("flow_us")),
                    cell(m["sequential_us"]),
                    ratio(r.get("sequential_us")),
                    cell(m["concurrent_us"]),
                    ratio(r.get("concurrent_us")),
                    cell(m.get("memory_growth_bytes")),
                ]
            )
        out.append(
            _table(
                [
                    "contender",
                    "auth flow alone (µs/req)",
                    f"{TIMES}floor",
                    "sequential (µs/req)",
                    f"{TIMES}floor",
                    "64-way (µs/req)",
                    f"{TIMES}floor",
                    "memory growth (bytes)",
                ],
                rows,
            )
            + "\n"
        )
    if "renewal" in scenarios:
        out.append("### 3. Renewal boundary\n")
        case = scenarios["renewal"]["cases"][0]
        rows = []
        for name, m, _ in _rows(case["contenders"]):
            rows.append(
                [
                    name,
                    cell(m["renewals"]),
                    cell(m["p50_ms"]),
                    cell(m["p99_ms"]),
                    cell(m["max_ms"]),
                    cell(m["baseline_p50_ms"]),
                    cell(m["max_elsewhere_ms"]),
                    cell(m["max_added_ms"]),
                    cell(m["waited"]),
                    cell(m["expired_token_requests"]),
                    cell(m["failed"]),
                    cell(m["stall_ms"]),
                    RENEWAL_NOTES.get(name, ""),
                ]
            )
        out.append(
            f"**{case['case']}**: latencies of calls started in the second around each renewal\n"
        )
        out.append(
            _table(
                [
                    "contender",
                    "renewals",
                    "p50 (ms)",
                    "p99 (ms)",
                    "max (ms)",
                    "p50 elsewhere (ms)",
                    "max elsewhere (ms)",
                    "max added (ms)",
                    "callers that waited",
                    "sent with an expired token",
                    "failed",
                    "loop stall (ms)",
                    "notes",
                ],
                rows,
            )
            + "\n"
        )
    if "outage" in scenarios:
        out.append("### 4. Token endpoint outage\n")
        case = scenarios["outage"]["cases"][0]
        rows = []
        for name, m, _ in _rows(case["contenders"]):
            rows.append(
                [
                    name,
                    f"{cell(m['failed'])} of {cell(m['calls'])}",
                    cell(m["token_requests"]),
                    cell(m["max_latency_ms"]),
                    cell(m["stall_ms"]),
                    SHORT_TOKEN_NOTE if name in ("authlib", "httpx-auth") else "",
                ]
            )
        out.append(f"**{case['case']}** (the token stays valid throughout)\n")
        out.append(
            _table(
                [
                    "contender",
                    "failed API calls",
                    "token requests",
                    "max latency (ms)",
                    "loop stall (ms)",
                    "notes",
                ],
                rows,
            )
            + "\n"
        )
    if "revocation" in scenarios:
        out.append("### 5. Revocation storm\n")
        case = scenarios["revocation"]["cases"][0]
        rows = []
        for name, m, _ in _rows(case["contenders"]):
            rows.append(
                [
                    name,
                    cell(m["in_flight_at_revocation"]),
                    cell(m["failed_in_flight"]),
                    cell(m["failed_after"]),
                    cell(m["extra_token_requests"]),
                    REPLAY_NOTE if name in ("authlib", "httpx-auth") else "",
                ]
            )
        out.append(f"**{case['case']}**\n")
        out.append(
            _table(
                [
                    "contender",
                    "in flight at revocation",
                    "failed (of those)",
                    "failed (100 after)",
                    "extra token requests",
                    "notes",
                ],
                rows,
            )
            + "\n"
        )
    if "fleet" in scenarios:
        from ._fleet import table

        out.append(table(scenarios["fleet"]))
    if "margin_outage" in scenarios:
        out.append(_margin_outage(scenarios["margin_outage"]))
    if "import_time" in scenarios:
        out.append(_import_time(scenarios["import_time"]))
    targets = payme_targets(results)
    if targets:
        out.append("### payme_auth against its targets\n")
        out.append(
            _table(
                ["target", "measured", "met"],
                [[t, m, "yes" if ok else "**no**"] for t, m, ok in targets],
            )
            + "\n"
        )
    return "\n".join(out)


def _cold_start(scenario: dict[str, Any]) -> str:
    out = ["### 1. Cold start\n"]
    for case in scenario["cases"]:
        rows = []
        for name, m, r in _rows(case["contenders"]):
            served = m.get("served_after_answer_ms")
            rows.append(
                [
                    name,
                    cell(m["token_requests"]),
                    cell(m.get("answer_ms")),
                    cell(served) if served and served.get("n") else cell(m.get("last_served_ms")),
                    cell(m["stall_ms"]),
                    cell(m["longest_callback_ms"]),
                    ratio(r.get("longest_callback_ms")),
                    cell(m["longest_callback_cpu_ms"]),
                    cell(m["wall_s"]),
                    ratio(r.get("wall_s")),
                    cell(m["failed"]),
                    COLD_NOTES.get(name, ""),
                ]
            )
        out.append(f"**{case['case']}**\n")
        out.append(
            _table(
                [
                    "contender",
                    "token requests",
                    "token answer at (ms)",
                    "last caller served, after the answer (ms)",
                    "loop stall, heartbeat (ms)",
                    "longest callback, wall (ms)",
                    f"{TIMES}floor",
                    "longest callback, CPU (ms)",
                    "wall (s)",
                    f"wall {TIMES}floor",
                    "failed",
                    "notes",
                ],
                rows,
            )
            + "\n"
        )
    return "\n".join(out)


MARGIN_NOTES = {
    "floor": "no token: the reference",
    "authlib": "renews in the caller's request, under its lock; the error goes to the caller",
    "httpx-auth": (
        "renews in the caller's request with its blocking client, which freezes the event "
        "loop (its `timeout` set to the cut; 60 s by default); the error goes to the caller"
    ),
}


def _margin_outage(scenario: dict[str, Any]) -> str:
    calls, deadline = scenario["calls"], scenario["deadline"]
    out = ["### 7. Outage inside the refresh margin\n"]
    out.append(
        f"The cached token has {scenario['left']:g} s left, inside every contender's "
        f"{scenario['margin']:g} s margin, when {calls:,} calls arrive at once and then "
        f"{calls:,} one after another; each pattern is cut off after {deadline:g} s (calls "
        f"not done by then count as failed, and as lasting until the cut). `{TIMES}floor` compares "
        "a contender's slowest call with the floor's, in the same round.\n"
    )
    for case in scenario["cases"]:
        rows = []
        for name, m, r in _rows(case["contenders"]):
            rows.append(
                [
                    name,
                    cell(m["left_s"]),
                    f"{cell(m['burst_failed'])} of {calls:,}",
                    cell(m["burst_p99_ms"]),
                    cell(m["burst_max_ms"]),
                    ratio(r.get("burst_max_ms")),
                    f"{cell(m['turn_failed'])} of {calls:,}",
                    cell(m["turn_p99_ms"]),
                    cell(m["turn_max_ms"]),
                    ratio(r.get("turn_max_ms")),
                    MARGIN_NOTES.get(name, ""),
                ]
            )
        out.append(f"**{case['case'].capitalize()}**\n")
        out.append(
            _table(
                [
                    "contender",
                    "token life left (s)",
                    "failed, at once",
                    "p99 (ms)",
                    "max (ms)",
                    f"max {TIMES}floor",
                    "failed, in turn",
                    "p99 (ms)",
                    "max (ms)",
                    f"max {TIMES}floor",
                    "notes",
                ],
                rows,
            )
            + "\n"
        )
    return "\n".join(out)


def _import_time(scenario: dict[str, Any]) -> str:
    case = scenario["cases"][0]
    found = case["contenders"]
    runs = found["httpx"]["metrics"]["import_ms"]["n"]
    out = ["### 8. Import time\n"]
    out.append(
        f"`import X` timed inside {runs} fresh interpreters per module (start-up not counted), "
        "the two modules taking turns; the ratio is the median of the ratios of each pair.\n"
    )
    out.append(
        _table(
            ["module", "import (ms)", f"{TIMES}httpx"],
            [
                ["httpx", cell(found["httpx"]["metrics"]["import_ms"]), ""],
                [
                    "payme_auth",
                    cell(found["payme_auth"]["metrics"]["import_ms"]),
                    ratio(case["ratio"]),
                ],
            ],
        )
        + "\n"
    )
    beyond = scenario.get("beyond_httpx") or []
    if beyond:
        out.append(
            "What `payme_auth` loads beyond `httpx` (`-X importtime`, self time by package, "
            "one run): " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in beyond) + ".\n"
        )
    return "\n".join(out)


def _payme(scenario: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return scenario["cases"][index]["contenders"]["payme_auth"]


def payme_targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each of payme_auth's targets: what it says, what was measured, whether it is met."""
    scenarios = results["scenarios"]
    targets: list[tuple[str, str, bool]] = []
    if "cold_start" in scenarios:
        cases = scenarios["cold_start"]["cases"]
        tokens = [c["contenders"]["payme_auth"]["metrics"]["token_requests"] for c in cases]
        targets.append(
            (
                "cold start: exactly 1 token request at any concurrency",
                ", ".join(f"{t['min']:.0f}{DASH}{t['max']:.0f}" for t in tokens),
                all(t["min"] == t["max"] == 1 for t in tokens),
            )
        )
        worst = max(
            c["contenders"]["payme_auth"]["metrics"]["longest_callback_cpu_ms"]["max"]
            for c in cases
        )
        worst_wall = max(
            c["contenders"]["payme_auth"]["metrics"]["longest_callback_ms"]["max"] for c in cases
        )
        floor_wall = max(
            c["contenders"]["floor"]["metrics"]["longest_callback_ms"]["max"] for c in cases
        )
        beat = max(c["contenders"]["payme_auth"]["metrics"]["stall_ms"]["max"] for c in cases)
        floor_beat = max(c["contenders"]["floor"]["metrics"]["stall_ms"]["max"] for c in cases)
        big = [c for c in cases if c["size"] == max(x["size"] for x in cases)]
        fast = [c for c in big if c["token_latency"] == min(x["token_latency"] for x in big)]
        for name in ("payme_auth", "payme_auth (no async with)"):
            if fast and name in fast[0]["contenders"]:
                m = fast[0]["contenders"][name]["metrics"]["served_after_answer_ms"]
                targets.append(
                    (
                        (
                            f"cold start ({fast[0]['case']}), {name}: last caller served "
                            "<= 60 ms after the token answer"
                        ),
                        f"{cell(m)} ms",
                        m["max"] <= 60,
                    )
                )
        targets.append(
            (
                "cold start: event loop never stalled > 5 ms",
                (
                    f"longest callback {worst:.2f} ms of CPU ({worst_wall:.1f} ms of wall "
                    f"time, floor's {floor_wall:.1f} ms: host pauses); heartbeat lateness "
                    f"{beat:.1f} ms (floor's {floor_beat:.1f} ms: launching the calls themselves)"
                ),
                worst <= 5.0,
            )
        )
    if "warm_overhead" in scenarios:
        payme = _payme(scenarios["warm_overhead"])
        flow = payme["ratios"]["flow_us"]["median"]
        seq = payme["ratios"]["sequential_us"]["median"]
        conc = payme["ratios"]["concurrent_us"]["median"]
        growth = payme["metrics"]["memory_growth_bytes"]["median"]
        targets.append(
            (
                f"warm: auth flow alone <= 1.3{TIMES} floor (no header preset)",
                f"{flow:.2f}{TIMES}",
                flow <= 1.3,
            )
        )
        targets.append(
            (
                f"warm: end to end <= 1.03{TIMES} floor",
                f"sequential {seq:.3f}{TIMES}, 64-way {conc:.3f}{TIMES}",
                seq <= 1.03 and conc <= 1.03,
            )
        )
        n = results["settings"]["memory_requests"]
        targets.append(
            (
                "warm: no memory growth",
                f"{growth:+,.0f} bytes over {n:,} requests",
                growth < 0.1 * n,  # less than a tenth of a byte per request
            )
        )
    if "renewal" in scenarios:
        m = _payme(scenarios["renewal"])["metrics"]
        added, waited, expired = (
            m["max_added_ms"]["max"],
            m["waited"]["max"],
            m["expired_token_requests"]["max"],
        )
        targets.append(
            ("renewal: max added latency < 5 ms", f"{added:.1f} ms (worst round)", added < 5)
        )
        targets.append(("renewal: no caller waits", f"{waited:.0f} waited", waited == 0))
        targets.append(
            ("renewal: no request with an expired token", f"{expired:.0f}", expired == 0)
        )
    if "outage" in scenarios:
        m = _payme(scenarios["outage"])["metrics"]
        failed = m["failed"]["max"]
        targets.append(
            (
                "outage: no failed API call while the token is valid",
                f"{failed:.0f} failed (worst round)",
                failed == 0,
            )
        )
    if "margin_outage" in scenarios:
        targets += _margin_targets(scenarios["margin_outage"])
    if "import_time" in scenarios:
        found = scenarios["import_time"]["cases"][0]["ratio"]
        targets.append(
            (
                f"import payme_auth <= 1.3{TIMES} import httpx",
                f"{found['median']:.2f}{TIMES} ({found['min']:.2f}{DASH}{found['max']:.2f})",
                found["median"] <= 1.3,
            )
        )
    if "revocation" in scenarios:
        m = _payme(scenarios["revocation"])["metrics"]
        failed = m["failed_in_flight"]["max"] + m["failed_after"]["max"]
        extra = m["extra_token_requests"]
        targets.append(("revocation: no failed API call", f"{failed:.0f} failed", failed == 0))
        targets.append(
            (
                "revocation: one extra token request",
                f"{extra['min']:.0f}{DASH}{extra['max']:.0f}",
                extra["min"] == extra["max"] == 1,
            )
        )
    return targets


def _margin_targets(scenario: dict[str, Any]) -> list[tuple[str, str, bool]]:
    targets: list[tuple[str, str, bool]] = []
    for case in scenario["cases"]:
        payme = case["contenders"]["payme_auth"]
        m, r = payme["metrics"], payme["ratios"]
        failed = m["burst_failed"]["max"] + m["turn_failed"]["max"]
        targets.append(
            (
                f"outage in the margin ({case['mode']}): no failed call",
                f"{failed:.0f} failed (worst round)",
                failed == 0,
            )
        )
        worst = max(r["burst_max_ms"]["max"], r["turn_max_ms"]["max"])
        targets.append(
            (
                f"outage in the margin ({case['mode']}): max latency <= 2{TIMES} the floor's",
                (
                    f"at once {r['burst_max_ms']['median']:.2f}{TIMES}, in turn "
                    f"{r['turn_max_ms']['median']:.2f}{TIMES} (worst round {worst:.2f}{TIMES})"
                ),
                worst <= 2.0,
            )
        )
    return targets


PLOT_WINDOW = (-1.0, 2.0)  # seconds around the renewal shown


def plot_anchor(entry: dict[str, Any]) -> float:
    """The renewal nearest the middle of the run (or the middle, with no renewal)."""
    if "plot_anchor" in entry:
        return float(entry["plot_anchor"])
    starts = [s[0] for s in entry["samples"]] or [0.0]
    middle = (min(starts) + max(starts)) / 2
    renewals = entry["renewals"]
    return min(renewals, key=lambda r: abs(r - middle)) if renewals else middle


def compact(results: dict[str, Any]) -> dict[str, Any]:
    """Keep only the plotted window of the renewal trace, rounded: the JSON stays small."""
    trace = results["scenarios"].get("renewal", {}).get("trace", {})
    low, high = PLOT_WINDOW
    for entry in trace.values():
        anchor = plot_anchor(entry)
        entry["plot_anchor"] = anchor
        entry["samples"] = [
            (round(s[0], 5), round(s[1], 5), s[2])
            for s in entry["samples"]
            if low <= s[0] - anchor <= high
        ]
    return results


def plot(results: dict[str, Any], path: Path = PLOT) -> Path | None:
    """Caller latency over time around a renewal, one panel per contender (scenario 3)."""
    trace = results["scenarios"].get("renewal", {}).get("trace")
    if not trace:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in trace]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.0 * len(names)), sharex=True, sharey=True)
    for ax, name in zip(axes, names, strict=True):
        samples = trace[name]["samples"]
        renewals = trace[name]["renewals"]
        if not samples:
            continue
        anchor = plot_anchor(trace[name])
        xs = [s[0] - anchor for s in samples if -1.0 <= s[0] - anchor <= 2.0]
        ys = [max(s[1] * 1000, 0.1) for s in samples if -1.0 <= s[0] - anchor <= 2.0]
        bad = [
            (s[0] - anchor, max(s[1] * 1000, 0.1))
            for s in samples
            if not s[2] and -1.0 <= s[0] - anchor <= 2.0
        ]
        ax.scatter(xs, ys, s=4, alpha=0.6)
        if bad:
            ax.scatter([b[0] for b in bad], [b[1] for b in bad], s=8, color="red", label="failed")
        if renewals:
            ax.axvline(0, color="gray", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        label = name if renewals else f"{name} (no renewal)"
        ax.set_title(label, fontsize=9, loc="left")
        ax.set_ylabel("latency (ms)")
    axes[-1].set_xlabel("call start, seconds from the token request (dashed line)")
    fig.suptitle(
        "Caller latency around a renewal (8 s tokens, token endpoint 300 ms, 200 calls/s)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def update_docs(
    table: str,
    page: Path = DOCS_PAGE,
    *,
    markers: tuple[str, str] = (START_MARKER, END_MARKER),
    figure: bool = True,
) -> None:
    """Replace what is between *markers* in docs/performance.md with *table* (and the plot)."""
    start, stop = markers
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(stop), re.DOTALL)
    if not pattern.search(text):
        raise RuntimeError(f"{page} lacks the markers {start} and {stop}")
    picture = (
        "![Caller latency over time around a token renewal, one panel per contender]"
        "(_static/renewal-latency.png)\n"
        if figure
        else ""
    )
    block = f"{start}\n\n{table}\n\n{picture}{stop}" if picture else f"{start}\n\n{table}\n{stop}"
    page.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")
