"""The status page at ``/``: server-rendered HTML that refreshes itself.

Everything shown is escaped; nothing here runs script.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from . import __version__
from .operations import duration_seconds, window_of
from .store.records import RunRecord

STATE_ORDER = (
    "queued",
    "submitting",
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)

_CSS = """
:root { --ink:#1d2733; --muted:#5b6b7d; --line:#dde3ea; --bg:#f6f8fa;
  --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; --run:#0969da; --wait:#6e7781; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: var(--bg); margin: 0; }
header { background: #fff; border-bottom: 1px solid var(--line);
  padding: 14px 28px; display: flex; align-items: baseline; gap: 16px; }
header h1 { font-size: 18px; margin: 0; }
header .meta { color: var(--muted); font-size: 13px; }
main { padding: 20px 28px 40px; max-width: 1480px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 18px; margin-bottom: 18px; overflow-x: auto; }
h2 { font-size: 15px; margin: 0 0 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; text-transform: uppercase;
  letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; min-width: 160px; max-width: 320px;
  color: var(--muted); }
tr:last-child td { border-bottom: none; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px;
  font-size: 12px; font-weight: 600; color: #fff; background: var(--wait); }
.s-succeeded { background: var(--ok); } .s-failed { background: var(--bad); }
.s-running, .s-pending { background: var(--run); }
.s-submitting { background: var(--warn); }
.s-cancelled { background: #8c959f; } .s-queued { background: var(--wait); }
.status-ok { color: var(--ok); font-weight: 600; }
.status-unavailable { color: var(--bad); font-weight: 600; }
.bar { position: relative; width: 100px; height: 10px; background: #eaeef2;
  border-radius: 5px; overflow: hidden; display: inline-block; vertical-align: middle; }
.bar span { position: absolute; left: 0; top: 0; bottom: 0; background: var(--run); }
.bar span.full { background: var(--warn); }
.counts { display: flex; flex-wrap: wrap; gap: 10px; }
.count { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px;
  min-width: 108px; }
.count b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.count small { color: var(--muted); }
.grid { display: grid; grid-template-columns: 3fr 2fr; gap: 18px; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
.empty { color: var(--muted); }
"""


def _bar(used: int, limit: int) -> str:
    share = 0 if limit <= 0 else min(100, round(100 * used / limit))
    full = " class='full'" if used >= limit else ""
    return f"<span class='bar'><span{full} style='width:{share}%'></span></span>"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""

    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"

    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"

    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _compact(moment: str) -> str:
    """``2026-05-01T00:00:00`` as ``2026-05-01``; other times without seconds."""
    if moment.endswith("T00:00:00"):
        return moment[:10]

    return moment.replace("T", " ").removesuffix(":00")


def _window(run: RunRecord) -> str:
    window = window_of(run)
    if "start" in window:
        zone = window.get("time_zone", "UTC")
        return f"{_compact(window['start'])} → {_compact(window['end'])} {zone}"

    return str(window["type"])


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""

    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(
    health: dict[str, Any],
    recent: Sequence[RunRecord],
    *,
    refresh_seconds: float,
) -> str:
    """The page for one health document and the latest runs."""
    e = escape
    status = str(health.get("status", "unavailable"))
    queue = health.get("queue", {})
    rows_instances = "".join(
        f"<tr><td>{e(str(i['id']))}</td><td>{e(str(i['account']))}</td>"
        f"<td class='num'>{i['in_flight']} / {i['limit']}</td>"
        f"<td>{_bar(int(i['in_flight']), int(i['limit']))}</td>"
        f"<td class='num'>{i.get('external', 0)}</td></tr>"
        for i in health.get("instances", [])
    )
    rows_accounts = "".join(
        f"<tr><td>{e(str(a['id']))}</td>"
        f"<td class='num'>{a['in_flight']} / {a['limit']}</td>"
        f"<td>{_bar(int(a['in_flight']), int(a['limit']))}</td></tr>"
        for a in health.get("accounts", [])
    )
    counts = "".join(
        f"<div class='count'><b>{int(queue.get(state, 0))}</b>"
        f"<small>{state}</small></div>"
        for state in STATE_ORDER
    )
    rows_runs = "".join(
        f"<tr><td class='num'>{run.id}</td><td>{e(run.job)}</td>"
        f"<td>{e(run.instance_id)}</td>"
        f"<td><span class='badge s-{e(run.state)}'>{e(run.state)}</span></td>"
        f"<td>{e(_window(run))}</td>"
        f"<td class='num'>{run.attempt}/{run.max_attempts}</td>"
        f"<td class='num'>{_duration(duration_seconds(run))}</td>"
        f"<td>{_when(run.updated_at)}</td>"
        f"<td class='wrap'>{e(run.reason or '')}</td></tr>"
        for run in recent
    )
    if not rows_runs:
        rows_runs = "<tr><td colspan='9' class='empty'>No runs yet.</td></tr>"

    database = health.get("database", {})
    dispatcher = health.get("dispatcher", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(max(1, refresh_seconds))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>amc-scheduler · {e(status)}</title><style>{_CSS}</style></head>
<body>
<header><h1>amc-scheduler</h1>
<span class="status-{e(status)}">{e(status)}</span>
<span class="meta">database {e(str(database.get("status", "?")))}
 · dispatcher {e(str(dispatcher.get("status", "?")))}
 · worker {e(str(health.get("worker_id", "")))} · v{e(__version__)}
 · {_when(datetime.now(UTC))} UTC</span></header>
<main>
<section><h2>Queue</h2><div class="counts">{counts}</div></section>
<div class="grid">
<section><h2>Instances</h2><table>
<tr><th>Instance</th><th>Account</th><th class="num">In flight</th><th>Slots</th>
<th class="num">Outside</th></tr>{rows_instances}</table></section>
<section><h2>Accounts</h2><table>
<tr><th>Account</th><th class="num">In flight</th><th>Slots</th></tr>
{rows_accounts}</table></section>
</div>
<section><h2>Recent runs</h2><table>
<tr><th class="num">Run</th><th>Job</th><th>Instance</th><th>State</th><th>Window</th>
<th class="num">Attempt</th><th class="num">Duration</th><th>Updated (UTC)</th>
<th>Reason</th></tr>{rows_runs}</table></section>
</main></body></html>
"""
