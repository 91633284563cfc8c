"""Prometheus metrics of the sync, one registry per process (tests build their own)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamsync.adapters.store import BackfillRun, Checkpoint
from streamsync.runtime.latency_window import LatencyWindow

BACKFILL_WINDOW_STATES = ("done", "pending")
# Commit -> Iterable receipt: 50 ms resolution for a healthy sync, minutes for a backlog.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                     300.0, 600.0, 900.0, 1800.0)


class Metrics:
    """Every metric the service exposes on /metrics, with stable names."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "streamsync_queue_depth", "Records waiting in the queue", registry=r
        )
        self.queue_oldest_age_s = Gauge(
            "streamsync_queue_oldest_age_seconds", "Age of the oldest queued record", registry=r
        )
        self.commit_to_iterable_s = Histogram(
            "streamsync_commit_to_iterable_seconds",
            "Time from the Salesforce commit to Iterable's confirmation",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.events_received = Counter(
            "streamsync_events_received_total", "CDC events received", ["channel"], registry=r
        )
        self.last_event_ts = Gauge(
            "streamsync_last_event_timestamp_seconds",
            "Commit time of the last event seen per channel",
            ["channel"],
            registry=r,
        )
        self.records_synced = Counter(
            "streamsync_records_synced_total", "Records confirmed by Iterable", ["object"],
            registry=r,
        )
        self.records_skipped = Counter(
            "streamsync_records_skipped_total", "Records skipped as unchanged", ["object"],
            registry=r,
        )
        self.changes_unread = Counter(
            "streamsync_changes_unread_total",
            "Record updates not queued: they changed no field the object's sync reads",
            ["object"], registry=r,
        )
        self.iterable_requests = Counter(
            "streamsync_iterable_requests_total", "Iterable requests by endpoint and status",
            ["endpoint", "status"], registry=r,
        )
        self.iterable_429s = Counter(
            "streamsync_iterable_rate_limited_total", "Iterable 429 replies", registry=r
        )
        self.salesforce_calls = Counter(
            "streamsync_salesforce_api_calls_total",
            "Salesforce calls by kind and status (kind cometd/*: the streaming connection, "
            "which the daily API allocation does not count)",
            ["kind", "status"], registry=r,
        )
        self.salesforce_api_usage = Gauge(
            "streamsync_salesforce_api_usage", "Daily API requests used (Sforce-Limit-Info)",
            registry=r,
        )
        self.salesforce_api_limit = Gauge(
            "streamsync_salesforce_api_limit", "Daily API request allocation (Sforce-Limit-Info)",
            registry=r,
        )
        self.dead_letters = Gauge(
            "streamsync_dead_letters", "Records in the dead-letter table by reason", ["reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "streamsync_dead_lettered_total", "Records dead-lettered by reason", ["reason"],
            registry=r,
        )
        self.destination_down = Gauge(
            "streamsync_destination_down",
            "1 while a destination's circuit breaker is open (Salesforce or Iterable is down)",
            ["destination"], registry=r,
        )
        self.reconciliations = Counter(
            "streamsync_reconciliations_total", "Reconciliations run by trigger", ["trigger"],
            registry=r,
        )
        self.subscribed = Gauge(
            "streamsync_subscribed", "1 while the CDC subscription is confirmed, else 0",
            registry=r,
        )
        self.channel_leader = Gauge(
            "streamsync_channel_leader",
            "1 while this worker leads the CDC channel (holds its lease), else 0", ["channel"],
            registry=r,
        )
        self.following = Gauge(
            "streamsync_following",
            "1 while this worker leads no CDC channel (another worker of the store subscribes)",
            registry=r,
        )
        self.leadership_failovers = Counter(
            "streamsync_leadership_failovers_total",
            "CDC channel leases this worker took over from a leader whose lease ran out",
            ["channel"], registry=r,
        )
        self.backfill_running = Gauge(
            "streamsync_backfill_running", "1 while the latest backfill run is unfinished",
            registry=r,
        )
        self.backfill_windows = Gauge(
            "streamsync_backfill_windows", "Windows of the latest backfill run by state",
            ["state"], registry=r,
        )
        for state in BACKFILL_WINDOW_STATES:
            self.backfill_windows.labels(state=state)
        self.backfill_records_done = Gauge(
            "streamsync_backfill_records_done", "Records written by the latest backfill run",
            registry=r,
        )
        self.resync_running = Gauge(
            "streamsync_resync_running", "1 while the object re-syncs after a mapping change",
            ["object"], registry=r,
        )
        self.resync_records = Counter(
            "streamsync_resync_records_total", "Records of mapping re-syncs by what happened "
            "(read, written, out_of_scope)", ["object", "kind"], registry=r,
        )
        self._dead_letter_reasons: set[str] = set()
        self.latency_window = LatencyWindow()

    def observe_commit_to_iterable(self, latency_s: float, now: float) -> None:
        """One record confirmed by Iterable: the histogram and the status page's last hour."""
        self.commit_to_iterable_s.observe(latency_s)
        self.latency_window.observe(latency_s, now)

    def set_dead_letters(self, counts: Mapping[str, int]) -> None:
        """The dead-letter table by reason; a reason no longer there drops to 0."""
        for reason in self._dead_letter_reasons - set(counts):
            self.dead_letters.labels(reason=reason).set(0)
        for reason, count in counts.items():
            self.dead_letters.labels(reason=reason).set(count)
        self._dead_letter_reasons.update(counts)

    def set_backfill(self, run: BackfillRun | None, windows: Sequence[Checkpoint]) -> None:
        """Progress of the latest backfill run (read from the store, whichever process runs it)."""
        done = sum(1 for w in windows if w.done)
        self.backfill_running.set(1 if run is not None and not run.finished else 0)
        self.backfill_windows.labels(state="done").set(done)
        self.backfill_windows.labels(state="pending").set(len(windows) - done)
        self.backfill_records_done.set(sum(w.records_done for w in windows))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
