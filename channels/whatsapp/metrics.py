"""The WhatsApp channel's Prometheus series, on the gateway's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["WhatsAppMetrics"]


class WhatsAppMetrics:
    """Inbound messages, outgoing messages and delivery receipts, by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inbound = Counter(
            "duet_whatsapp_inbound_total", "Customer messages by kind and outcome "
            "(accepted, duplicate, polite).", ["kind", "outcome"], registry=registry)
        self.outbound = Counter(
            "duet_whatsapp_outbound_total", "Messages to customers by kind (ack, answer, human, "
            "system, template) and outcome (sent, duplicate, failed, window_closed).",
            ["kind", "outcome"], registry=registry)
        self.statuses = Counter(
            "duet_whatsapp_statuses_total", "Delivery receipts from Meta by status.",
            ["status"], registry=registry)
        self.webhooks = Counter(
            "duet_whatsapp_webhooks_total", "Webhook POSTs by outcome (accepted, "
            "bad_signature, unavailable).", ["outcome"], registry=registry)
        self.inbox_latency = Histogram(
            "duet_whatsapp_inbox_seconds", "Webhook accepted to the message being processed.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30), registry=registry)
