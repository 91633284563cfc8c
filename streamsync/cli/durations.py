"""The one formatter of durations shown to people (status ages, progress ETA, summaries)."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """`42s`, `3m 12s`, `5h 01m`, `3d 4h` (whole seconds, cut not rounded); `-` for None."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86_400}d {s % 86_400 // 3600}h"
