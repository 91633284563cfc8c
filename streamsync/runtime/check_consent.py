"""`check-config` for consent: the configured channel, message type and list ids exist in the
Iterable project, list names name exactly one list, and the subscription endpoints answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.iterable import IterableClient
from streamsync.config import Config
from streamsync.errors import BatchError, StreamsyncError, UnknownList
from streamsync.runtime.consent_writer import list_ids


@dataclass
class ConsentFindings:
    """What the consent check found: problems as (subject, config path, message), and passes."""

    problems: list[tuple[str, str, str]] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)


def _ids(items: list[dict[str, Any]]) -> set[int]:
    return {i["id"] for i in items if isinstance(i.get("id"), int)}


async def check_consent(config: Config, iterable: IterableClient) -> ConsentFindings:
    """Compare every object's consent groups with GET /api/channels, /messageTypes and /lists,
    then send one empty subscription call (off, the endpoints answer 404: docs/iterable.md §12)."""
    report = ConsentFindings()
    objects = config.consent_objects()
    if not objects:
        return report
    try:
        channels = _ids(await iterable.get_channels())
        types = _ids(await iterable.get_message_types())
        lists = await iterable.get_lists()
    except StreamsyncError as exc:
        report.problems.append(("consent", "objects.*.consent",
                                f"could not read channels, message types and lists: {exc}"))
        return report
    first: tuple[str, int] | None = None
    for name, consent in objects.items():
        before = len(report.problems)
        for path, wanted, known, what in (
                ("consent.unsubscribe_channel_ids", consent.unsubscribe_channel_ids, channels,
                 "channel"),
                ("consent.unsubscribe_message_type_ids", consent.unsubscribe_message_type_ids,
                 types, "message type")):
            missing = [i for i in wanted if i not in known]
            if missing:
                report.problems.append((name, path, f"no {what} with id {missing} in the "
                                                    f"project (it has {sorted(known)})"))
            if wanted and first is None:
                first = ("messageChannel" if what == "channel" else "messageType", wanted[0])
        try:
            resolved = list_ids(consent.remove_from_lists, lists)
        except UnknownList as exc:
            report.problems.append((name, "consent.remove_from_lists", str(exc)))
            resolved = ()
        missing_lists = [i for i in resolved if i not in _ids(lists)]
        if missing_lists:
            report.problems.append((name, "consent.remove_from_lists",
                                    f"no list with id {missing_lists} in the project"))
        if resolved and first is None:
            first = ("emailList", resolved[0])
        if len(report.problems) == before:
            report.passed.append(f"{name}: consent groups exist in Iterable")
    if first is not None:
        await _try_endpoint(iterable, first, report)
    return report


async def _try_endpoint(iterable: IterableClient, group: tuple[str, int],
                        report: ConsentFindings) -> None:
    try:
        await iterable.update_subscription_group(group[0], group[1], subscribe=False)
    except BatchError as exc:
        hint = (" (the subscription endpoints are off for this project: ask Iterable's "
                "customer success to enable the Subscriptions API)" if exc.status == 404 else "")
        report.problems.append(("consent", "objects.*.consent",
                                f"PUT /api/subscriptions/{group[0]}/{group[1]} refused: "
                                f"{exc.code}: {exc.msg}{hint}"))
        return
    except StreamsyncError as exc:
        report.problems.append(("consent", "objects.*.consent", str(exc)))
        return
    report.passed.append("iterable: the subscription endpoints answer (consent writes)")
