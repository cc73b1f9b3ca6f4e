"""Prometheus metrics of one process, on a registry of its own (tests run many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LAG_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_TURN_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """All the series Duet exports, created once per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest_lag = Histogram(
            "duet_ingest_lag_seconds", "Event received by JetStream to retrievable.",
            buckets=_LAG_BUCKETS_S, registry=r,
        )
        self.event_age = Histogram(
            "duet_event_to_retrievable_seconds",
            "The event's own timestamp to retrievable (includes the source system's delay).",
            buckets=_LAG_BUCKETS_S + (900, 3600, 86400), registry=r,
        )
        self.ingest_events = Counter(
            "duet_ingest_events_total", "Document events handled, by outcome.", ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "duet_dead_letters_total", "Events sent to the dead-letter subject.", registry=r
        )
        self.stale_discarded = Counter(
            "duet_stale_versions_discarded_total", "Events older than the applied version.",
            registry=r,
        )
        self.chunks_embedded = Counter(
            "duet_chunks_embedded_total", "Chunks embedded by the ingest worker.", registry=r
        )
        self.consumer_pending = Gauge(
            "duet_consumer_pending", "Events in the stream not yet delivered to the worker.",
            registry=r,
        )
        self.collection_chunks = Gauge(
            "duet_collection_chunks", "Chunks per collection.", ["tier"], registry=r
        )
        self.as_of_age = Gauge(
            "duet_as_of_age_seconds", "Age of the newest applied event.", registry=r
        )
        self.aged_documents = Counter(
            "duet_aged_documents_total", "Documents moved from hot to cold.", registry=r
        )
        self.query_latency = Histogram(
            "duet_kb_query_seconds", "Knowledge-base query latency (hot+cold).",
            buckets=_TURN_BUCKETS_S, registry=r,
        )
        self.turn_latency = Histogram(
            "duet_turn_seconds", "Turn latencies by phase.", ["phase"], buckets=_TURN_BUCKETS_S,
            registry=r,
        )
        self.turns = Counter("duet_turns_total", "Turns by outcome.", ["outcome"], registry=r)
        self.escalations = Counter(
            "duet_escalations_total", "Conversations escalated, by reason.", ["reason"],
            registry=r,
        )
        self.prefetch = Counter(
            "duet_prefetch_total", "Prefetch cache lookups by result.", ["result"], registry=r
        )
        self.journal_latency = Histogram(
            "duet_session_journal_seconds",
            "Appending one session event to the durable log (JetStream publish-ack).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1), registry=r,
        )
        self.journal_failures = Counter(
            "duet_session_journal_failures_total",
            "Session events or records not written to JetStream (delivered anyway).",
            registry=r,
        )
        self.errors = Counter(
            "duet_client_errors_total", "Error events sent to clients, by code.", ["code"],
            registry=r,
        )
        # --- limits: admission and sessions (issue #11, docs/limits.md) -------------------
        self.refusals = Counter(
            "duet_refusals_total", "Connections, sessions and messages refused by a limit.",
            ["limit"], registry=r,
        )
        self.connections_open = Gauge(
            "duet_connections_open", "Open websockets and in-flight HTTP requests (probes "
            "excluded).", ["kind"], registry=r,
        )
        self.sessions_held = Gauge(
            "duet_sessions_held", "Sessions held in this process's memory.", registry=r
        )
        self.sessions_released = Counter(
            "duet_sessions_released_total", "Sessions let go from memory, by why: expired "
            "(idle), unloaded (durable, idle), evicted_address / evicted_total (room for a "
            "new one).", ["reason"], registry=r,
        )
        self.rate_table_addresses = Gauge(
            "duet_rate_table_addresses", "Client addresses with a rate bucket, by table.",
            ["table"], registry=r,
        )
        self.conversations_abandoned = Counter(
            "duet_conversations_abandoned_total",
            "Waiting conversations closed because their session ended.", registry=r,
        )
        # --- ingest: caps, quality gate, store faults, large-document lane (issue #11, brief I)
        self.quality_dropped_chunks = Counter(
            "duet_ingest_quality_dropped_chunks_total",
            "Repetitive low-information chunks the quality gate kept out of the index.",
            registry=r,
        )
        self.store_fault = Gauge(
            "duet_ingest_store_fault",
            "1 while the vector store fails (the ingest worker pauses and probes), else 0.",
            registry=r,
        )
        self.store_fault_holds = Counter(
            "duet_ingest_store_fault_holds_total",
            "Events handed back (nak) for a store fault; such events are never dead-lettered.",
            registry=r,
        )
        self.large_lane_events = Gauge(
            "duet_ingest_large_lane_events",
            "Large documents held by the ingest worker's background lane.", registry=r,
        )
        self.exact_searches = Counter(
            "duet_kb_exact_searches_total",
            "Collection searches answered exactly (a small collection) instead of by HNSW.",
            ["tier"], registry=r,
        )

        # --- health and fault recovery (gateway/health.py, core/natsd.py) ---
        self.dependency_up = Gauge(
            "duet_dependency_up", "1 when the last health probe found the dependency usable.",
            ["dependency"], registry=r,
        )
        self.health_probe_seconds = Histogram(
            "duet_health_probe_seconds", "Duration of one health probe, by dependency.",
            ["dependency"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5), registry=r,
        )
        self.nats_restarts = Counter(
            "duet_nats_restarts_total",
            "Restarts of the embedded nats-server (it exited, or lost JetStream).", registry=r,
        )
        self.data_dir_free_bytes = Gauge(
            "duet_data_dir_free_bytes", "Free space of the file system of DUET_DATA_DIR.",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)
