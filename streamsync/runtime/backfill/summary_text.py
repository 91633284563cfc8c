"""The human text of a backfill summary (presentation: its home is the CLI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamsync.runtime.progress import format_duration

if TYPE_CHECKING:
    from streamsync.runtime.backfill.summary import BackfillSummary


def summary_lines(summary: BackfillSummary) -> list[str]:
    """The summary as the lines `streamsync backfill` prints at the end."""
    if summary.status == "already_finished":
        return [f"backfill {summary.run_id} already finished; nothing to do "
                "(use --restart to run it again)"]
    dry = summary.status == "dry_run"
    rate = summary.records_read / summary.duration_s if summary.duration_s > 0 else 0.0
    head = "dry run" if dry else f"backfill {summary.run_id} finished"
    out = [
        f"{head} in {format_duration(summary.duration_s)} ({', '.join(summary.objects)})",
        f"  records read          {summary.records_read:,} ({rate:,.0f}/s)",
    ]
    if dry:
        out.append(f"  payloads written to   {summary.dry_run_file}")
    else:
        out += [
            f"  written to Iterable   {summary.records_written:,}",
            f"  skipped (unchanged)   {summary.records_skipped:,}",
        ]
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(summary.dead_by_reason.items()))
    label = "would be dead-lettered" if dry else "dead-lettered"
    out.append(f"  {label:<21} {summary.dead_lettered:,}" + (f" ({reasons})" if reasons else ""))
    if not dry:
        out += [
            f"  queued for retry      {summary.retry_queued:,}",
            f"  catch-up queued       {summary.catchup_queued:,}",
            f"  Iterable requests     {summary.iterable_requests:,} "
            f"({summary.iterable_429s:,} rate-limited)",
        ]
    out += [
        f"  Salesforce API calls  {summary.sf_api_calls:,}",
        f"  windows               {summary.windows} ({summary.windows_resumed} resumed)",
    ]
    return out
