"""Every Prometheus metric atmx exports, defined once (prefix `atmx_`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("atmx_firehose_events_total", "Firehose messages received, by type", ["type"])
FRAME_ERRORS = Counter("atmx_firehose_frame_errors_total", "Malformed firehose messages, by reason", ["reason"])
UPSTREAM_ERRORS = Counter(
    "atmx_firehose_upstream_errors_total",
    "Error frames and #info notices from the upstream (FutureCursor, ConsumerTooSlow, OutdatedCursor...)",
    ["name"],
)
RECONNECTS = Counter("atmx_firehose_reconnects_total", "Websocket reconnects, by cause", ["cause"])
MATCHED_OPS = Counter(
    "atmx_matched_ops_total", "Record operations under an indexed collection", ["collection", "action"]
)
VERIFICATIONS = Counter(
    "atmx_verifications_total",
    "Repo verification outcomes of processed commits and syncs (reason is 'ok' on success)",
    ["kind", "reason"],
)
RECORDS = Counter(
    "atmx_records_total", "Record validation outcomes (reason is 'ok' for a valid record)", ["protocol", "reason"]
)
STALE_EVENTS = Counter("atmx_stale_events_total", "Events whose rev was not newer than the stored one", ["kind"])
RESYNCS_QUEUED = Counter("atmx_resync_queued_total", "Repos queued for a proof re-fetch, by reason", ["reason"])
IDENTITY_RESULTS = Counter("atmx_identity_resolutions_total", "DID and handle resolution results", ["kind", "outcome"])
CURSOR = Gauge("atmx_firehose_cursor", "Last firehose seq whose event and all before it are processed")
RECEIVED_SEQ = Gauge("atmx_firehose_received_seq", "Last firehose seq received")
LAG = Gauge("atmx_firehose_lag_seconds", "Now minus the event time of the last processed event")
IN_FLIGHT = Gauge("atmx_pipeline_in_flight", "Events received but not yet fully processed")
TRACKED_REPOS = Gauge("atmx_tracked_repos", "Accounts in the index")
DB_WRITE_SECONDS = Histogram(
    "atmx_db_write_seconds",
    "Latency of one index write transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DB_ERRORS = Counter("atmx_db_errors_total", "Database operations that failed and were retried", ["op"])
VERIFY_SECONDS = Histogram(
    "atmx_verify_seconds",
    "CPU time of verifying one commit message",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
)
API_REQUESTS = Counter("atmx_api_requests_total", "XRPC requests, by method and HTTP status", ["method", "status"])
API_SECONDS = Histogram(
    "atmx_api_request_seconds",
    "XRPC request latency, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)


def observe_api(method: str, status: int, seconds: float) -> None:
    API_REQUESTS.labels(method, str(status)).inc()
    API_SECONDS.labels(method).observe(seconds)


def observe_identity(kind: str, outcome: str) -> None:
    IDENTITY_RESULTS.labels(kind, outcome).inc()
