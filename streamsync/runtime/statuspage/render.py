"""The status page's first paint, server-rendered from `/status.json` data so it reads without
JavaScript; static/page.js redraws the same sections (same ids and classes) every few seconds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

CHART_W, CHART_H, CHART_PAD = 600, 160, 30
CHART_MINUTES = 60


def _e(value: Any) -> str:
    return escape("—" if value is None else str(value))


def duration(seconds: float | None) -> str:
    """`75` -> `1m 15s`; None -> `—` (the same wording as page.js)."""
    if seconds is None:
        return "—"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{float(seconds):.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def chart_points(latency: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    """(x, y) in the chart's pixels for each minute of the last hour that has data."""
    if not latency:
        return []
    top = max(float(m["p95_s"]) for m in latency) or 1.0
    last = len(latency) - 1
    first_minute = _minute(latency[last]["minute"]) - (CHART_MINUTES - 1)
    width, height = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD
    out = []
    for m in latency:
        x = CHART_PAD + (_minute(m["minute"]) - first_minute) / (CHART_MINUTES - 1) * width
        y = CHART_PAD + height - float(m[key]) / top * height
        out.append((round(x, 1), round(y, 1)))
    return out


def _minute(stamp: str) -> int:
    """Minutes since the epoch of an ISO `...THH:MM:00Z` string."""
    from datetime import datetime

    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() // 60)


def chart_svg(latency: Sequence[Mapping[str, Any]]) -> str:
    """Inline SVG: p50 and p95 per minute over the last hour, one circle per data point."""
    parts = [f'<svg id="latency-chart" viewBox="0 0 {CHART_W} {CHART_H}" '
             f'width="{CHART_W}" height="{CHART_H}" role="img" '
             'aria-label="commit to Iterable latency, last hour">',
             f'<rect class="frame" x="{CHART_PAD}" y="{CHART_PAD}" '
             f'width="{CHART_W - 2 * CHART_PAD}" height="{CHART_H - 2 * CHART_PAD}"/>']
    if latency:
        top = max(float(m["p95_s"]) for m in latency)
        parts.append(f'<text x="2" y="{CHART_PAD}" class="axis">{_e(duration(top))}</text>')
        parts.append(f'<text x="2" y="{CHART_H - CHART_PAD}" class="axis">0</text>')
    for key in ("p95_s", "p50_s"):
        points = chart_points(latency, key)
        name = key[:3]
        if len(points) > 1:
            path = " ".join(f"{x},{y}" for x, y in points)
            parts.append(f'<polyline class="{name}" points="{path}"/>')
        parts += [f'<circle class="pt {name}" cx="{x}" cy="{y}" r="3"/>' for x, y in points]
    parts.append(f'<text x="{CHART_PAD}" y="{CHART_H - 8}" class="axis">−60 min</text>')
    parts.append(f'<text x="{CHART_W - CHART_PAD - 24}" y="{CHART_H - 8}" '
                 'class="axis">now</text></svg>')
    return "".join(parts)


def sections(data: Mapping[str, Any]) -> dict[str, str]:
    """The inner HTML of each section, by element id."""
    ready = "ready" if data.get("ready") else f"not ready: {data.get('not_ready_reason')}"
    out = {"summary": f"<span class=\"{'ok' if data.get('ready') else 'bad'}\">{_e(ready)}"
                      f"</span> · generated {_e(data.get('generated_at'))}"}
    if data.get("starting"):
        return {**out, "subscriptions": '<p class="empty">starting…</p>'}
    q = data["queue"]
    out["subscriptions"] = _table(
        ["channel", "object", "replay id", "last event", "age", "leader"],
        [[c["channel"], c["object"], c["replay_id"], c["last_event_at"],
          duration(c["last_event_age_s"]), c.get("leader")] for c in data["channels"]],
        "no subscriptions")
    out["workers"] = _table(
        ["worker", "host", "pid", "leads", "last heartbeat", "age", "state"],
        [[w["worker_id"], w["host"], w["pid"], ", ".join(w["leads"]) or "(following)",
          w["last_heartbeat_at"], duration(w["heartbeat_age_s"]), w["state"]]
         for w in data.get("workers", [])], "no worker has run on this store")
    out["queue"] = (f"<p><b>{_e(q['depth'])}</b> queued · oldest "
                    f"{_e(duration(q['oldest_age_s']))} · {_e(q['due'])} due · "
                    f"{_e(q['leased'])} leased · {_e(q['retrying'])} in backoff</p>")
    out["latency"] = chart_svg(data["latency"]) + _latency_caption(data["latency"])
    out["iterable"] = _iterable(data["iterable"]) + _shared_budgets(data.get("rate_budgets", []))
    out["dead-letters"] = _dead_letters(data["dead_letters"])
    out["backfill"] = _backfill(data["backfill"])
    out["errors"] = _table(["at", "component", "message"],
                           [[e["at"], e["component"], e["message"]]
                            for e in data["recent_errors"]], "no recent errors")
    return out


def _latency_caption(latency: Sequence[Mapping[str, Any]]) -> str:
    if not latency:
        return '<p class="empty">no record confirmed in the last hour</p>'
    m = latency[-1]
    return (f"<p>last minute with data ({_e(m['minute'])}): p50 {_e(duration(m['p50_s']))}, "
            f"p95 {_e(duration(m['p95_s']))}, {_e(m['count'])} record(s)</p>")


def _iterable(it: Mapping[str, Any]) -> str:
    b = it.get("budget")
    text = f"<p>429 replies: <b>{_e(int(it['requests_429_total']))}</b>"
    if b is not None:
        used = "—" if b["used_fraction"] is None else f"{b['used_fraction'] * 100:.0f}%"
        text += (f" · rate budget used: <b>{_e(used)}</b> ({_e(b['used_per_s'])}/s of "
                 f"{_e(b['limit_per_s'])}/s, allowed now {_e(b['allowed_now_per_s'])}/s)")
    return text + "</p>"


def _shared_budgets(budgets: Sequence[Mapping[str, Any]]) -> str:
    text = ""
    for b in budgets:
        text += (f"<p>shared budget {_e(b['budget'])}: <b>{_e(b['drawing_per_s'])}/s</b> of "
                 f"{_e(b['ceiling_per_s'])}/s booked by every process of the store</p>")
        text += _table(["drawer", "kind", "host", "pid", "rate/s"],
                       [[d["drawer_id"], d["kind"], d["host"], d["pid"], d["rate_per_s"]]
                        for d in b["drawers"]], "nobody draws from it")
    return text


def _dead_letters(dl: Mapping[str, Any]) -> str:
    text = f"<p><b>{_e(dl['total'])}</b> dead letter(s)</p>"
    for reason, count in dl["by_reason"].items():
        examples = dl.get("examples", {}).get(reason, [])
        text += (f'<h3 class="reason">{_e(reason)}: {_e(count)}</h3>' + _table(
            ["object", "record", "change", "error", "attempts", "last failed"],
            [[d["object"], d["record_id"], d["change_type"], d["last_error"], d["attempts"],
              d["last_failed_at"]] for d in examples], "no example"))
    return text


def _backfill(bf: Mapping[str, Any] | None) -> str:
    if bf is None:
        return '<p class="empty">no backfill has run</p>'
    state = f"finished {bf['finished_at']}" if bf["finished"] else "in progress"
    progress = bf.get("progress")
    pct = "—" if progress is None else f"{progress * 100:.0f}%"
    eta = "" if bf["finished"] else f" · ETA {_e(duration(bf.get('eta_s')))}"
    return (f"<p>run {_e(bf['run_id'])} ({_e(state)}): {_e(bf['windows_done'])}/"
            f"{_e(bf['windows_total'])} windows, {_e(pct)}, {_e(bf['records_done'])} "
            f"record(s){eta}</p>")


SECTION_TITLES = {
    "subscriptions": "Subscriptions and replay positions",
    "workers": "Workers",
    "queue": "Queue",
    "latency": "Commit → Iterable latency, last hour (p50, p95 per minute)",
    "iterable": "Iterable rate budget",
    "dead-letters": "Dead letters by reason",
    "backfill": "Backfill",
    "errors": "Recent errors",
}


def page_html(data: Mapping[str, Any]) -> str:
    """The whole page; its script and stylesheet come from this service only."""
    inner = sections(data)
    body = "".join(f'<section><h2>{_e(title)}</h2><div id="{key}">{inner.get(key, "")}</div>'
                   f"</section>" for key, title in SECTION_TITLES.items())
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>streamsync status</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"stylesheet\" href=\"/static/page.css\">"
            "<script src=\"/static/page.js\" defer></script></head><body>"
            f"<header><h1>streamsync</h1><p id=\"summary\">{inner['summary']}</p></header>"
            f"<main>{body}</main></body></html>")
